"""Connection-level limits, below the app: what a stranger without a code can make a socket cost.

uvicorn's httptools protocol with the bounds it does not have:

- the request head (request line and headers) is counted in raw bytes before the parser sees
  them, up to its end when the end is in the read: past `max_head_bytes` the connection gets
  `431` and is closed, whether the head trickles in over many reads (a header line that never
  ends) or arrives whole, with its body, in one. A head that begins inside a read, after another
  request (pipelining), is measured by the parser as it finishes and refused the same way, before
  the app sees it;
- the whole head must arrive within `head_timeout_s` of its first byte (or of the connection's
  opening): a slow sender (slowloris) gets `408` and is closed;
- a body must arrive within `body_timeout_s` of the head; past it the connection is closed and
  the app sees the client gone;
- pipelining: while a request waits behind the one being answered, nothing more is read (uvicorn
  resumes reading whenever the app awaits `receive()`, and every read can queue more requests), so
  the deadlines above stop counting; a read that brings more than `max_pipelined` waiting requests
  (one 256 kB read holds thousands of `GET`s) aborts the connection;
- a peer that stops reading: when the answer backs up above the transport's high-water mark for
  `write_timeout_s`, the connection is aborted, and so is a closing one that has not finished
  sending by then (`close()` waits for a buffer the peer may never drain);
- one process holds at most `max_connections` open connections: past it, the connection idle
  longest between requests (kept alive, uvicorn's `timeout_keep_alive`) is closed for the new one;
  with none idle, the new one gets `503` and is closed at once, before any parsing.

These answers are plain text from the protocol: the app never sees such a request. While an
earlier request on the connection is being answered, an answer written now would land inside
that one, so the connection is aborted instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sized
from typing import Any
from weakref import WeakKeyDictionary

from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from server.base.settings import ServerSettings

log = logging.getLogger("callgate")

END_OF_HEAD = b"\r\n\r\n"

# Per server, its idle (kept-alive) connections, longest idle first: uvicorn's `connections` set
# has no order and is uvicorn's own.
_IDLE: WeakKeyDictionary[ServerState, dict[GuardedHttpToolsProtocol, None]] = WeakKeyDictionary()


class _GatedFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while a request waits in the
    pipeline: only the newest request can still need bytes, and it is not running."""

    def __init__(self, transport: asyncio.Transport, pipeline: Sized) -> None:
        super().__init__(transport)
        self._pipeline = pipeline

    def resume_reading(self) -> None:
        if not self._pipeline:
            super().resume_reading()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Set the class attributes once per process (`configure`) from the settings."""

    max_head_bytes = 16_384
    head_timeout_s = 10.0
    body_timeout_s = 30.0
    write_timeout_s = 10.0
    max_pipelined = 16
    max_connections = 2048

    # Where the parser is: "idle" between requests, "head" from a request's first byte (or the
    # connection's opening), "body" from the end of its head to the end of the request.
    _phase = "head"
    _head_bytes = 0  # raw bytes of the current head counted before parsing
    _head_tail = b""  # its last three bytes, for an end of head split between reads
    _parsed_head = 0  # the current head as the parser reported it
    _timer: asyncio.TimerHandle | None = None  # the head or body deadline
    _write_timer: asyncio.TimerHandle | None = None
    _running: RequestResponseCycle | None = None  # the request whose app runs (uvicorn's
    # `cycle` is the newest parsed, which may be waiting in the pipeline behind it)

    @classmethod
    def configure(cls, limits: ServerSettings) -> None:
        """The limits of `server.*` for every connection this process accepts."""
        cls.max_head_bytes, cls.max_connections = limits.max_header_bytes, limits.max_connections
        cls.head_timeout_s, cls.body_timeout_s = limits.head_timeout_s, limits.body_timeout_s
        cls.write_timeout_s, cls.max_pipelined = limits.write_timeout_s, limits.max_pipelined

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any], **kw: Any
    ) -> None:
        super().__init__(config, server_state, app_state, **kw)
        self._idle = _IDLE.setdefault(server_state, {})

    # The transport's calls.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _GatedFlow(transport, self.pipeline)
        if len(self.connections) > self.max_connections and not self._close_longest_idle():
            log.warning("refused a connection: %d open, none idle", len(self.connections) - 1)
            self._refuse(503, "too many connections")
            return
        self._deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.pop(self, None)
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._requests_gone()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._idle.pop(self, None)
        if self.transport.is_closing():
            return  # refused or timed out: what is still buffered is not parsed
        if self._phase == "idle":  # the first byte of a request on a kept-alive connection
            self._phase = "head"
            self._deadline()
        if self._phase == "head":
            self._head_bytes += self._count_head(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, "request head too large")  # before the parser sees it
                return
        super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm_write_deadline()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None and not self.transport.is_closing():
            self._write_timer.cancel()
            self._write_timer = None

    # The parser's calls (a refused connection ignores the rest of the read being parsed).

    def on_message_begin(self) -> None:
        self._parsed_head = 0
        if self._phase != "head":  # a request that begins inside a read, after another one
            self._phase = "head"
            self._deadline()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed_head += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_head += len(name) + len(value) + 4  # ": " and the line's end
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return
        self._phase, self._head_bytes, self._head_tail = "body", 0, b""
        if self._parsed_head > self.max_head_bytes:
            self._refuse(431, "request head too large")
            return
        if self._answering() and len(self.pipeline) >= self.max_pipelined:
            self._abort(f"more than {self.max_pipelined} requests pipelined")
            return
        super().on_headers_complete()  # queues it when an earlier request is being answered
        self._deadline()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = "idle"
        self._deadline()
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        if self.transport.is_closing():  # a `connection: close` answer: it must finish in time
            self._arm_write_deadline()
            return
        if self.timeout_keep_alive_task is not None:
            self._idle[self] = None
        if not self.pipeline:  # uvicorn resumed reading before it took the last one out
            self.flow.resume_reading()
            if self._timer is None:  # the waiting request's deadline starts now
                self._deadline()

    def timeout_keep_alive_handler(self) -> None:
        self._idle.pop(self, None)
        super().timeout_keep_alive_handler()
        self._arm_write_deadline()

    def send_400_response(self, msg: str) -> None:
        super().send_400_response(msg)
        self._arm_write_deadline()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # Deadlines and endings.

    def _count_head(self, data: bytes) -> int:
        """How many bytes of `data` belong to the current head: up to its end (the blank line)
        when that is in `data`, else all of them."""
        junction = (self._head_tail + data[:3]).find(END_OF_HEAD)
        if junction >= 0:
            return junction + len(END_OF_HEAD) - len(self._head_tail)
        end = data.find(END_OF_HEAD)
        if end >= 0:
            return end + len(END_OF_HEAD)
        self._head_tail = (self._head_tail + data[-3:])[-3:]
        return len(data)

    def _answering(self) -> bool:
        """Whether an earlier request on this connection has not had its whole answer yet."""
        return self.cycle is not None and not self.cycle.response_complete

    def _deadline(self) -> None:
        """The deadline of the phase the connection is in: none between requests (uvicorn's
        keep-alive timer) or while requests wait in the pipeline (nothing is being read)."""
        self._disarm()
        if self.pipeline or self._phase == "idle":
            return
        if self._phase == "head":
            self._arm(self.head_timeout_s, 408, "request head not received in time")
        else:
            self._arm(self.body_timeout_s, None, "request body not received in time")

    def _arm(self, delay: float, status: int | None, why: str) -> None:
        self._timer = self.loop.call_later(delay, self._expire, status, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, status: int | None, why: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if status is None:  # mid-body: the app is reading it and learns the client is gone
            self._abort(why)
        else:
            log.info("closed a connection: %s", why)
            self._refuse(status, why)

    def _arm_write_deadline(self) -> None:
        """Abort the connection if writing stays stuck (or closing unfinished) this long."""
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self._write_stalled)

    def _write_stalled(self) -> None:
        self._write_timer = None
        self._abort(f"the peer read nothing for {self.write_timeout_s:g} s")

    def _close_longest_idle(self) -> bool:
        """Close the connection idle longest, for a new one; False when none is idle."""
        while self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            if not oldest.transport.is_closing():
                log.info("closed the connection idle longest for a new one")
                oldest._unset_keepalive_if_required()
                oldest.transport.close()
                oldest._arm_write_deadline()
                return True
        return False

    def _abort(self, why: str) -> None:
        log.info("aborted a connection: %s", why)
        self._disarm()
        self.transport.abort()
        self._requests_gone()

    def _requests_gone(self) -> None:
        """Tell the running request (and the newest) that the client is gone, before they write:
        the transport is closed now, uvicorn's `connection_lost` comes a loop turn later, and
        it marks only the newest request, not the one running ahead of it."""
        for cycle in (self._running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def _refuse(self, status: int, why: str) -> None:
        if self._answering():
            self._abort(why)
            return
        self._disarm()
        body = why.encode("ascii")
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()
        self._arm_write_deadline()
