from __future__ import annotations

import pytest

from server.wire.auth import Authenticator

AUTH = Authenticator(["sk-one", "sk-two"])


@pytest.mark.parametrize(
    "header", ["sk-one", "sk-two", "Bearer sk-one", "bearer sk-two", "BEARER sk-one", " sk-one "]
)
def test_accepted(header: str) -> None:
    assert AUTH.check(header)


@pytest.mark.parametrize(
    "header",
    [None, "", "sk-three", "Bearer", "Bearer ", "Basic sk-one", "sk-one2", "SK-ONE", "x" * 10_000],
)
def test_refused(header: str | None) -> None:
    assert not AUTH.check(header)


def test_needs_a_code() -> None:
    with pytest.raises(ValueError):
        Authenticator([])
