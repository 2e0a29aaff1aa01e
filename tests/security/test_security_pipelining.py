"""Pipelining, peers that stop reading, and idle kept-alive connections (issue 14, items 2 and 3):
what one connection can make the server hold, for a stranger without a code.

uvicorn queues every pipelined request of a read and reads again whenever the app awaits
`receive()`; a peer that never reads its answers kept its connection, and everything queued
behind it, forever. The guard (`server/process/connections.py`) reads nothing while requests wait,
aborts a connection that pipelines more than `server.max_pipelined` or stops reading for
`server.write_timeout_s`, and closes idle connections after `server.keep_alive_s`. On the shared
narrow server, whose `LIMITS` (`tests/conftest.py` NARROW) are short: `server` and the guarded
server keep the default keep-alive.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import NARROW, ServerHandle
from tests.wire import address, read_response

LIMITS = NARROW["server"]  # keep_alive_s 3, write_timeout_s 2, max_pipelined 8
MARGIN_S = 5.0
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"  # open without a code on this config
FLOOD_BYTES = 10 * 1024 * 1024

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def piped(narrow_server: ServerHandle) -> ServerHandle:
    return narrow_server


def _rss(handle: ServerHandle) -> int:
    return psutil.Process(handle.proc.pid).memory_info().rss


def _still_serves(handle: ServerHandle) -> None:
    with socket.create_connection(address(handle)) as sock:
        sock.sendall(GET_HEALTH)
        assert read_response(sock)[0] == 200


def _send_until_cut(sock: socket.socket, pieces: Iterator[bytes], give_up_s: float) -> bool:
    """Send `pieces` without ever reading, until the server cuts the connection (True), they run
    out, or `give_up_s` passes."""
    sock.setblocking(False)
    deadline = time.monotonic() + give_up_s
    for piece in pieces:
        view = memoryview(piece)
        while view:
            if time.monotonic() > deadline:
                return False
            select.select([], [sock], [], 0.5)
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                continue
            except OSError:  # EPIPE / ECONNRESET: the server aborted the connection
                return True
    return False


def test_megabytes_of_pipelined_requests_never_read_are_cut_off(piped):
    rss_before = _rss(piped)
    flood = GET_HEALTH * (65_536 // len(GET_HEALTH))
    started = time.monotonic()
    with socket.create_connection(address(piped)) as sock:
        pieces = (flood for _ in range(FLOOD_BYTES // len(flood)))
        cut = _send_until_cut(sock, pieces, give_up_s=30.0)
    assert cut, "the server read 10 MB of pipelined requests from a peer that never read"
    assert time.monotonic() - started < 10.0
    growth = _rss(piped) - rss_before
    assert growth < 32 * 1024 * 1024, f"server RSS grew by {growth} bytes"
    _still_serves(piped)


def test_a_peer_that_stops_reading_is_aborted_at_the_write_timeout(piped):
    # Two requests at a time, paced so that no read brings more than `max_pipelined`: what cuts
    # this connection is the answers backing up, not the pipelining limit.
    rss_before = _rss(piped)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: it fills
        sock.connect(address(piped))

        def paced() -> Iterator[bytes]:
            while True:
                yield GET_METRICS * 2
                time.sleep(0.05)

        cut = _send_until_cut(sock, paced(), give_up_s=60.0)
    assert cut, "a peer that read nothing for 60 s kept its connection"
    growth = _rss(piped) - rss_before
    assert growth < 32 * 1024 * 1024, f"server RSS grew by {growth} bytes"
    _still_serves(piped)


def _read_answers(sock: socket.socket, count: int) -> list[int]:
    """The statuses of the next `count` answers (each with a Content-Length) on `sock`."""
    sock.settimeout(10.0)
    data, statuses = b"", []
    while len(statuses) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        lengths = [
            line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
        ]
        if sep and lengths and len(rest) >= int(lengths[0].split(b":")[1]):
            statuses.append(int(head.split()[1]))
            data = rest[int(lengths[0].split(b":")[1]) :]
            continue
        piece = sock.recv(65536)
        assert piece, f"closed after {len(statuses)} of {count} answers"
        data += piece
    return statuses


def test_pipelined_requests_within_the_limit_are_all_answered(piped):
    count = LIMITS["max_pipelined"]
    with socket.create_connection(address(piped)) as sock:
        sock.sendall(GET_HEALTH * count)
        assert _read_answers(sock, count) == [200] * count
        sock.sendall(GET_HEALTH)  # and the connection reads again
        assert _read_answers(sock, 1) == [200]


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_s(piped):
    with socket.create_connection(address(piped)) as sock:
        sock.sendall(GET_HEALTH)
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        sock.settimeout(LIMITS["keep_alive_s"] + MARGIN_S)
        try:
            closed = sock.recv(65536) == b""
        except TimeoutError:
            closed = False
        took = time.monotonic() - started
    assert closed, f"an idle connection was still open after {took:.1f} s"
    assert took < LIMITS["keep_alive_s"] + MARGIN_S
