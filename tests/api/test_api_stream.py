"""The stream the gateway reads: the seed's requests, chunk shape, ids, headers, `[DONE]`."""

from __future__ import annotations

import pytest

from tests.wire import DONE, parse_chat_stream

pytestmark = pytest.mark.compat  # the engine's deltas as the stream the gateway reads

# The seed page's example request, byte for byte as published (numbers, not strings).
SEED_EXAMPLE_REQUEST = """{
  "top_p": 0.1,
  "stream": true,
  "top_k": 1,
  "temperature": 0.1,
  "session_id": "147417592084^1341********",
  "messages": [
    {
      "role": "assistant",
      "content": "Hello, valued Alibaba Cloud customer. This is a test of the opening message. We apologize for any inconvenience."
    },
    {
      "role": "user",
      "content": "What is this about?"
    }
  ],
  "model": "qwen-plus",
  "biz_params": {
    "city": "Hangzhou"
  },
  "out_id": "222356****"
}"""  # noqa: E501

# The seed page's curl check, with its placeholder model name left as published.
SEED_CURL_REQUEST = """{
    "model": "*****",
    "messages": [
        {
            "role": "assistant",
            "content": "This is a test opening message."
        },
        {
            "role": "user", 
            "content": "Who are you?"
        }
    ],
    "stream":true
}"""  # noqa: W291

CHUNK_KEYS = ["choices", "object", "usage", "created", "system_fingerprint", "model", "id"]
CHOICE_KEYS = ["delta", "finish_reason", "index", "logprobs"]


def test_seed_example_request_streams(api):
    response = api.post(SEED_EXAMPLE_REQUEST.encode())
    assert response.status_code == 200, response.text
    stream = parse_chat_stream(response.content)
    assert stream.content
    assert stream.finish_reason == "length"  # no max_tokens: the configured cap (32) ends it
    assert all(c["model"] == "qwen-plus" for c in stream.chunks)


def test_seed_curl_request_streams(api):
    response = api.post(SEED_CURL_REQUEST.encode())
    assert response.status_code == 200, response.text
    stream = parse_chat_stream(response.content)
    assert stream.content
    assert all(c["model"] == "*****" for c in stream.chunks)


def test_every_chunk_has_dashscope_shape_and_key_order(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=8))
    chunks = stream.chunks
    assert len(chunks) >= 3
    for chunk in chunks:
        assert list(chunk) == CHUNK_KEYS
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["usage"] is None
        assert chunk["system_fingerprint"] is None
        assert chunk["model"] == "qwen-plus"
        assert len(chunk["choices"]) == 1
        choice = chunk["choices"][0]
        assert list(choice) == CHOICE_KEYS
        assert choice["index"] == 0
        assert choice["logprobs"] is None


def test_first_chunk_announces_the_assistant(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=4))
    first = stream.chunks[0]["choices"][0]
    assert list(first["delta"].items()) == [("content", ""), ("role", "assistant")]
    assert first["finish_reason"] is None


def test_content_chunks_carry_only_content(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=8))
    middle = stream.chunks[1:-1]
    assert middle
    for chunk in middle:
        choice = chunk["choices"][0]
        assert list(choice["delta"]) == ["content"]
        assert isinstance(choice["delta"]["content"], str)
        assert choice["finish_reason"] is None


def test_no_empty_content_chunks(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=16, temperature=1.0, seed=11))
    assert all(c["choices"][0]["delta"]["content"] != "" for c in stream.chunks[1:-1])


def test_final_chunk_has_empty_delta_and_length_when_max_tokens_hit(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=5))
    last = stream.chunks[-1]["choices"][0]
    assert last["delta"] == {}
    assert last["finish_reason"] == "length"


def test_one_id_and_one_created_across_chunks(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=8))
    ids = {c["id"] for c in stream.chunks}
    created = {c["created"] for c in stream.chunks}
    assert len(ids) == 1
    assert ids.pop().startswith("chatcmpl-")
    assert len(created) == 1
    value = created.pop()
    assert isinstance(value, int) and value > 1_600_000_000  # Unix seconds


def test_request_id_header_is_the_chunk_id_suffix(api, chat_body):
    response, stream = api.stream(chat_body(max_tokens=2))
    request_id = response.headers["x-request-id"]
    assert request_id
    assert stream.chunks[0]["id"] == f"chatcmpl-{request_id}"


def test_stream_headers_and_no_compression(api, chat_body):
    response, _ = api.stream(
        chat_body(max_tokens=2), headers={"Accept-Encoding": "gzip, deflate, br"}
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in response.headers


def test_done_is_the_last_event_and_appears_once(api, chat_body):
    response, stream = api.stream(chat_body(max_tokens=2))
    assert stream.payloads[-1] == DONE
    assert stream.payloads.count(DONE) == 1
    assert response.content.endswith(b"data: [DONE]\n\n")


def test_include_usage_adds_one_usage_chunk_before_done(api, chat_body):
    _, stream = api.stream(chat_body(max_tokens=6, stream_options={"include_usage": True}))
    *choice_chunks, usage_chunk = stream.chunks
    assert list(usage_chunk) == CHUNK_KEYS
    assert usage_chunk["choices"] == []
    assert all(c["usage"] is None for c in choice_chunks)
    assert choice_chunks[-1]["choices"][0]["finish_reason"] == "length"
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage_chunk["id"] == choice_chunks[0]["id"]


def test_stream_false_returns_one_completion_equal_to_the_stream(api, chat_body):
    body = chat_body(max_tokens=16, temperature=0, seed=7)
    _, stream = api.stream(body)
    response, completion = api.complete(body)
    assert response.headers["content-type"].startswith("application/json")
    assert completion["object"] == "chat.completion"
    assert completion["id"] == f"chatcmpl-{response.headers['x-request-id']}"
    assert completion["model"] == "qwen-plus"
    assert len(completion["choices"]) == 1
    choice = completion["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == stream.content
    assert choice["finish_reason"] == stream.finish_reason == "length"
    assert completion["usage"]["completion_tokens"] == 16


def test_sampled_stream_equals_non_streamed_for_the_same_seed(api, chat_body):
    body = chat_body(max_tokens=24, temperature=1.0, top_p=1.0, top_k=-1, seed=1234)
    _, stream = api.stream(body)
    _, completion = api.complete(body)
    assert completion["choices"][0]["message"]["content"] == stream.content


def test_openai_client_consumes_the_stream(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.auth, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="qwen-plus",
            messages=[{"role": "user", "content": "Who are you?"}],
            stream=True,
            max_tokens=8,
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_client_non_streamed_completion(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.auth, max_retries=0)
    completion = client.chat.completions.create(
        model="qwen-plus",
        messages=[{"role": "user", "content": "Who are you?"}],
        max_tokens=8,
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 8
