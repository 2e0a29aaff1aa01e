"""Bad input gets a fast 4xx JSON error in both shapes, never a 5xx, and leaves the server healthy.

Issue 4, point 1, on the shared server (tests/tiny.yaml: max_model_len 2048, body limit 1 MiB,
request head limit 16 KiB). Each request here is refused before any engine work, so the whole
module costs a few seconds. After every case the server is healthy, nothing was counted as an
engine error and nothing logged a traceback or an error (checked per case, so no test depends
on running last); all of them together are counted as refusals, and a turn is still served.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

import httpx
import pytest

from tests.wire import (
    address,
    assert_error_shape,
    delta,
    log_since,
    outcomes,
    read_response,
    request_head,
    response_json,
    well_formed,
)

BODY_LIMIT = 1_048_576  # server.max_body_bytes default
HEAD_LIMIT = 16_384  # server.max_header_bytes default
VALID_MESSAGES = [{"role": "user", "content": "What is this about?"}]


@pytest.fixture(scope="module")
def marks(server):
    """Log offset and outcome counts before this module ran."""
    return len(server.log_text()), outcomes(server)


@pytest.fixture(autouse=True)
def _still_alive(server, marks):
    """After every case: the server answers, the engine is up, and the case was neither counted
    as an engine error nor logged a traceback or an error."""
    log_mark, before = len(server.log_text()), outcomes(server)
    yield
    assert httpx.get(f"{server.url}/health", timeout=10.0).status_code == 200
    changed = delta(outcomes(server), before)
    assert "error" not in changed, changed
    log = log_since(server, log_mark)
    assert "Traceback" not in log
    assert '"exc_info"' not in log
    assert '"level": "error"' not in log


def _raw(body: str | bytes) -> bytes:
    return body if isinstance(body, bytes) else body.encode("utf-8")


def _valid(**fields: Any) -> dict[str, Any]:
    return {
        "model": "qwen-plus",
        "stream": True,
        "max_tokens": 4,
        "messages": VALID_MESSAGES,
        **fields,
    }


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "wrong-code",
        "Bearer wrong-code",
        "Bearer",
        "Basic dGVzdC1jb2RlOg==",
        "Basic test-code",
        "Digest test-code",
        "TEST-CODE",
        "test-code-and-more",
        "Bearer test-code extra",
        "x" * 8_000,  # under the head limit: reaches the app, refused by length
        "Bearer " + "x" * 8_000,
    ],
    ids=[
        "missing",
        "empty",
        "wrong",
        "bearer-wrong",
        "bearer-alone",
        "basic-b64",
        "basic-raw",
        "digest",
        "code-case",
        "code-prefix",
        "bearer-trailing",
        "long-8k",
        "bearer-long-8k",
    ],
)
def test_bad_authorization_is_401(api, header):
    headers = {} if header is None else {"Authorization": header}
    response = api.post(_valid(), auth=None, headers=headers)
    body = assert_error_shape(response, 401)
    assert body["error"]["type"] == "authentication_error"
    assert "test-code" not in response.text


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(api, scheme):
    # RFC 9110: the auth scheme is case-insensitive; the code itself is not (see code-case).
    code = api.handle.auth
    response = api.post(_valid(), auth=None, headers={"Authorization": f"{scheme} {code}"})
    assert response.status_code == 200, response.text
    well_formed(response.content)


def test_non_ascii_authorization_bytes_are_401(server):
    head = request_head(server, auth="\xff\xfe test-code", length=2)
    with socket.create_connection(address(server)) as sock:
        sock.sendall(head + b"{}")
        status, raw = read_response(sock)
    assert status == 401
    assert response_json(raw)["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "extra",
    [
        [("Authorization", "x" * (HEAD_LIMIT + 1))],
        [(f"X-Filler-{i}", "y" * 400) for i in range(60)],
        [("X-One-Big", "z" * 30_000)],
    ],
    ids=["authorization-over-limit", "many-headers", "one-huge-header"],
)
def test_oversized_request_head_is_refused_at_the_parser(server, api, extra):
    # The protocol answers 431 (text, server/process/connections.py) and closes: the app never
    # sees it.
    head = request_head(server, auth=server.auth, length=2, extra=extra)
    with socket.create_connection(address(server)) as sock:
        # Closed while we were still writing the head: refused, which is the point.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + b"{}")
        status, _ = read_response(sock)
    assert 400 <= status < 500
    response = api.post(_valid())
    assert response.status_code == 200
    well_formed(response.content)


# -- bodies that are not a request -----------------------------------------------------------


DEEP = "[" * 100_000
DEEP_OBJECT = '{"a":' * 50_000 + "1" + "}" * 50_000
HUGE_INT = "1" + "0" * 5000  # 10**5000

BAD_BODIES: dict[str, str | bytes] = {
    "empty": "",
    "whitespace": "   \n",
    "not-json": "hello",
    "truncated": '{"messages": [',
    "single-quotes": "{'messages': []}",
    "trailing-garbage": json.dumps(_valid()) + "x",
    "array": json.dumps([_valid()]),
    "string": '"hello"',
    "number": "42",
    "null": "null",
    "true": "true",
    "invalid-utf8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "utf16": json.dumps(_valid()).encode("utf-16"),
    "bom": "\ufeff" + json.dumps(_valid()),
    "nan-literal": json.dumps(_valid())[:-1] + ', "temperature": NaN}',
    "infinity-literal": json.dumps(_valid())[:-1] + ', "temperature": Infinity}',
    "neg-infinity-literal": json.dumps(_valid())[:-1] + ', "top_p": -Infinity}',
    "nan-in-biz": json.dumps(_valid())[:-1] + ', "biz_params": {"x": NaN}}',
    "huge-int-max-tokens": json.dumps(_valid())[:-1] + f', "max_tokens": {HUGE_INT}}}',
    "huge-int-unknown-field": json.dumps(_valid())[:-1] + f', "whatever": {HUGE_INT}}}',
    "deep-array": DEEP,
    "deep-object": DEEP_OBJECT,
    "deep-in-messages": '{"messages": ' + DEEP,
    "deep-biz-params": json.dumps(_valid())[:-1] + ', "biz_params": ' + DEEP_OBJECT + "}",
}


@pytest.mark.parametrize("raw", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_body_that_is_not_a_request_is_400(api, raw):
    assert_error_shape(api.post(_raw(raw)), 400)


def test_body_over_the_limit_with_content_length_is_413_before_it_is_sent(server):
    # Only the head is sent: the server must refuse from Content-Length, not wait for 2 MiB.
    head = request_head(server, auth=server.auth, length=2 * BODY_LIMIT)
    with socket.create_connection(address(server)) as sock:
        sock.sendall(head)
        status, raw = read_response(sock)
    assert status == 413
    assert response_json(raw)["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_limit_is_413_while_reading(server):
    # No Content-Length: the limit must hold while the chunks arrive. We send just past the
    # limit and never end the body, so only a server that counts as it reads can answer.
    piece = b"x" * 65_536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    with socket.create_connection(address(server)) as sock:
        sock.sendall(request_head(server, auth=server.auth, chunked=True))
        sent = 0
        while sent <= BODY_LIMIT + len(piece):
            sock.sendall(chunk)
            sent += len(piece)
        status, raw = read_response(sock)
    assert status == 413
    assert response_json(raw)["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_limit_through_httpx_is_413(api):
    def pieces():
        for _ in range(40):
            yield b" " * 65_536  # 2.5 MiB of whitespace: valid JSON padding if it were read

    response = api.client.post(
        f"{api.handle.url}/",
        content=pieces(),
        headers={"Authorization": api.handle.auth, "Content-Type": "application/json"},
    )
    assert_error_shape(response, 413)


def test_body_just_under_the_limit_is_parsed(api):
    padded = json.dumps(_valid()) + " " * (BODY_LIMIT - 2000)
    response = api.post(padded)
    assert response.status_code == 200, response.text[:300]
    well_formed(response.content)


# -- fields of the wrong type or out of range ---------------------------------------------------


LONG_ID = "x" * 300
BAD_FIELDS: list[tuple[str, Any]] = [
    ("model", 5),
    ("model", ["qwen-plus"]),
    ("model", LONG_ID),
    ("messages", None),
    ("messages", []),
    ("messages", {"role": "user", "content": "hi"}),
    ("messages", "hi"),
    ("messages", ["hi"]),
    ("messages", [VALID_MESSAGES[0]] * 4097),
    ("stream", [True]),
    ("stream", {"on": True}),
    ("stream_options", 5),
    ("stream_options", {"include_usage": [1]}),
    ("temperature", -0.1),
    ("temperature", 2.5),
    ("temperature", "abc"),
    ("temperature", "NaN"),
    ("temperature", "inf"),
    ("temperature", "-Infinity"),
    ("temperature", True),
    ("temperature", [0.1]),
    ("temperature", {"v": 0.1}),
    ("temperature", 10**400),
    ("top_p", 0),
    ("top_p", 1.5),
    ("top_p", "x"),
    ("topP", 2),
    ("topP", "nan"),
    ("top_k", -2),
    ("top_k", 1.5),
    ("top_k", "abc"),
    ("top_k", 10**7),
    ("topK", "1.5"),
    ("min_p", 1.5),
    ("presence_penalty", 3),
    ("frequency_penalty", -3),
    ("repetition_penalty", 0),
    ("repetition_penalty", 5),
    ("max_tokens", 0),
    ("max_tokens", -1),
    ("max_tokens", 1.5),
    ("max_tokens", "many"),
    ("max_tokens", "1e999"),
    ("max_completion_tokens", 0),
    ("min_tokens", -1),
    ("ignore_eos", "sometimes"),
    ("seed", 1.5),
    ("seed", 2**64),
    ("stop", 5),
    ("stop", [5]),
    ("stop", ""),
    ("stop", [""]),
    ("stop", ["s"] * 17),
    ("session_id", 5),
    ("session_id", {"id": 1}),
    ("out_id", 5),
    ("out_id", LONG_ID),
    ("biz_params", [1]),
    ("biz_params", "city=Hangzhou"),
    ("biz_params", 5),
]


@pytest.mark.parametrize(
    ("field", "value"),
    BAD_FIELDS,
    ids=[f"{f}={json.dumps(v)[:24]}" for f, v in BAD_FIELDS],
)
def test_wrong_type_or_out_of_range_is_400(api, field, value):
    body = assert_error_shape(api.post(_valid(**{field: value})), 400)
    assert body["error"]["type"] == "invalid_request_error"


def test_missing_messages_is_400(api):
    body = _valid()
    del body["messages"]
    assert_error_shape(api.post(body), 400)


# -- roles and content -----------------------------------------------------------------------


BAD_MESSAGES: dict[str, list[Any]] = {
    "role-missing": [{"content": "hi"}],
    "role-empty": [{"role": "", "content": "hi"}],
    "role-null": [{"role": None, "content": "hi"}],
    "role-number": [{"role": 1, "content": "hi"}],
    "role-tool": [{"role": "tool", "content": "hi"}],
    "role-function": [{"role": "function", "content": "hi"}],
    "role-upper": [{"role": "USER", "content": "hi"}],
    "role-unknown": [{"role": "caller", "content": "hi"}],
    "message-null": [None],
    "message-list": [["user", "hi"]],
    "content-number": [{"role": "user", "content": 5}],
    "content-object": [{"role": "user", "content": {"text": "hi"}}],
    "part-image": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}
    ],
    "part-audio": [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}
    ],
    "part-file": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],
    "part-no-type": [{"role": "user", "content": [{"text": "hi"}]}],
    "part-string": [{"role": "user", "content": ["hi"]}],
    "part-text-number": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    "text-then-image": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:,x"}},
            ],
        }
    ],
}


@pytest.mark.parametrize("messages", list(BAD_MESSAGES.values()), ids=list(BAD_MESSAGES))
def test_bad_role_or_content_is_400(api, messages):
    assert_error_shape(api.post(_valid(messages=messages)), 400)


@pytest.mark.parametrize(
    "message",
    [{"role": "user"}, {"role": "user", "content": None}, {"role": "user", "content": []}],
    ids=["missing", "null", "no-parts"],
)
def test_message_without_content_is_an_empty_turn(api, message):
    # An empty user turn is a normal call event (silence); however it is spelled, never a 5xx.
    opening = {"role": "assistant", "content": "Hello, this is a test opening message."}
    response = api.post(_valid(messages=[opening, message]))
    assert response.status_code == 200, response.text
    well_formed(response.content)


def test_text_content_parts_are_accepted(api):
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "this about?"}]
    response = api.post(_valid(messages=[{"role": "user", "content": parts}]))
    assert response.status_code == 200, response.text
    well_formed(response.content)


def test_single_message_far_beyond_the_context_is_400(api):
    huge = "The weather in Hangzhou is sunny today. " * 2_000  # ~20x max_model_len in tokens
    response = api.post(_valid(messages=[{"role": "user", "content": huge}]))
    body = assert_error_shape(response, 400)
    assert body["error"]["code"] == "context_length_exceeded"


# -- text that is not text -------------------------------------------------------------------


LONE_SURROGATE = '"\\ud800"'  # escaped in JSON: valid JSON syntax, not encodable text
SURROGATE_BODIES = {
    "content": '{"messages": [{"role": "user", "content": %s}], "stream": true}',
    "content-part": '{"messages": [{"role": "user", "content": [{"type": "text", "text": %s}]}]}',
    "system": '{"messages": [{"role": "system", "content": %s}, {"role": "user", "content": "x"}]}',
    "model": '{"model": %s, "messages": [{"role": "user", "content": "hi"}]}',
    "session_id": '{"session_id": %s, "messages": [{"role": "user", "content": "hi"}]}',
    "out_id": '{"out_id": %s, "messages": [{"role": "user", "content": "hi"}]}',
    "biz-value": '{"biz_params": {"city": %s}, "messages": [{"role": "user", "content": "x"}]}',
    "biz-key": '{"biz_params": {%s: 1}, "messages": [{"role": "user", "content": "x"}]}',
    "stop": '{"stop": [%s], "messages": [{"role": "user", "content": "hi"}]}',
    "low-surrogate": '{"messages": [{"role": "user", "content": "a\\udc00b"}], "x": %s}',
}


@pytest.mark.parametrize("template", list(SURROGATE_BODIES.values()), ids=list(SURROGATE_BODIES))
def test_lone_surrogate_is_400(api, template):
    assert_error_shape(api.post(template % LONE_SURROGATE), 400)


def test_lone_surrogate_in_an_ignored_field_is_harmless(api):
    body = json.dumps(_valid())[:-1] + ', "x_unknown": "\\ud800"}'
    response = api.post(body)
    assert response.status_code == 200, response.text
    well_formed(response.content)


def test_paired_surrogates_are_ordinary_text(api):
    body = json.dumps(_valid(messages=[{"role": "user", "content": "😀 ok"}]), ensure_ascii=True)
    assert "\\ud83d\\ude00" in body
    response = api.post(body)
    assert response.status_code == 200, response.text
    well_formed(response.content)


@pytest.mark.parametrize(
    "text", ["a\u0000b", "\u0000", "\u0000" * 100], ids=["inner", "only", "many"]
)
def test_nul_characters_are_accepted_as_text(api, text):
    # Documented behaviour: NUL is an ordinary character of the caller's text (200).
    response = api.post(_valid(messages=[{"role": "user", "content": text}]))
    assert response.status_code == 200, response.text
    well_formed(response.content)


# -- sizes of per-call values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_id", "147417592084^" + "1" * 10_000),
        ("out_id", "o" * 10_000),
        ("model", "m" * 10_000),
        ("biz_params", {"city": "Hangzhou", "notes": "n" * 20_000}),
        ("biz_params", {f"k{i}": i for i in range(5_000)}),
        ("biz_params", {"nested": [[["x" * 100] * 10] * 10] * 10}),
    ],
    ids=["session_id-10k", "out_id-10k", "model-10k", "biz-20k", "biz-5000-keys", "biz-100k"],
)
def test_huge_per_call_values_are_400(api, field, value):
    assert_error_shape(api.post(_valid(**{field: value})), 400)


def test_largest_accepted_session_id_and_biz_params_work(api):
    # Just under 16 KiB of JSON, each string at its 1024-character limit.
    notes = ["n" * 1024] * 15
    body = _valid(session_id="1" * 256, biz_params={"city": "Hangzhou", "notes": notes})
    response = api.post(body)
    assert response.status_code == 200, response.text
    well_formed(response.content)


# -- fields we do not support ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("n", "3"),
        ("n", 0),
        ("logprobs", True),
        ("top_logprobs", 1),
        ("tools", [{"type": "function", "function": {"name": "hang_up"}}]),
        ("functions", [{"name": "hang_up"}]),
        ("tool_choice", "auto"),
        ("function_call", "auto"),
        ("response_format", {"type": "json_object"}),
        ("response_format", "json"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
    ],
    ids=lambda v: json.dumps(v)[:20] if not isinstance(v, str) else v,
)
def test_unsupported_field_is_400_naming_it(api, field, value):
    body = assert_error_shape(api.post(_valid(**{field: value})), 400)
    assert body["error"]["code"] == "unsupported_parameter"
    named = {"top_logprobs": "logprobs"}.get(field, field)
    assert named in body["message"]


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 1},
        {"logprobs": False},
        {"tools": []},
        {"response_format": {"type": "text"}},
        {"user": "someone", "metadata": {"a": 1}, "x_vendor": [1, {"b": None}]},
    ],
    ids=["n-1", "logprobs-false", "tools-empty", "format-text", "unknown-fields"],
)
def test_harmless_or_unknown_fields_are_ignored(api, fields):
    response = api.post(_valid(**fields))
    assert response.status_code == 200, response.text
    well_formed(response.content)


# -- paths and methods -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 405),
        ("PUT", "/chat/completions", 405),
        ("DELETE", "/v1/chat/completions", 405),
        ("POST", "/v2/chat/completions", 404),
        ("POST", "/../../etc/passwd", 404),
    ],
)
def test_wrong_method_or_path_is_json(api, method, path, status):
    response = api.client.request(
        method, f"{api.handle.url}{path}", headers=api.headers(), content=b"{}"
    )
    assert_error_shape(response, status)


# -- the module as a whole ----------------------------------------------------------------


def test_refusals_are_counted_as_invalid_or_unauthorized(server, marks):
    """Whatever ran of this module before: its refusals are counted as such, never as errors
    (the per-case check above already holds each case to that)."""
    log_mark, before = marks
    bad = {"Authorization": server.auth, "Content-Type": "application/json"}
    httpx.post(f"{server.url}/", content=b"{not json", headers=bad, timeout=10.0)
    httpx.post(f"{server.url}/", json=_valid(), headers={"Authorization": "wrong"}, timeout=10.0)
    changed = delta(outcomes(server), before)
    assert "error" not in changed, changed
    assert changed.get("invalid", 0) >= 1 and changed.get("unauthorized", 0) >= 1, changed
    assert "Traceback" not in log_since(server, log_mark)


def test_the_server_still_serves_a_turn(api):
    response = api.post(_valid(max_tokens=8, session_id="after-bad-input"))
    assert response.status_code == 200
    stream = well_formed(response.content)
    assert stream.finish_reason == "length"
    assert stream.content
