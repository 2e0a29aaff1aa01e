"""Error bodies say what went wrong without echoing what the caller sent (SECURITY.md): an
unknown path, a wrong method and JSON that does not parse each get a fixed message, so that a
response never carries the caller's bytes back (into a log viewer, a browser, a console) and a
long path does not make a long reply.
"""

from __future__ import annotations

import pytest

from tests.conftest import Api

MARK = "zq-caller-bytes-7f3a"


@pytest.mark.parametrize(
    "path",
    [
        f"/{MARK}",
        f"/v1/{MARK}/chat/completions",
        f"/v2/chat/completions?x={MARK}",
        "/" + "a" * 4000,
    ],
    ids=["word", "nested", "query", "long"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_404_does_not_echo_the_path(api: Api, path: str, method: str) -> None:
    response = api.client.request(method, api.handle.url + path, headers=api.headers())
    body = api.assert_error(response, 404)
    assert body["message"] == body["error"]["message"] == "no such route"
    assert MARK not in response.text and "aaaa" not in response.text
    assert len(response.content) < 512


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_a_405_does_not_echo_the_method_or_the_path(api: Api, method: str) -> None:
    response = api.client.request(method, api.handle.url + "/v1/chat/completions")
    body = api.assert_error(response, 405)
    assert body["message"] == "method not allowed on this route"
    assert method not in response.text and "completions" not in response.text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": "' + MARK.encode(), "request body is not valid JSON (line 1, column 11)"),
        (b'{"model": "qwen-plus",\n ' + MARK.encode() + b"}", "(line 2, column 2)"),
        (b'{"model": "qwen-plus"} ' + MARK.encode(), "(line 1, column 24)"),
        (b'{"n": 1' + b"7" * 5000 + b"}", "an integer over 4300 digits"),
        (b'{"temperature": NaN}', "NaN, Infinity"),
    ],
    ids=["unterminated", "bare-word", "trailing", "long-integer", "nan"],
)
def test_a_json_error_gives_the_position_not_the_decoders_text(
    api: Api, raw: bytes, message: str
) -> None:
    response = api.post(raw)
    body = api.assert_error(response, 400)
    assert body["message"].startswith("request body is not valid JSON (")
    assert message in body["message"]
    # Python's decoder says "Expecting ...", "Extra data", "(char 10)", "sys.set_int_max_...".
    for decoder_text in ("Expecting", "Extra data", "Unterminated", "char ", "sys.", MARK):
        assert decoder_text not in response.text, decoder_text
    assert "7777" not in response.text
