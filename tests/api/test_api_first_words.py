"""What the caller hears first, on the real engine (the shared server's `first-words` alias in
tests/tiny.yaml: a fixed system prompt longer than one KV block before its per-call value, and a
filler at 0 s): the prompt was warmed at start-up, so a call's very first turn finds it in the
prefix cache; a stream starts with the filler, then the answer; the turn's line and the metrics
time the first clause. The filler's timing and the clause detector are in tests/unit.

The cache test comes first in the module: no other test sends to this alias before it, so what
it finds cached was put there by the warming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.wire.logs import turn_lines
from tests.wire.metrics import metric, wait_for

ALIAS = "first-words"
FILLER = "嗯，"  # its filler in tests/tiny.yaml


def _first_turn(chat_body: Callable[..., Any], **overrides: Any) -> dict[str, Any]:
    """A call's first turn to the alias: one caller message, its own per-call value."""
    body: dict[str, Any] = chat_body(
        model=ALIAS,
        messages=[{"role": "user", "content": "Hello, is this the restaurant?"}],
        biz_params={"city": "Hangzhou"},
        **overrides,
    )
    return body


@pytest.mark.compat  # the cached-token count that vLLM's output carries
def test_a_calls_first_turn_finds_the_warmed_system_prompt_cached(api, chat_body) -> None:
    assert f"warmed the system prompt of {ALIAS}" in api.handle.log_text()
    body = _first_turn(chat_body, max_tokens=1, stream_options={"include_usage": True})
    _, stream = api.stream(body)
    assert stream.usage is not None
    assert stream.usage["prompt_tokens_details"]["cached_tokens"] > 0
    # The share is exported by the call's turn index: a first turn, with some of it cached.
    text = api.metrics_text()
    share = "callgate_prompt_cached_share_bucket"
    assert metric(text, share, model=ALIAS, turn="1", le="+Inf") >= 1
    assert metric(text, share, model=ALIAS, turn="1", le="0.0") == 0


def test_a_stream_starts_with_the_filler_then_the_answer_and_times_its_first_clause(
    api, chat_body
) -> None:
    clauses = "callgate_time_to_first_clause_seconds_count"
    before = metric(api.metrics_text(), clauses, model=ALIAS)
    response, stream = api.stream(_first_turn(chat_body))
    contents = [c["choices"][0]["delta"].get("content") for c in stream.choice_chunks]
    assert contents[1] == FILLER  # after the role chunk, before any of the answer
    assert stream.content.startswith(FILLER) and len(stream.content) > len(FILLER)
    assert stream.finish_reason in ("stop", "length")

    rid = response.headers["x-request-id"]

    def line() -> dict[str, Any] | None:
        found = [e for e in turn_lines(api.handle.log_text()) if e["request_id"] == rid]
        return found[0] if found else None

    assert wait_for(lambda: line() is not None, timeout_s=30.0)
    entry = line()
    assert entry is not None
    assert entry["filler_ms"] <= entry["ttft_ms"] <= entry["first_clause_ms"] <= entry["total_ms"]
    assert metric(api.metrics_text(), clauses, model=ALIAS) == before + 1
