"""Requests to a real server with more control over the wire than `Api` gives: turns that keep
the engine busy, raw request heads, streams read in steps, dropped at a chosen moment or held
open, and the checks every reply gets (a well-formed stream, both error shapes).

Everything here talks to a running server (a `ServerHandle` from `tests/conftest.py`); nothing
here starts or stops one. A hang-up can be recorded (`hung_up`: request id -> when the client
let go) so that `tests/wire/logs.py` can say how soon the server aborted the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from tests.wire.sse import ChatStream, parse_chat_stream

if TYPE_CHECKING:
    from tests.conftest import ServerHandle

# tests/tiny.yaml: what the `qwen-plus` alias says when a turn cannot end normally.
FALLBACK = "Sorry, could you say that again?"
# Words the tiny tokenizer knows, so prompt sizes are predictable (a few tokens a sentence).
STORY = "Tell me a very long story about the weather in Hangzhou. "
# Markers of internal detail that must never reach a caller in an error body.
LEAK_MARKERS = ("Traceback", 'File "', ".py", "site-packages", "pydantic", "Exception")


# -- bodies and replies ----------------------------------------------------------------------


# What a call in progress has said before its turn: an earlier user turn makes a turn
# `continuing` (server/serving/calls.py), admitted past the new-call level.
EARLIER = [
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hello, how can I help?"},
]


def long_body(
    max_tokens: int, *, prompt_repeats: int = 1, continuing: bool = False, **extra: Any
) -> dict[str, Any]:
    """A streaming turn that keeps the engine busy: `ignore_eos` makes its length certain. The
    first turn of a call, or with `continuing` one of a call in progress."""
    turn = {"role": "user", "content": STORY * prompt_repeats}
    return {
        "model": "qwen-plus",
        "stream": True,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "messages": [*EARLIER, turn] if continuing else [turn],
        **extra,
    }


def well_formed(body: bytes) -> ChatStream:
    """Parse a finished stream strictly and check the turn's frame: role first, reason last."""
    stream = parse_chat_stream(body)
    chunks = stream.choice_chunks
    assert chunks, "no chunk with a choice"
    assert chunks[0]["choices"][0]["delta"] == {"content": "", "role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len({c["id"] for c in stream.chunks}) == 1
    return stream


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert `status` and the error body with both shapes (OpenAI and DashScope)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    assert body["code"] not in (None, "")
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_error_shape(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """Both error shapes, a request id, and nothing internal in the text."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    body = assert_error(response, response.status_code)
    for marker in LEAK_MARKERS:
        assert marker not in response.text, f"{marker!r} leaked into {response.text[:500]!r}"
    return body


def new_request_id() -> str:
    """A request id the server honours (sent as `X-Request-Id`), to find the turn in its log."""
    return uuid.uuid4().hex


# -- raw sockets ---------------------------------------------------------------------------


def address(handle: ServerHandle) -> tuple[str, int]:
    url = urlsplit(handle.url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def request_head(
    handle: ServerHandle,
    *,
    auth: str | None = None,
    length: int | None = None,
    chunked: bool = False,
    extra: list[tuple[str, str]] | None = None,
    path: str = "/",
) -> bytes:
    """The bytes of a POST request head, written by hand so nothing is added or checked."""
    host, port = address(handle)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Status code and everything the server sent until it closed or went quiet.

    For short error responses only: reads until the head is in and the Content-Length of body
    has arrived, the peer closes, or `timeout_s` passes with nothing new.
    """
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not piece:
            break
        data += piece
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = _content_length(head)
            if length is not None and len(rest) >= length:
                break
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), f"no HTTP response: {data[:200]!r}"
    return int(status_line.split()[1]), data


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def response_json(raw: bytes) -> Any:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def hang_up_raw(
    handle: ServerHandle,
    body: bytes,
    send_body_bytes: int | None = None,
    hung_up: dict[str, float] | None = None,
) -> None:
    """Send a request (the first `send_body_bytes` of its body) and close the socket before a
    byte of the answer is read."""
    rid = new_request_id()
    head = request_head(handle, auth=handle.auth, length=len(body), extra=[("X-Request-Id", rid)])
    with socket.create_connection(address(handle)) as sock:
        sock.sendall(head)
        sock.sendall(body[:send_body_bytes])
        if hung_up is not None:
            hung_up[rid] = time.time()


# -- streams -------------------------------------------------------------------------------


class RawStream:
    """A streamed response read as raw bytes, in steps, without losing the SSE framing.

    httpx cannot restart an iteration, so one byte iterator is kept: `until()` reads up to a
    chosen point of the turn, `rest()` continues from there to the end. Bytes go into a
    `bytearray` and events are scanned once each: a long turn is megabytes, and re-copying or
    re-parsing it per piece would starve the test process.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._buffer = bytearray()
        self._scanned = 0
        self._events = 0
        self._content_chunks = 0
        self._bytes = response.aiter_bytes()

    @property
    def data(self) -> bytes:
        return bytes(self._buffer)

    def _scan(self) -> None:
        """Count the complete events that arrived since the last scan."""
        while (end := self._buffer.find(b"\n\n", self._scanned)) >= 0:
            event = bytes(self._buffer[self._scanned : end])
            self._scanned = end + 2
            self._events += 1
            if event.startswith(b"data: {"):
                choices = json.loads(event[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    self._content_chunks += 1

    async def until(self, content_chunks: int) -> None:
        """Read until the role chunk (0) or `content_chunks` chunks with text have arrived."""
        while True:
            self._scan()
            if content_chunks == 0 and self._events:
                return
            if content_chunks and self._content_chunks >= content_chunks:
                return
            try:
                self._buffer += await self._bytes.__anext__()
                await asyncio.sleep(0)  # see `rest`
            except StopAsyncIteration:
                raise AssertionError(f"the turn ended early: {self.data[-300:]!r}") from None

    async def rest(self) -> bytes:
        async for piece in self._bytes:
            self._buffer += piece
            # When the socket always has data, reading never suspends: yield, or a fast stream
            # starves every other task of this loop (seen: 12 s without a timer firing).
            await asyncio.sleep(0)
        return self.data


async def open_streams(
    client: httpx.AsyncClient, handle: ServerHandle, body: dict[str, Any], count: int, chunks: int
) -> list[RawStream]:
    """`count` streams of `body`, opened one after the other, each read until `chunks`
    content chunks came (all are then running in the engine)."""
    streams = []
    for _ in range(count):
        request = client.build_request(
            "POST", f"{handle.url}/", json=body, headers={"Authorization": handle.auth}
        )
        streams.append(RawStream(await client.send(request, stream=True)))
    for stream in streams:
        await stream.until(chunks)
    return streams


async def read_to_end(streams: list[RawStream]) -> list[bytes]:
    """Every stream's whole body, then its connection closed."""
    bodies = [await stream.rest() for stream in streams]
    for stream in streams:
        await stream.response.aclose()
    return bodies


def async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(60.0, connect=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=0),
    )


async def drop_after(
    client: httpx.AsyncClient,
    handle: ServerHandle,
    body: dict[str, Any],
    content_chunks: int,
    hold: asyncio.Event | None = None,
    hung_up: dict[str, float] | None = None,
) -> int:
    """Open a stream, read until `content_chunks` chunks came (0: the role chunk), then hang up.

    With `hold`, the caller keeps reading until the event is set, then hangs up. With `hung_up`,
    the moment of the hang-up is recorded under the request's id. Returns the status code; a
    stream that ends before the drop point is a test error.
    """
    rid = new_request_id()
    headers = {"Authorization": handle.auth, "X-Request-Id": rid}
    async with client.stream("POST", f"{handle.url}/", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code
        # Keep the reader referenced: a collected byte iterator closes the connection.
        stream = RawStream(response)
        await stream.until(content_chunks)
        if hold is not None:
            # A held caller keeps listening (and discards what it hears) until released.
            listening = asyncio.create_task(stream.rest())
            await hold.wait()
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
        del stream
        if hung_up is not None:
            hung_up[rid] = time.time()
    return 200  # leaving the block closes the connection with the body unread
