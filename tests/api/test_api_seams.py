"""The seams on the real engine: what only vLLM refuses is a 400 before the response; a
`stream: false` caller who hangs up frees the engine; the turn's log line in text format, with
`dropped_turns` and (with `server.log_content`) what was said. The last two on the shared narrow
server (`tests/conftest.py` NARROW: text logs with content, a 2000-token cap).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import NARROW, Api, ServerHandle
from tests.wire import ABORT_WITHIN_S, long_body, wait_for, wait_idle

LONG = NARROW["sampling"]["max_tokens"]  # 2000 with ignore_eos: seconds of work on CPU


@pytest.mark.compat  # vLLM's own refusal of the sampling values
def test_sampling_values_only_vllm_refuses_are_a_400_before_the_response(
    api: Api, chat_body: Callable[..., Any]
) -> None:
    # Our schema takes both values; vLLM's SamplingParams refuses min_tokens above max_tokens.
    response = api.post(chat_body(min_tokens=20, max_tokens=5, stream=True))
    body = api.assert_error(response, 400)
    assert "min_tokens" in body["message"]
    assert body["code"] == "invalid_parameter"


@pytest.fixture(scope="module")
def texty(narrow_server: ServerHandle) -> ServerHandle:
    return narrow_server


def _turn_line(handle: ServerHandle, request_id: str) -> str:
    lines: list[str] = []

    def found() -> bool:
        lines[:] = [
            x for x in handle.log_text().splitlines() if f"request_id={request_id} " in x + " "
        ]
        return bool(lines)

    assert wait_for(found, timeout_s=10.0), handle.log_text()[-2000:]
    (line,) = lines
    return line


@pytest.mark.slow
def test_text_log_line_says_dropped_turns_and_with_log_content_the_messages(
    texty: ServerHandle, make_api: Callable[[ServerHandle], Api]
) -> None:
    api = make_api(texty)
    # Far more history than the 2048-token context holds: the oldest turns are dropped.
    history = [
        {"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n}: " + "word " * 120}
        for n in range(40)
    ]
    body = {
        "model": "qwen-plus",
        "max_tokens": 4,
        "messages": [*history, {"role": "user", "content": "the latest question"}],
        "biz_params": {"city": "Hangzhou"},
    }
    api.complete(body, headers={"X-Request-Id": "seams-log-1"})
    line = _turn_line(texty, "seams-log-1")
    assert not line.lstrip().startswith("{")  # text, not JSON
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    assert int(fields["dropped_turns"]) > 0
    assert fields["outcome"] == "length"
    assert "the latest question" in line  # log_content: the messages are in the line
    assert "Hangzhou" in line


@pytest.mark.slow
def test_stream_false_hang_up_aborts_the_engine_request(
    texty: ServerHandle, make_api: Callable[[ServerHandle], Api]
) -> None:
    assert wait_idle(texty).idle
    body = {**long_body(LONG), "stream": False}
    headers = {**make_api(texty).headers(), "X-Request-Id": "seams-hangup-1"}
    # The client gives up before the reply (seconds of generation) and closes its connection.
    timeout = httpx.Timeout(10.0, read=1.0)
    with httpx.Client(timeout=timeout) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{texty.url}/", json=body, headers=headers)
        hung_up = time.time()
    line = _turn_line(texty, "seams-hangup-1")
    assert "outcome=client_gone" in line
    # Logged once the turn was cancelled and its abort sent (local time, to the millisecond).
    logged = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert logged - hung_up < ABORT_WITHIN_S, f"aborted {logged - hung_up:.3f} s after the hang-up"
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    assert int(fields["output_tokens"]) < LONG  # aborted, not finished
    idle = wait_idle(texty, within_s=30.0)
    assert idle.idle, idle
