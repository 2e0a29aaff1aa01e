"""The Model Address is a full URL or a base URL: the same handler answers on three paths."""

from __future__ import annotations

import pytest

from tests.wire import parse_chat_stream


@pytest.mark.parametrize("path", ["/", "/chat/completions", "/v1/chat/completions"])
def test_chat_handler_answers_on_every_path(api, chat_body, path):
    response = api.post(chat_body(max_tokens=2), path=path)
    assert response.status_code == 200, response.text
    stream = parse_chat_stream(response.content)
    assert stream.finish_reason == "length"


@pytest.mark.parametrize("path", ["/", "/chat/completions", "/v1/chat/completions"])
def test_non_streamed_answer_on_every_path(api, chat_body, path):
    _, completion = api.complete(chat_body(max_tokens=2), path=path)
    assert completion["object"] == "chat.completion"


def test_unknown_path_is_404_json(api, chat_body):
    response = api.post(chat_body(max_tokens=2), path="/v2/chat/completions")
    api.assert_error(response, 404)
