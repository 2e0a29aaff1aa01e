"""Running one front-end process's app under uvicorn: drain on the first signal, exit code out.

Used by `python -m server` with one process, and by each worker with several
(`server.workers`), which passes the listening socket the supervisor bound for it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.base.settings import ServerSettings, Settings
from server.process.connections import GuardedHttpToolsProtocol
from server.serving.lifecycle import Runtime

log = logging.getLogger("callgate")


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on the first SIGTERM/SIGINT and exits 0, and stops on a second.

    A worker ignores SIGINT: Ctrl-C on a terminal reaches every process of the group, and the
    supervisor turns it into one SIGTERM per worker, so each drains once."""

    runtime: Runtime
    ignore_sigint = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT and self.ignore_sigint:
            return
        if self.runtime.state in ("draining", "dead", "stopped") or self.should_exit:
            self.should_exit = True
            self.force_exit = self.force_exit or sig == signal.SIGINT
            return
        log.info("received %s", signal.Signals(sig).name)
        asyncio.get_event_loop().call_soon_threadsafe(self.runtime.begin_drain)


def listen_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets on one address. Several (one per worker) share it with `SO_REUSEPORT`:
    the kernel hashes each new connection to one of them, and a worker that dies takes its
    socket with it. One alone does not, so a second server on the same port fails to start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if count > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]  # port 0: the others join the one the first was given
        sock.listen(2048)
        socks.append(sock)
    return socks


def listeners(server: ServerSettings, count: int) -> list[list[socket.socket]]:
    """For each of `count` processes: its socket on the main port, and on the admin port
    (`server.admin_port`, metrics) when there is one."""
    main = listen_sockets(server.host, server.port, count)
    if server.admin_port is None:
        return [[sock] for sock in main]
    admin = listen_sockets(server.host, server.admin_port, count)
    return [[m, a] for m, a in zip(main, admin, strict=True)]


def serve(app: FastAPI, settings: Settings, socks: list[socket.socket] | None = None) -> int:
    """Serve `app` until it stops; the runtime's exit code (0, or why it had to stop).

    `socks`: the sockets a worker was given; without them, one process binds its own (uvicorn
    binds the main port itself unless there is an admin port too)."""
    from sse_starlette.sse import AppStatus

    # We drain ourselves; sse-starlette would otherwise end every stream on the first SIGTERM.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    GuardedHttpToolsProtocol.configure(settings.server)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=GuardedHttpToolsProtocol,
        loop="uvloop",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.server.keep_alive_s,
    )
    server = DrainingServer(config)
    runtime: Runtime = app.state.runtime
    server.runtime = runtime
    server.ignore_sigint = socks is not None
    if socks is None and settings.server.admin_port is not None:
        socks = listeners(settings.server, 1)[0]

    def stop() -> None:
        server.should_exit = True

    runtime.request_exit = stop
    server.run(sockets=socks)
    log.info("exiting with code %d", runtime.exit_code)
    return runtime.exit_code
