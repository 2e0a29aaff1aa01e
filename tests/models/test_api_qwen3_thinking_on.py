"""Qwen3 with `sampling.enable_thinking: true`, through the HTTP API: no empty think block in
the prompt, and the reasoning is never spoken.

The random-weight model never writes `</think>` (its planted circuit keeps every added token
from being generated), so every reply here is all reasoning: the caller must hear the fallback
sentence and nothing of the reasoning, with the reasoning tokens counted as output. The answer
after `</think>` is checked with scripted deltas in `tests/unit/test_thinking.py`.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.lib.qwen_checkpoint import prompt_token_counts

pytestmark = pytest.mark.slow  # its module's own server (tests/models/conftest.py)

FALLBACK = "Sorry, could you say that again?"  # the qwen-plus alias in tests/tiny.yaml
SYSTEM = "You are a phone agent. The caller is in Hangzhou."


def _body(chat_body: Any, **overrides: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "请问这是关于什么的？"}]
    return chat_body(
        model="qwen-plus",
        messages=messages,
        biz_params={"city": "Hangzhou"},
        max_tokens=12,
        **overrides,
    )


def test_the_reasoning_is_never_streamed_to_the_caller(thinking_api, qwen3_hf, chat_body):
    _, stream = thinking_api.stream(_body(chat_body, stream_options={"include_usage": True}))
    assert stream.content == FALLBACK
    assert "<think>" not in stream.content
    assert stream.finish_reason == "length"
    usage = stream.usage
    assert usage is not None and usage["completion_tokens"] == 12  # the reasoning's tokens
    messages = [{"role": "system", "content": SYSTEM}, *_body(chat_body)["messages"]]
    on, _ = prompt_token_counts(qwen3_hf, messages, enable_thinking=True)
    assert usage["prompt_tokens"] == on  # no empty think block with thinking on


def test_a_non_streamed_reply_hides_the_reasoning_too(thinking_api, chat_body):
    _, completion = thinking_api.complete(_body(chat_body))
    assert completion["choices"][0]["message"]["content"] == FALLBACK
    assert completion["usage"]["completion_tokens"] == 12
