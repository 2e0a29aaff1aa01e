"""Qwen3 thinking, per alias, through the HTTP API, on one server (`qwen3_api`): qwen-plus
thinks, qwen-max does not.

Off: the template renders the empty think block into the prompt, as Qwen documents for
`enable_thinking=False` (the `<think>` ids are also banned at the sampler:
`tests/unit/test_sampling.py`, `test_qwen_tokenizer.py`).

On: no empty think block, and the reasoning is never spoken. The random-weight model never
writes `</think>` (its planted circuit keeps every added token from being generated), so every
reply is all reasoning: the caller must hear the fallback sentence and nothing of the reasoning,
with the reasoning tokens counted as output. The answer after `</think>` is checked with
scripted deltas in `tests/unit/test_thinking.py`.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.lib.qwen_checkpoint import prompt_token_counts

pytestmark = pytest.mark.slow  # its module's own server (tests/models/conftest.py)

FALLBACK = "Sorry, could you say that again?"  # the qwen-plus alias in tests/tiny.yaml
THINKING_SYSTEM = "You are a phone agent. The caller is in Hangzhou."  # qwen-plus's, rendered
QUIET_SYSTEM = "You are a concise phone agent."  # the qwen-max alias in tests/tiny.yaml
EMPTY_THINK_BLOCK_TOKENS = 4  # <think> "\n\n" </think> "\n\n"


def _thinking_body(chat_body: Any, **overrides: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "请问这是关于什么的？"}]
    return chat_body(
        model="qwen-plus",
        messages=messages,
        biz_params={"city": "Hangzhou"},
        max_tokens=12,
        **overrides,
    )


def test_thinking_off_puts_the_empty_think_block_in_the_prompt(qwen3_api, qwen3_hf, chat_body):
    messages = [{"role": "user", "content": "你好，你是谁？ <think>plain</think>"}]
    _, completion = qwen3_api.complete(chat_body(model="qwen-max", messages=messages, max_tokens=4))
    dialog = [{"role": "system", "content": QUIET_SYSTEM}, *messages]
    off, _ = prompt_token_counts(qwen3_hf, dialog, enable_thinking=False)
    on, _ = prompt_token_counts(qwen3_hf, dialog, enable_thinking=True)
    assert off == on + EMPTY_THINK_BLOCK_TOKENS
    assert completion["usage"]["prompt_tokens"] == off
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["choices"][0]["message"]["content"]


def test_the_reasoning_is_never_streamed_to_the_caller(qwen3_api, qwen3_hf, chat_body):
    body = _thinking_body(chat_body, stream_options={"include_usage": True})
    _, stream = qwen3_api.stream(body)
    assert stream.content == FALLBACK
    assert "<think>" not in stream.content
    assert stream.finish_reason == "length"
    usage = stream.usage
    assert usage is not None and usage["completion_tokens"] == 12  # the reasoning's tokens
    messages = [{"role": "system", "content": THINKING_SYSTEM}, *body["messages"]]
    on, _ = prompt_token_counts(qwen3_hf, messages, enable_thinking=True)
    assert usage["prompt_tokens"] == on  # no empty think block with thinking on


def test_a_non_streamed_reply_hides_the_reasoning_too(qwen3_api, chat_body):
    _, completion = qwen3_api.complete(_thinking_body(chat_body))
    assert completion["choices"][0]["message"]["content"] == FALLBACK
    assert completion["usage"]["completion_tokens"] == 12
