"""A header line that never ends (issue 12, finding 1; the class of vLLM's CVE-2025-48956).

httptools hands a header to uvicorn only once its line is complete, so a limit counted per
header never sees one that keeps growing. The guard (`server/connections.py`) counts the raw
bytes of the request head as they arrive and closes the connection past
`server.max_header_bytes`. On the shared server (16 KiB head limit), no auth code needed.
"""

from __future__ import annotations

import socket
import time

import psutil
import pytest

from tests.reliability_helpers import address, read_response, well_formed

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
