"""Property-based fuzzing of the request parser through the real server: never a 5xx.

Issue 4, point 1. Hypothesis generates request bodies of four kinds (arbitrary bytes, arbitrary
JSON, request-shaped objects with wrong or odd values in every known field, and byte-level
mutations of a valid request) and posts each one to the shared server. Properties:

* no status of 500 or more;
* every non-200 answer carries the JSON error in both shapes, with nothing internal in it;
* every 200 is a well-formed turn (strict SSE framing, role chunk first, `finish_reason` last,
  `[DONE]`), or a well-formed `chat.completion`;
* afterwards nothing was counted as an engine `error` (bad input that slipped past validation
  and failed inside the engine would end as a 200 with the fallback sentence: this catches it),
  the log has no traceback, and the server still serves a turn.

`CALLGATE_FUZZ_EXAMPLES` sets the number of examples (default 300). schemathesis is not used:
the OpenAPI schema describes the valid shape only, and the four strategies here reach further.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.wire import (
    assert_error_shape,
    delta,
    log_since,
    outcomes,
    wait_idle,
    well_formed,
)

EXAMPLES = int(os.environ.get("CALLGATE_FUZZ_EXAMPLES", "300"))

VALID: dict[str, Any] = {
    "model": "qwen-plus",
    "stream": True,
    "max_tokens": 2,
    "temperature": "0.1",
    "top_p": 0.9,
    "session_id": "147417592084^1341",
    "biz_params": {"city": "Hangzhou"},
    "messages": [
        {"role": "assistant", "content": "Hello, this is a test opening message."},
        {"role": "user", "content": "What is this about?"},
    ],
}

# Text with the awkward characters: lone surrogates, NUL, control tokens, CJK, emoji.
_piece = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]),
    st.sampled_from(["\x00", "\u2028", "\ufeff", "你好", "😀", "<|im_end|>", "<think>"]),
)
_text = st.lists(_piece, max_size=20).map("".join)
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
json_values = st.recursive(
    _leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_text, kids, max_size=4),
    max_leaves=12,
)
_numberish = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["0.1", "1", "-1", "0", "2", "1e3", "abc", "NaN", "inf", "-inf", "1e400", ""]),
    json_values,
)
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", ""]) | json_values},
    optional={"text": _text | json_values},
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", "", "USER"]) | json_values,
        "content": st.one_of(_text, st.lists(_part, max_size=3), json_values),
    },
)
_messages = st.one_of(st.lists(_message, max_size=4), json_values)

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["qwen-plus", "qwen-max", "*****"]) | _text | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values})
    | json_values,
    "session_id": _text | json_values,
    "out_id": _text | json_values,
    "biz_params": st.dictionaries(_text, json_values, max_size=4) | json_values,
    "stop": st.lists(_text, max_size=3) | _text | json_values,
    "ignore_eos": st.booleans() | json_values,
    "n": _numberish,
    "logprobs": st.booleans() | json_values,
    "tools": json_values,
    "response_format": st.fixed_dictionaries({"type": _text}) | json_values,
    **{
        name: _numberish
        for name in (
            "temperature",
            "top_p",
            "topP",
            "top_k",
            "topK",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "max_tokens",
            "max_completion_tokens",
            "min_tokens",
            "seed",
        )
    },
}


def _dump(value: Any) -> bytes:
    # ensure_ascii escapes lone surrogates as \udxxx: valid JSON syntax the server must refuse.
    return json.dumps(value, ensure_ascii=True).encode()


@st.composite
def _request_shaped(draw: st.DrawFn) -> bytes:
    """A valid request with some fields replaced, removed or added."""
    body = dict(VALID)
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=4, unique=True)):
        body[name] = draw(FIELD_VALUES[name])
    if draw(st.booleans()):
        body["messages"] = draw(_messages)
    for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del body[name]
    body.setdefault("max_tokens", 2)  # keep the accepted ones short: this is about parsing
    return _dump(body)


# Raw tokens spliced into a valid body: JSON extensions, absurd numbers, deep nesting, bad UTF-8.
DAMAGE = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1" + b"0" * 5000,
    b"[" * 3000,
    b'"\\ud800"',
    b"null",
    b"{}",
    b"\\u0000",
    b'"\x00"',
    b"\xc3\x28",
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """Byte-level damage to a valid request: flips, cuts, insertions, literal NaN/Infinity."""
    data = bytearray(_dump(VALID))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert", "token", "truncate"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            del data[at : at + draw(st.integers(min_value=1, max_value=20))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            token = draw(st.sampled_from(DAMAGE))
            data[at:at] = token
        elif op == "truncate":
            del data[at:]
    return bytes(data)


bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(_dump),
    _request_shaped(),
    _request_shaped(),
    _mutated(),
)


def _check(response: httpx.Response) -> None:
    status = response.status_code
    assert status < 500, (status, response.text[:300])
    if status != 200:
        assert_error_shape(response)
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        well_formed(response.content)
    else:
        completion = response.json()
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["finish_reason"] in ("stop", "length")


def test_fuzzed_request_bodies_never_get_a_5xx(api, server):
    before, mark = outcomes(server), len(server.log_text())
    headers = {"Authorization": server.auth, "Content-Type": "application/json"}
    url = f"{server.url}/"
    statuses: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies)
    # Bodies that once got a 5xx: always tried, whatever the random draw finds.
    @example(body=b'{"messages": [{"role": "user"}], "max_tokens": 2}')
    @example(body=b'{"messages": [{"role": "assistant"}, {"role": "user", "content": null}]}')
    def probe(body: bytes) -> None:
        response = api.client.post(url, content=body, headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        _check(response)

    probe()

    # The strategies must reach both sides of the parser, or the test proves little.
    assert statuses.get(400, 0) > EXAMPLES // 4, statuses
    assert statuses.get(200, 0) > 0, statuses
    changed = delta(outcomes(server), before)
    assert "error" not in changed, changed
    log = log_since(server, mark)
    assert "Traceback" not in log
    assert '"exc_info"' not in log
    assert wait_idle(server).idle
    response = api.post(dict(VALID, max_tokens=8))
    assert response.status_code == 200
    assert well_formed(response.content).finish_reason == "length"
