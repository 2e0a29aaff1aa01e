"""Shared tools of the reliability tests (issue 4): metrics probes, raw sockets, stream drivers.

The reliability tests prove behaviour under abuse, so they need more control over the wire than
`Api` gives: requests that stop halfway, sockets that never read, dozens of streams dropped at a
chosen moment. Everything here talks to a real server process (a `ServerHandle` from
`tests/conftest.py`); nothing here starts or stops servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from tests.conftest import Api, ServerHandle
from tests.sse import ChatStream, parse_chat_stream

# tests/tiny.yaml: what the `qwen-plus` alias says when a turn cannot end normally.
FALLBACK = "Sorry, could you say that again?"
# Issue 4: engine requests of a caller who is gone are aborted, visible within two seconds on a
# quiet machine. The tests wait for the idle engine itself, for up to IDLE_WITHIN_S, so that a
# loaded machine cannot fail them; that is still well below how long an engine request that was
# not aborted keeps vLLM busy (the turns these tests drop ask for thousands of tokens, and the
# tests also check the outcome counters: `client_gone`, never a turn that ran to its length).
IDLE_WITHIN_S = 10.0
# How long the engine's own processes may take to go once the server has exited.
ENGINE_EXIT_S = 30.0
# Words the tiny tokenizer knows, so prompt sizes are predictable (a few tokens a sentence).
STORY = "Tell me a very long story about the weather in Hangzhou. "
# Markers of internal detail that must never reach a caller in an error body.
LEAK_MARKERS = ("Traceback", 'File "', ".py", "site-packages", "pydantic", "Exception")


# -- metrics -------------------------------------------------------------------------------


_SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample in a Prometheus text exposition.

    A line-level parser on purpose: `prometheus_client.parser` walks the text a character at a
    time, and vLLM's exposition is large; under load that starved the tests' event loop.
    """
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            yield name, dict(_LABEL.findall(labels or "")), float(value)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for sample, found, value in samples(text)
        if sample == name and all(found.get(k) == v for k, v in labels.items())
    )


def scrape(handle: ServerHandle) -> str:
    response = httpx.get(handle.metrics_url, headers={"Authorization": handle.auth}, timeout=30.0)
    assert response.status_code == 200, response.text
    return response.text


async def scrape_async(handle: ServerHandle, client: httpx.AsyncClient) -> str:
    """`scrape` for code running on an event loop: no thread, so no fight for the GIL."""
    response = await client.get(handle.metrics_url, headers={"Authorization": handle.auth})
    assert response.status_code == 200, response.text
    return response.text


@dataclass(frozen=True)
class Load:
    """What the engine and the gateway are holding right now."""

    running: float  # vllm:num_requests_running
    waiting: float  # vllm:num_requests_waiting
    in_flight: float  # callgate_requests_in_flight

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0 and self.in_flight == 0


def _load(text: str) -> Load:
    return Load(
        metric(text, "vllm:num_requests_running"),
        metric(text, "vllm:num_requests_waiting"),
        metric(text, "callgate_requests_in_flight"),
    )


def load(handle: ServerHandle) -> Load:
    return _load(scrape(handle))


async def load_async(handle: ServerHandle, client: httpx.AsyncClient) -> Load:
    return _load(await scrape_async(handle, client))


def outcomes(handle: ServerHandle) -> dict[str, float]:
    """`callgate_requests_total` by outcome, summed over models."""
    counts: dict[str, float] = {}
    for name, labels, value in samples(scrape(handle)):
        if name == "callgate_requests_total":
            counts[labels["outcome"]] = counts.get(labels["outcome"], 0.0) + value
    return counts


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Outcomes that changed between two `outcomes()` readings."""
    keys = set(after) | set(before)
    changed = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in changed.items() if v}


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def wait_idle(handle: ServerHandle, within_s: float = IDLE_WITHIN_S) -> Load:
    """The load once idle, or the last reading after `within_s` (assert `.idle` on it)."""
    last = load(handle)
    deadline = time.monotonic() + within_s
    while not last.idle and time.monotonic() < deadline:
        time.sleep(0.1)
        last = load(handle)
    return last


# -- requests ------------------------------------------------------------------------------


def long_body(max_tokens: int, *, prompt_repeats: int = 1, **extra: Any) -> dict[str, Any]:
    """A streaming turn that keeps the engine busy: `ignore_eos` makes its length certain."""
    return {
        "model": "qwen-plus",
        "stream": True,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": STORY * prompt_repeats}],
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


def assert_error_shape(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """Both error shapes, a request id, and nothing internal in the text."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:500])
    body = Api.assert_error(response, response.status_code)
    for marker in LEAK_MARKERS:
        assert marker not in response.text, f"{marker!r} leaked into {response.text[:500]!r}"
    return body


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


# -- many streams at once --------------------------------------------------------------------


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
) -> int:
    """Open a stream, read until `content_chunks` chunks came, then hang up.

    With `hold`, the caller keeps reading until the event is set, then hangs up. Returns the
    status code; a stream that ends before the drop point is a test error.
    """
    async with client.stream(
        "POST", f"{handle.url}/", json=body, headers={"Authorization": handle.auth}
    ) as response:
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
    return 200  # leaving the block closes the connection with the body unread


# -- processes -----------------------------------------------------------------------------


def descendants(handle: ServerHandle) -> list[psutil.Process]:
    return psutil.Process(handle.proc.pid).children(recursive=True)


def engine_core(handle: ServerHandle) -> psutil.Process:
    """vLLM's engine core: the server's child process named `VLLM::EngineCore`."""
    cores = [p for p in descendants(handle) if "EngineCore" in _name(p)]
    assert len(cores) == 1, [(p.pid, _name(p)) for p in descendants(handle)]
    return cores[0]


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name() + " " + " ".join(proc.cmdline()[:1])
    except psutil.Error:
        return ""


def log_since(handle: ServerHandle, offset: int) -> str:
    """The server log from byte `offset` on (take `len(handle.log_text())` as a mark)."""
    return handle.log_text()[offset:]
