"""Model names: whatever the console's Base Model is, the reply echoes it; aliases pick prompts."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("model", ["qwen-max", "qwen-turbo-unknown-to-us"])
def test_request_model_is_echoed_in_every_chunk(api, chat_body, model):
    _, stream = api.stream(chat_body(model=model, max_tokens=3))
    assert stream.chunks
    assert all(chunk["model"] == model for chunk in stream.chunks)


@pytest.mark.parametrize("model", ["qwen-max", "qwen-turbo-unknown-to-us"])
def test_request_model_is_echoed_non_streamed(api, chat_body, model):
    _, completion = api.complete(chat_body(model=model, max_tokens=3))
    assert completion["model"] == model


def _prompt_tokens(api, chat_body, **overrides) -> int:
    body = chat_body(max_tokens=1, stream_options={"include_usage": True}, **overrides)
    _, stream = api.stream(body)
    assert stream.usage is not None
    return int(stream.usage["prompt_tokens"])


def test_biz_params_reach_the_system_prompt(api, chat_body):
    # qwen-plus's system prompt in tests/tiny.yaml renders {{ biz.city }}.
    without = _prompt_tokens(api, chat_body)
    with_city = _prompt_tokens(api, chat_body, biz_params={"city": "Hangzhou Xihu District"})
    assert with_city > without


def test_aliases_have_their_own_system_prompts(api, chat_body):
    plus = _prompt_tokens(api, chat_body, model="qwen-plus")
    unknown = _prompt_tokens(api, chat_body, model="not-configured")
    maximum = _prompt_tokens(api, chat_body, model="qwen-max")
    assert unknown == plus  # unknown names are served as the default alias
    assert maximum != plus
