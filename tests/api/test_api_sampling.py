"""Sampling fields: strings or numbers, snake or camel case, validated, and capped."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.compat  # what reaches vLLM's SamplingParams, and what it refuses


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "0.1"),
        ("temperature", 0.1),
        ("top_p", "0.1"),
        ("top_p", 0.1),
        ("top_k", "1"),
        ("top_k", 1),
        ("topP", "0.5"),
        ("topP", 0.5),
        ("topK", "5"),
        ("topK", 5),
    ],
)
def test_sampling_value_as_string_or_number_is_accepted(api, chat_body, field, value):
    _, stream = api.stream(chat_body(max_tokens=4, **{field: value}))
    assert stream.finish_reason == "length"
    assert stream.content


def _greedy(api, chat_body) -> str:
    _, stream = api.stream(chat_body(max_tokens=16, temperature=0))
    return stream.content


def test_sampling_at_high_temperature_differs_from_greedy(api, chat_body):
    # The premise of the two tests below: without top_k/top_p the same seed samples otherwise.
    _, stream = api.stream(chat_body(max_tokens=16, temperature="1.5", seed=5))
    assert stream.content != _greedy(api, chat_body)


def test_topK_string_one_decodes_greedily(api, chat_body):
    # top_k 1 leaves only the argmax token, whatever the temperature: proof topK is honoured.
    _, stream = api.stream(chat_body(max_tokens=16, temperature="1.5", topK="1", seed=5))
    assert stream.content == _greedy(api, chat_body)


def test_topP_string_tiny_decodes_greedily(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=16, temperature="1.5", topP="0.000001", seed=5))
    assert stream.content == _greedy(api, chat_body)


def test_snake_case_wins_over_camel_case(api, chat_body):
    # top_k 1 (greedy) must win over topK 1000 sent alongside it.
    body = chat_body(max_tokens=16, temperature=1.5, top_k=1, topK=1000, seed=5)
    _, stream = api.stream(body)
    assert stream.content == _greedy(api, chat_body)


def test_checkpoint_generation_defaults_fill_missing_fields(api, chat_body):
    # The tiny checkpoint's generation_config.json: temperature 0.7, top_p 0.8, top_k 20,
    # repetition_penalty 1.05. Omitting the fields must sample exactly as sending them.
    explicit = chat_body(
        max_tokens=24, seed=99, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05
    )
    implicit = chat_body(max_tokens=24, seed=99)
    other = chat_body(
        max_tokens=24, seed=99, temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0
    )
    _, a = api.stream(explicit)
    _, b = api.stream(implicit)
    _, c = api.stream(other)
    assert a.content == b.content
    assert c.content != b.content  # the seed alone does not fix the text: the values matter


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "abc"),
        ("temperature", "NaN"),
        ("temperature", "inf"),
        ("temperature", 100),
        ("temperature", -1),
        ("top_p", -0.5),
        ("top_p", "-0.5"),
        ("top_p", 1.5),
        ("top_k", "abc"),
        ("top_k", 1.5),
        ("topP", "abc"),
        ("max_tokens", 0),
        ("max_tokens", "many"),
    ],
)
def test_invalid_sampling_value_is_400_json(api, chat_body, field, value):
    response = api.post(chat_body(**{field: value}))
    body = api.assert_error(response, 400)
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_number_is_400_json(api, literal):
    raw = (
        '{"model": "qwen-plus", "stream": true, "temperature": ' + literal + ", "
        '"messages": [{"role": "user", "content": "hi"}]}'
    )
    api.assert_error(api.post(raw.encode()), 400)


def test_max_tokens_above_the_cap_is_capped(api, chat_body):
    body = chat_body(max_tokens=100_000, stream_options={"include_usage": True})
    _, stream = api.stream(body)
    assert stream.usage is not None
    assert stream.usage["completion_tokens"] == 32  # sampling.max_tokens in tests/tiny.yaml
    assert stream.finish_reason == "length"


def test_missing_max_tokens_uses_the_cap(api, chat_body):
    body = chat_body(stream_options={"include_usage": True})
    del body["max_tokens"]
    _, stream = api.stream(body)
    assert stream.usage is not None
    assert stream.usage["completion_tokens"] == 32
