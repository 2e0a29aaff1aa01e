"""A header line that never ends (issue 12, finding 1; the class of vLLM's CVE-2025-48956).

httptools hands a header to uvicorn only once its line is complete, so a limit counted per
header never sees one that keeps growing. The guard (`server/process/connections.py`) counts the raw
bytes of the request head as they arrive and closes the connection past
`server.max_header_bytes`. On the shared server (16 KiB head limit), no auth code needed.

A head that arrives whole in one read, with its body, is counted before it is parsed (issue 14,
item 1: it used to complete inside the parser, reset the count, and reach the app).
"""

from __future__ import annotations

import contextlib
import socket
import time

import psutil
import pytest

from tests.wire import address, read_response, well_formed

FLOOD_BYTES = 32 * 1024 * 1024  # what the attacker tries to push into one header value
PIECE = b"a" * 65_536


def _flood(server, head: bytes) -> tuple[int, bool]:
    """Send `head`, then header-value bytes until FLOOD_BYTES or the server cuts us off.
    Returns (bytes sent, whether the server cut the connection)."""
    sent = 0
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10.0)
        try:
            sock.sendall(head)
            while sent < FLOOD_BYTES:
                sock.sendall(PIECE)
                sent += len(PIECE)
        except OSError:  # EPIPE / ECONNRESET: the server closed on us
            return sent, True
        return sent, False


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Flood: ",  # one header value that never ends
        b"POST /",  # a request line that never ends
        b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: y\r\n" * 2000,  # many short headers
    ],
    ids=["header-value", "request-line", "many-headers"],
)
def test_an_endless_head_is_cut_off_and_memory_stays_bounded(server, api, chat_body, head):
    proc = psutil.Process(server.proc.pid)
    rss_before = proc.memory_info().rss
    started = time.monotonic()
    sent, cut = _flood(server, head)
    assert cut, f"the server read all {sent} bytes of one request head"
    assert sent < FLOOD_BYTES // 2
    assert time.monotonic() - started < 10.0
    growth = proc.memory_info().rss - rss_before
    assert growth < 16 * 1024 * 1024, f"server RSS grew by {growth} bytes"
    # Nobody else noticed.
    _, stream = api.stream(chat_body(max_tokens=2))
    assert stream.finish_reason in ("stop", "length")


def test_the_answer_is_431_when_the_head_stops_just_past_the_limit(server):
    with socket.create_connection(address(server)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000)
        status, raw = read_response(sock)
    assert status == 431
    assert b"connection: close" in raw.lower()


def test_a_head_just_under_the_limit_still_works(server, api, chat_body):
    filler = "f" * (16_384 - 2_000)  # the rest of the head is well under 2000 bytes
    response = api.post(chat_body(max_tokens=2), headers={"X-Filler": filler})
    assert response.status_code == 200, response.text
    well_formed(response.content)


def _big_head(path: str) -> bytes:
    # 20 KB: past the 16 KiB limit, and one loopback segment, so that one read holds it all.
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"b" * 20_000 + b"\r\n"


def test_a_whole_head_past_the_limit_sent_with_its_body_in_one_write_gets_431(server):
    with socket.create_connection(address(server)) as sock:
        sock.sendall(_big_head("/") + b"Content-Length: 2\r\n\r\n{}")
        status, raw = read_response(sock)
    assert status == 431, raw[:200]  # not 401: the app never saw it


def test_a_big_head_pipelined_behind_another_request_never_reaches_the_app(server):
    # The 431 cannot be put after the first answer, which is not written yet: the connection is
    # aborted instead. What matters is that no answer comes from the app for the big request.
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = b""
    with socket.create_connection(address(server)) as sock:
        sock.sendall(get + _big_head("/") + b"Content-Length: 2\r\n\r\n{}")
        sock.settimeout(10.0)
        with contextlib.suppress(ConnectionResetError):
            while piece := sock.recv(65536):
                answers += piece
    assert b" 401 " not in answers and answers.count(b"HTTP/1.1 ") <= 1, answers[:400]
