"""Fields a phone turn cannot honour are refused by name, not silently ignored."""

from __future__ import annotations

import pytest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "hang_up",
            "description": "End the call.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]
IMAGE_MESSAGES = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    }
]


@pytest.mark.parametrize(
    "overrides",
    [
        {"n": 2},
        {"logprobs": True},
        {"logprobs": True, "top_logprobs": 2},
        {"tools": TOOLS},
        {"messages": IMAGE_MESSAGES},
    ],
    ids=["n", "logprobs", "top_logprobs", "tools", "image"],
)
def test_unsupported_feature_is_400_json(api, chat_body, overrides):
    response = api.post(chat_body(**overrides))
    body = api.assert_error(response, 400)
    assert body["error"]["type"] == "invalid_request_error"
