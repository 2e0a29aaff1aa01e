"""Authorization codes: the console sends its "Authorization Code" raw, OpenAI clients send
`Bearer <code>`. Both are accepted; the comparison takes the same time whichever code is close.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

MAX_HEADER_CHARS = 4096
MIN_CODE_CHARS = 16
# Placeholders shipped in .env.example and deploy/k8s/secret.example.yaml, and their kin.
PLACEHOLDER_MARKERS = ("REPLACE", "CHANGEME", "CHANGE-ME", "EXAMPLE", "PLACEHOLDER")


def code_problem(code: str) -> str | None:
    """Why `code` may not guard a server (None: it may). Never includes the code itself."""
    if not all("!" <= ch <= "~" for ch in code):
        # Headers arrive as latin-1, codes compare as UTF-8: anything else could never match.
        return "has a character that is not printable ASCII (or a space)"
    if any(marker in code.upper() for marker in PLACEHOLDER_MARKERS):
        return "is the shipped placeholder: generate one (see .env.example)"
    if len(code) < MIN_CODE_CHARS:
        return f"is shorter than {MIN_CODE_CHARS} characters"
    return None


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
