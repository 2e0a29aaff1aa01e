"""The chunk renderer writes DashScope's exact shape, key order included."""

from __future__ import annotations

import json

from pydantic import BaseModel

from server.wire.chunks import DONE, ChunkRenderer

CHUNK_KEYS = ["choices", "object", "usage", "created", "system_fingerprint", "model", "id"]
CHOICE_KEYS = ["delta", "finish_reason", "index", "logprobs"]


def decode(chunk: bytes) -> dict[str, object]:
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
    assert chunk.count(b"\n") == 2
    return json.loads(chunk[6:-2])  # type: ignore[no-any-return]


def renderer() -> ChunkRenderer:
    return ChunkRenderer("qwen-plus", "chatcmpl-abc", 1730000000)


def test_content_chunk_matches_the_seed_shape_and_key_order() -> None:
    chunk = decode(renderer().content("I am"))
    assert list(chunk) == CHUNK_KEYS
    choice = chunk["choices"][0]  # type: ignore[index]
    assert list(choice) == CHOICE_KEYS
    assert chunk == {
        "choices": [
            {"delta": {"content": "I am"}, "finish_reason": None, "index": 0, "logprobs": None}
        ],
        "object": "chat.completion.chunk",
        "usage": None,
        "created": 1730000000,
        "system_fingerprint": None,
        "model": "qwen-plus",
        "id": "chatcmpl-abc",
    }


def test_role_and_final_chunks() -> None:
    r = renderer()
    role = decode(r.role())["choices"][0]  # type: ignore[index]
    assert list(role["delta"]) == ["content", "role"]
    assert role["delta"] == {"content": "", "role": "assistant"}
    final = decode(r.final("length"))["choices"][0]  # type: ignore[index]
    assert final["delta"] == {} and final["finish_reason"] == "length"
    assert DONE == b"data: [DONE]\n\n"


def test_text_is_escaped_and_unicode_stays_utf8() -> None:
    nasty = 'say "hi"\n\\ 你好 \x00 </s> \u2028'
    raw = renderer().content(nasty)
    assert decode(raw)["choices"][0]["delta"]["content"] == nasty  # type: ignore[index]
    assert "你好".encode() in raw  # not \\u-escaped


def test_model_name_and_id_are_escaped() -> None:
    chunk = decode(ChunkRenderer('we"ird', "chatcmpl-1", 1).content("x"))
    assert chunk["model"] == 'we"ird'


def test_usage_chunk_has_no_choices() -> None:
    chunk = decode(renderer().usage(10, 5, 4))
    assert list(chunk) == CHUNK_KEYS
    assert chunk["choices"] == []
    assert chunk["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_completion_body() -> None:
    body = json.loads(renderer().completion("Hi there", "stop", 10, 2, 0))
    assert list(body) == CHUNK_KEYS
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}


class _Delta(BaseModel):
    content: str


def test_equal_to_a_pydantic_rendering() -> None:
    """The hand-built template says the same as a straightforward model dump would."""
    text = "Hello, 世界"
    reference = {
        "choices": [
            {
                "delta": _Delta(content=text).model_dump(),
                "finish_reason": None,
                "index": 0,
                "logprobs": None,
            }
        ],
        "object": "chat.completion.chunk",
        "usage": None,
        "created": 1730000000,
        "system_fingerprint": None,
        "model": "qwen-plus",
        "id": "chatcmpl-abc",
    }
    assert decode(renderer().content(text)) == reference
