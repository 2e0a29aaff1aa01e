"""The Model Address checker passes against callgate itself (the real engine, tiny checkpoint)."""

from __future__ import annotations

import pytest

from benchmarks import check
from tests.conftest import ServerHandle


@pytest.mark.parametrize("path", ["/", "/v1/chat/completions"])
def test_checker_passes_against_our_server(server: ServerHandle, path: str) -> None:
    results = check.run_checks(server.url + path, server.auth, max_tokens=8)
    problems = check.details(results)
    assert not any(r.failed for r in results), problems
    assert not [line for line in problems if line.startswith("WARN")], problems
    assert all(r.ttft_ms is not None for r in results if r.case.expect == "stream")


def test_checker_without_max_tokens_passes(server: ServerHandle) -> None:
    """As the gateway sends it: no max_tokens, the server's own cap ends the turn."""
    results = check.run_checks(server.url, server.auth, model="qwen-max")
    assert not any(r.failed for r in results), check.details(results)
