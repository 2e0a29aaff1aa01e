"""Connection-level limits, below the app: what a stranger without a code can make a socket cost.

uvicorn's httptools protocol with four bounds it does not have:

- the request head (request line and headers) is counted in raw bytes as they arrive, so a
  header line that never ends cannot grow the parser's buffer past `max_head_bytes` (plus one
  read); past it the connection gets `431` and is closed;
- the whole head must arrive within `head_timeout_s` of its first byte (or of the connection's
  opening): a slow sender (slowloris) gets `408` and is closed;
- a body must arrive within `body_timeout_s` of the head; past it the connection is closed and
  the app sees the client gone;
- one process holds at most `max_connections` open connections; the next gets `503` and is
  closed at once, before any parsing.

These answers are plain text from the protocol: the app never sees such a request.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("callgate")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Set the class attributes once per process (`server.process.serve`) from the settings."""

    max_head_bytes = 16_384
    head_timeout_s = 10.0
    body_timeout_s = 30.0
    max_connections = 2048

    _in_head = True
    _head_bytes = 0
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("refused a connection: %d open", len(self.connections) - 1)
            self._refuse(503, "too many connections")
            return
        self._arm(self.head_timeout_s, 408, "request head not received in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: what is still buffered is not parsed
        if self._in_head:
            if self._timer is None:  # the first byte of a request on a kept-alive connection
                self._arm(self.head_timeout_s, 408, "request head not received in time")
            self._head_bytes += len(data)
        super().data_received(data)
        too_large = self._in_head and self._head_bytes > self.max_head_bytes
        if too_large and not self.transport.is_closing():
            self._refuse(431, "request head too large")

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._arm(self.body_timeout_s, None, "request body not received in time")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        super().on_message_complete()

    def _arm(self, delay: float, status: int | None, why: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._expire, status, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, status: int | None, why: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        log.info("closed a connection: %s", why)
        if status is None:  # mid-body: the app is reading it and learns the client is gone
            self.transport.close()
        else:
            self._refuse(status, why)

    def _refuse(self, status: int, why: str) -> None:
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
