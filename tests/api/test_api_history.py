"""Dialog shapes real calls produce: long histories, an opening line only, silence."""

from __future__ import annotations

MAX_MODEL_LEN = 2048  # tests/tiny.yaml
TURN_TEXT = (
    "Could you tell me your address and the best time to call you back? "
    "The weather in Hangzhou is sunny today, with a light wind from the east. "
)


def _long_history(turns: int) -> list[dict[str, str]]:
    messages = []
    for i in range(turns):
        role = "assistant" if i % 2 == 0 else "user"
        messages.append({"role": role, "content": f"Turn {i}. {TURN_TEXT}"})
    messages.append({"role": "user", "content": "What is this about?"})
    return messages


def test_history_longer_than_the_context_is_truncated_and_answered(api, chat_body):
    # About 40 tokens a turn: 200 turns is roughly four times max_model_len.
    body = chat_body(
        messages=_long_history(200), max_tokens=8, stream_options={"include_usage": True}
    )
    _, stream = api.stream(body)
    assert stream.finish_reason == "length"
    assert stream.content
    usage = stream.usage
    assert usage is not None
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= MAX_MODEL_LEN


def test_truncated_history_non_streamed_is_answered(api, chat_body):
    _, completion = api.complete(chat_body(messages=_long_history(200), max_tokens=4))
    assert completion["usage"]["prompt_tokens"] <= MAX_MODEL_LEN


def test_single_message_longer_than_the_context_is_400(api, chat_body):
    huge = TURN_TEXT * 200  # roughly 5000 tokens in one message
    response = api.post(chat_body(messages=[{"role": "user", "content": huge}]))
    body = api.assert_error(response, 400)
    assert body["error"]["type"] == "invalid_request_error"


def test_history_ending_with_the_opening_line_is_answered(api, chat_body):
    # The model is triggered when the call connects: only the bot's opening line so far.
    messages = [{"role": "assistant", "content": "Hello, this is a test opening message."}]
    _, stream = api.stream(chat_body(messages=messages))
    assert stream.finish_reason == "length"
    assert stream.content


def test_empty_user_turn_is_answered(api, chat_body):
    # Silence on the line: the caller's recognised speech is empty.
    messages = [
        {"role": "assistant", "content": "Hello, this is a test opening message."},
        {"role": "user", "content": ""},
    ]
    _, stream = api.stream(chat_body(messages=messages))
    assert stream.finish_reason == "length"
    assert stream.content


def test_system_message_is_accepted(api, chat_body):
    messages = [
        {"role": "system", "content": "You are a phone agent."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Hi."},
    ]
    _, stream = api.stream(chat_body(messages=messages))
    assert stream.finish_reason == "length"
