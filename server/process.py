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

from server.http import LimitedHttpToolsProtocol
from server.lifecycle import Runtime
from server.settings import Settings

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


def serve(app: FastAPI, settings: Settings, sock: socket.socket | None = None) -> int:
    """Serve `app` until it stops; the runtime's exit code (0, or why it had to stop)."""
    from sse_starlette.sse import AppStatus

    # We drain ourselves; sse-starlette would otherwise end every stream on the first SIGTERM.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    LimitedHttpToolsProtocol.max_head_bytes = settings.server.max_header_bytes
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=LimitedHttpToolsProtocol,
        loop="uvloop",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,
    )
    server = DrainingServer(config)
    runtime: Runtime = app.state.runtime
    server.runtime = runtime
    server.ignore_sigint = sock is not None

    def stop() -> None:
        server.should_exit = True

    runtime.request_exit = stop
    server.run(sockets=None if sock is None else [sock])
    log.info("exiting with code %d", runtime.exit_code)
    return runtime.exit_code
