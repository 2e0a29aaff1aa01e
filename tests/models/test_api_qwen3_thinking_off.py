"""Qwen3 with thinking off (the default), through the HTTP API: the template renders the empty
think block into the prompt, as Qwen documents for `enable_thinking=False`. (The `<think>` ids
are also banned at the sampler: `tests/unit/test_sampling.py`, `test_qwen_tokenizer.py`.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.lib.qwen_checkpoint import prompt_token_counts
from tests.conftest import Api, launch_server

SYSTEM = "You are a concise phone agent."  # the qwen-max alias in tests/tiny.yaml
EMPTY_THINK_BLOCK_TOKENS = 4  # <think> "\n\n" </think> "\n\n"


@pytest.fixture(scope="module")
def qwen3_api(
    qwen3_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, make_api: Any
) -> Iterator[Api]:
    with launch_server(qwen3_model_dir, tmp_path_factory.mktemp("server-logs")) as handle:
        yield make_api(handle)


@pytest.fixture(scope="module")
def hf(qwen3_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_model_dir))


def test_thinking_off_puts_the_empty_think_block_in_the_prompt(qwen3_api, hf, chat_body):
    messages = [{"role": "user", "content": "你好，你是谁？ <think>plain</think>"}]
    _, completion = qwen3_api.complete(chat_body(model="qwen-max", messages=messages, max_tokens=4))
    dialog = [{"role": "system", "content": SYSTEM}, *messages]
    off, _ = prompt_token_counts(hf, dialog, enable_thinking=False)
    on, _ = prompt_token_counts(hf, dialog, enable_thinking=True)
    assert off == on + EMPTY_THINK_BLOCK_TOKENS
    assert completion["usage"]["prompt_tokens"] == off
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["choices"][0]["message"]["content"]
