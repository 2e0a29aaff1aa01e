"""Authorization codes: the console sends its "Authorization Code" raw, OpenAI clients send
`Bearer <code>`. Both are accepted; the comparison takes the same time whichever code is close.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

MAX_HEADER_CHARS = 4096


class Authenticator:
    def __init__(self, codes: Iterable[str]) -> None:
        self._codes = [c.encode("utf-8") for c in codes if c]
        if not self._codes:
            raise ValueError("at least one auth code is required")

    def check(self, header: str | None) -> bool:
        if not header or len(header) > MAX_HEADER_CHARS:
            return False
        value = header.strip()
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "bearer" and rest:
            value = rest.strip()
        candidate = value.encode("utf-8", "surrogateescape")
        ok = False
        for code in self._codes:  # no early exit: every code is compared every time
            ok |= hmac.compare_digest(candidate, code)
        return ok
