"""The API tests' SSE parser must refuse broken framing, or a broken stream would pass them."""

from __future__ import annotations

import pytest

from tests.wire import SSEError, loads, parse_chat_stream, parse_events

GOOD = (
    b'data: {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"\xe4\xbd\xa0\xe5\xa5\xbd"},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n'
    b"data: [DONE]\n\n"
)


def test_well_formed_stream_parses_in_order():
    stream = parse_chat_stream(GOOD)
    assert stream.payloads[-1] == "[DONE]"
    assert len(stream.chunks) == 3
    assert stream.content == "你好"
    assert stream.finish_reason == "length"
    assert list(stream.chunks[0]["choices"][0]["delta"]) == ["content", "role"]


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"a":1}\ndata: [DONE]\n\n',  # missing blank line between events
        b'data: {"a":1}\n\ndata: [DONE]\n',  # last event not terminated
        b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n',  # CRLF line ends
        b'data:{"a":1}\n\ndata: [DONE]\n\n',  # no space after the colon
        b'event: message\ndata: {"a":1}\n\ndata: [DONE]\n\n',  # extra field line
        b'{"a":1}\n\ndata: [DONE]\n\n',  # bare JSON line
        b'data: {"a":1}\n\n\ndata: [DONE]\n\n',  # extra blank line
        b": ping\n\ndata: [DONE]\n\n",  # comment while keep-alives are off
        b"",
    ],
    ids=[
        "no-separator",
        "unterminated",
        "crlf",
        "no-space",
        "event-field",
        "bare-json",
        "extra-blank",
        "comment",
        "empty",
    ],
)
def test_malformed_framing_is_refused(body):
    with pytest.raises(SSEError):
        parse_events(body)


def test_comments_allowed_only_when_asked():
    assert parse_events(b": ping\n\ndata: [DONE]\n\n", allow_comments=True) == ["[DONE]"]


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"a":1}\n\n',  # no [DONE]
        b'data: [DONE]\n\ndata: {"a":1}\n\n',  # [DONE] not last
        b'data: {"a":1}\n\ndata: [DONE]\n\ndata: [DONE]\n\n',  # [DONE] twice
        b"data: {not json}\n\ndata: [DONE]\n\n",
        b"data: [1,2]\n\ndata: [DONE]\n\n",  # not an object
        b'data: {"a":NaN}\n\ndata: [DONE]\n\n',
        b'data: {"a":1,"a":2}\n\ndata: [DONE]\n\n',
        b'data: {"a":"\xff"}\n\ndata: [DONE]\n\n',  # invalid UTF-8
    ],
    ids=[
        "no-done",
        "done-early",
        "done-twice",
        "not-json",
        "not-object",
        "nan",
        "duplicate-key",
        "bad-utf8",
    ],
)
def test_bad_payloads_are_refused(body):
    with pytest.raises(SSEError):
        parse_chat_stream(body)


def test_loads_keeps_key_order():
    assert list(loads('{"z":1,"a":2,"m":3}')) == ["z", "a", "m"]
