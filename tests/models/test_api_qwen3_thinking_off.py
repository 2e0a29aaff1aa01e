"""Qwen3 with thinking off (the default), through the HTTP API: the template renders the empty
think block into the prompt, as Qwen documents for `enable_thinking=False`. (The `<think>` ids
are also banned at the sampler: `tests/unit/test_sampling.py`, `test_qwen_tokenizer.py`.)"""

from __future__ import annotations

import pytest

from benchmarks.lib.qwen_checkpoint import prompt_token_counts

pytestmark = pytest.mark.slow  # its module's own server (tests/models/conftest.py)

SYSTEM = "You are a concise phone agent."  # the qwen-max alias in tests/tiny.yaml
EMPTY_THINK_BLOCK_TOKENS = 4  # <think> "\n\n" </think> "\n\n"


def test_thinking_off_puts_the_empty_think_block_in_the_prompt(qwen3_api, qwen3_hf, chat_body):
    messages = [{"role": "user", "content": "你好，你是谁？ <think>plain</think>"}]
    _, completion = qwen3_api.complete(chat_body(model="qwen-max", messages=messages, max_tokens=4))
    dialog = [{"role": "system", "content": SYSTEM}, *messages]
    off, _ = prompt_token_counts(qwen3_hf, dialog, enable_thinking=False)
    on, _ = prompt_token_counts(qwen3_hf, dialog, enable_thinking=True)
    assert off == on + EMPTY_THINK_BLOCK_TOKENS
    assert completion["usage"]["prompt_tokens"] == off
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["choices"][0]["message"]["content"]
