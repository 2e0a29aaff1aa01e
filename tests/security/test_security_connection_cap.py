"""The connection cap (issue 12, finding 2): one process holds at most `server.max_connections`
open connections; the next closes the connection idle longest (issue 14, item 3) or, with none
idle, is answered 503 and closed at once, and the server recovers as soon as connections close.
On the guarded server (GUARDED: 24 connections, head deadline 2 s).
"""

from __future__ import annotations

import contextlib
import select
import socket

import httpx
import pytest

from tests.conftest import GUARDED
from tests.wire import address, read_response, wait_for

pytestmark = pytest.mark.slow  # the guarded server

EXTRA = 8


def test_connections_past_the_cap_get_503_and_the_server_recovers(guarded_server, chat_body):
    cap = GUARDED["max_connections"]
    socks = [socket.create_connection(address(guarded_server)) for _ in range(cap + EXTRA)]
    try:
        # Wait for the refusals themselves; the server answers the ones past the cap at once,
        # long before the head deadline would close anybody for slowness.
        def answered() -> list[socket.socket]:
            return select.select(socks, [], [], 0)[0]

        wait_for(lambda: len(answered()) >= EXTRA - 1, timeout_s=GUARDED["head_timeout_s"])
        refused = [sock.recv(65536) for sock in answered()]
        assert len(refused) >= EXTRA - 1, f"{len(refused)} of {cap + EXTRA} refused"
        assert len(socks) - len(refused) <= cap
        for answer in refused:
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]
            assert b"too many connections" in answer
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def served() -> bool:
        with httpx.Client(timeout=30.0) as client:
            r = client.post(
                guarded_server.url + "/",
                json=chat_body(max_tokens=2),
                headers={"Authorization": guarded_server.auth},
            )
        return r.status_code == 200

    assert wait_for(served, timeout_s=10.0, interval_s=0.5)


def test_at_the_cap_a_new_connection_closes_the_one_idle_longest(guarded_server):
    # Idle kept-alive connections (a request answered, none since) hold no slot against a new
    # caller: the one idle longest is closed for it. Fresh connections are not idle.
    cap = GUARDED["max_connections"]
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    socks: list[socket.socket] = []
    try:
        for _ in range(cap):  # the first answered is the one idle longest
            socks.append(socket.create_connection(address(guarded_server)))
            socks[-1].sendall(get)
            assert read_response(socks[-1])[0] == 200
        with socket.create_connection(address(guarded_server)) as newcomer:
            newcomer.sendall(get)
            assert read_response(newcomer)[0] == 200
        socks[0].settimeout(10.0)
        assert socks[0].recv(65536) == b""  # closed, its answer delivered first
        socks[1].sendall(get)  # the others were left alone
        assert read_response(socks[1])[0] == 200
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
