"""Authorization: the console's raw code and OpenAI's `Bearer <code>`; everything else is 401."""

from __future__ import annotations

import pytest

from tests.wire import parse_chat_stream


@pytest.mark.parametrize("form", ["raw", "bearer"])
def test_auth_code_accepted_raw_and_as_bearer(api, chat_body, form):
    response = api.post(chat_body(max_tokens=1), auth=form)
    assert response.status_code == 200, response.text
    assert parse_chat_stream(response.content).finish_reason == "length"


def test_missing_authorization_is_401_json(api, chat_body):
    response = api.post(chat_body(max_tokens=1), auth=None)
    body = api.assert_error(response, 401)
    assert body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "header",
    [
        "wrong-code",
        "Bearer wrong-code",
        "Basic dGVzdC1jb2RlOg==",  # base64 of "test-code:": another scheme is not a code
        "Token test-code",
        "",
    ],
    ids=["wrong-raw", "wrong-bearer", "basic-scheme", "other-scheme", "empty"],
)
def test_bad_authorization_is_401_json(api, chat_body, header):
    response = api.post(chat_body(max_tokens=1), auth=None, headers={"Authorization": header})
    api.assert_error(response, 401)


def test_unauthorized_request_does_not_stream(api, chat_body):
    response = api.post(chat_body(max_tokens=1), auth=None, headers={"Authorization": "nope"})
    assert response.status_code == 401
    assert not response.headers["content-type"].startswith("text/event-stream")
