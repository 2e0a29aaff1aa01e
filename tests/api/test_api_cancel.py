"""A caller who barges in or hangs up drops the connection: the engine must stop at once.

These tests run on the shared busy server (`busy_slot`, `tests/conftest.py` BUSY: a 16,000-token
cap, context 16384), where a turn of 4000 tokens lasts several seconds. Each test drops the
connection early, then checks that the server aborted the turn within two seconds of the hang-up
(measured on the server's clock, `tests/wire/logs.py`), that the engine then has nothing running
or waiting, and that the turn ended as `client_gone` rather than running on to `length` (vLLM's
`vllm:request_success_total{finished_reason="length"}` must not move). Metrics are not scraped
while the turn streams: on a two-core machine the engine's threads can delay a scrape by
seconds, long enough for the turn to finish on its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.conftest import ServerHandle
from tests.wire import (
    address,
    assert_aborted_in_time,
    async_client,
    drop_after,
    load,
    metric,
    new_request_id,
    request_head,
    scrape,
    wait_for,
    wait_idle,
)

pytestmark = [pytest.mark.slow, pytest.mark.compat]  # hang-ups abort vLLM's requests

LONG_TURN_TOKENS = 4000


@pytest.fixture(scope="module")
def long_server(busy_slot):
    return busy_slot.get()


def _finished(handle: ServerHandle) -> dict[str, float]:
    """Turns that ended as hang-ups (ours) and engine requests that ran to `length` (vLLM's)."""
    text = scrape(handle)
    return {
        "client_gone": metric(text, "callgate_requests_total", outcome="client_gone"),
        "length": metric(text, "vllm:request_success_total", finished_reason="length"),
    }


def _long_body() -> dict:
    return {
        "model": "qwen-plus",
        "stream": True,
        "max_tokens": LONG_TURN_TOKENS,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
    }


def _stream_then_drop(handle: ServerHandle, content_chunks: int) -> dict[str, float]:
    """Read `content_chunks` non-empty content chunks, then close the connection unread;
    returns the hang-up (request id -> when)."""
    hung_up: dict[str, float] = {}

    async def drop() -> int:
        async with async_client() as client:
            return await drop_after(client, handle, _long_body(), content_chunks, hung_up=hung_up)

    assert asyncio.run(drop()) == 200
    return hung_up


def _assert_aborted(
    handle: ServerHandle, before: dict[str, float], hung_up: dict[str, float]
) -> None:
    """The turn was aborted within two seconds of the hang-up, the engine and the in-flight
    gauge are idle after it, one more turn ended as `client_gone`, and no engine request ran
    to `max_tokens`."""
    assert_aborted_in_time(handle, hung_up)
    idle = wait_idle(handle)
    assert idle.idle, idle
    wait_for(lambda: _finished(handle)["client_gone"] > before["client_gone"], 10.0, 0.1)
    after = _finished(handle)
    assert after["client_gone"] == before["client_gone"] + 1, "the hang-up was not counted"
    assert after["length"] == before["length"], "the engine request ran to max_tokens"


def test_disconnect_mid_stream_aborts_the_engine_request(long_server):
    assert wait_idle(long_server, within_s=30.0).idle
    before = _finished(long_server)
    hung_up = _stream_then_drop(long_server, content_chunks=3)
    _assert_aborted(long_server, before, hung_up)


def test_disconnect_before_the_first_byte_aborts_the_engine_request(long_server):
    assert wait_idle(long_server, within_s=30.0).idle
    before = _finished(long_server)
    body = json.dumps(_long_body()).encode()
    rid = new_request_id()
    head = request_head(
        long_server, auth=long_server.auth, length=len(body), extra=[("X-Request-Id", rid)]
    )
    with socket.create_connection(address(long_server)) as sock:
        sock.sendall(head + body)
        # The caller hangs up before reading, once the server has admitted the turn.
        assert wait_for(lambda: load(long_server).in_flight > 0, 30.0, 0.1), "never admitted"
        hung_up = {rid: time.time()}
    _assert_aborted(long_server, before, hung_up)


def test_in_flight_gauge_returns_to_zero_after_disconnect(long_server):
    assert wait_idle(long_server, within_s=30.0).idle
    before = _finished(long_server)
    hung_up = _stream_then_drop(long_server, content_chunks=1)
    _assert_aborted(long_server, before, hung_up)
