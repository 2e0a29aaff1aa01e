"""The connection guard (`server/process/connections.py`) driven as uvicorn drives it, through a
recording transport: what reaches the app, what is read and when the connection ends, for
inputs a socket test cannot time exactly (one read that holds a whole head, thousands of
pipelined requests in one read). `tests/security/test_security_pipelining.py` checks the same
on the real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from server.base.settings import ServerSettings
from server.process.connections import GuardedHttpToolsProtocol

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


class Transport(asyncio.Transport):
    """Records what the protocol writes and asks of the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.Protocol | None = None
        self.written = bytearray()
        self.closing = self.aborted = False
        self.reading = True
        self.late_writes = 0  # after an abort (uvloop raises then: the handle is closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.late_writes += self.aborted
        self.written += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True
        if self.protocol is not None:  # as a socket's transport does, a loop turn later
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Guard(GuardedHttpToolsProtocol):
    """Short limits, so that the tests take milliseconds."""

    max_pipelined = 4
    write_timeout_s = 0.05
    max_connections = 2


class App:
    """An ASGI app that records the paths it serves; `gate` holds every answer until set."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        self.paths.append(scope["path"])
        await receive()  # as a body read or a disconnect listener would: uvicorn resumes reading
        await self.gate.wait()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


_OPEN: list[Guard] = []


def connect(app: App, state: ServerState) -> tuple[Guard, Transport]:
    config = Config(app=app, lifespan="off", log_config=None, proxy_headers=False)
    protocol = Guard(config=config, server_state=state, app_state={})
    transport = Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    _OPEN.append(protocol)
    return protocol, transport


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run `scenario`, then end its connections, so that no app task waits on a write forever."""

    async def main() -> None:
        try:
            await scenario()
        finally:
            while _OPEN:
                _OPEN.pop().connection_lost(None)
            await settle()

    asyncio.run(main())


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_whole_head_past_the_limit_in_one_read_is_refused_before_the_app() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport = connect(app, ServerState())
        big = b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 65_536 + b"\r\n"
        protocol.data_received(big + b"Content-Length: 2\r\n\r\n{}")
        await settle()
        assert transport.written.startswith(b"HTTP/1.1 431 "), bytes(transport.written[:40])
        assert transport.closing and app.paths == []

    run(scenario)


def test_a_big_head_pipelined_behind_another_request_never_reaches_the_app() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport = connect(app, ServerState())
        big = b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 65_536 + b"\r\n\r\n"
        protocol.data_received(GET + big)
        await settle()
        assert "/big" not in app.paths
        assert transport.aborted  # the 431 could not be put after the first answer

    run(scenario)


def test_thousands_of_requests_pipelined_in_one_read_abort_the_connection() -> None:
    async def scenario() -> None:
        app = App()
        protocol, transport = connect(app, ServerState())
        protocol.data_received(GET * 7_756)
        await settle()
        assert transport.aborted
        assert len(protocol.pipeline) <= Guard.max_pipelined
        assert len(app.paths) <= 1
        assert transport.late_writes == 0  # the request already started learned it first

    run(scenario)


def test_nothing_is_read_while_requests_wait_and_every_one_is_answered() -> None:
    async def scenario() -> None:
        app = App()
        app.gate.clear()
        protocol, transport = connect(app, ServerState())
        protocol.data_received(GET * 3)
        await settle()  # the first request runs and awaits receive(): uvicorn resumes reading
        assert not transport.reading and len(protocol.pipeline) == 2
        app.gate.set()
        await settle()
        assert transport.written.count(b"HTTP/1.1 200 ") == 3
        assert transport.reading and not transport.closing

    run(scenario)


def test_a_peer_that_stops_reading_is_aborted_after_the_write_timeout() -> None:
    async def scenario() -> None:
        app = App()
        app.gate.clear()
        protocol, transport = connect(app, ServerState())
        protocol.data_received(GET * 2)  # one answering, one waiting behind it
        await settle()
        protocol.pause_writing()
        protocol.resume_writing()
        await asyncio.sleep(Guard.write_timeout_s * 3)
        assert not transport.closing  # it read again in time
        protocol.pause_writing()
        await asyncio.sleep(Guard.write_timeout_s * 3)
        assert transport.aborted
        app.gate.set()
        await settle()
        assert transport.late_writes == 0

    run(scenario)


def test_a_closing_connection_that_cannot_finish_sending_is_aborted() -> None:
    async def scenario() -> None:
        protocol, transport = connect(App(), ServerState())
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await settle()
        assert transport.closing and not transport.aborted
        await asyncio.sleep(Guard.write_timeout_s * 3)
        assert transport.aborted  # the socket never reported the answer sent

    run(scenario)


def test_at_the_cap_the_connection_idle_longest_is_closed_for_the_new_one() -> None:
    async def scenario() -> None:
        app, state = App(), ServerState()
        first, first_t = connect(app, state)
        second, second_t = connect(app, state)
        for protocol in (first, second):  # answered, kept alive: idle, first the longest
            protocol.data_received(GET)
            await settle()
        third, third_t = connect(app, state)
        assert first_t.closing and not first_t.aborted and not second_t.closing
        assert not third_t.written  # not refused
        first.connection_lost(None)
        app.gate.clear()  # from now on, requests stay in progress
        third.data_received(GET)
        await settle()
        fourth, fourth_t = connect(app, state)
        assert second_t.closing and not third_t.closing and not fourth_t.written
        second.connection_lost(None)
        fourth.data_received(GET)
        await settle()
        _, fifth_t = connect(app, state)  # none idle: refused
        assert fifth_t.written.startswith(b"HTTP/1.1 503 ") and fifth_t.closing
        assert not third_t.closing and not fourth_t.closing

    run(scenario)


def test_idle_connections_are_kept_30_s_at_most_by_default() -> None:
    # uvicorn's 75 s let about 25 requests a second hold every slot of a process's cap.
    assert ServerSettings().keep_alive_s <= 30
