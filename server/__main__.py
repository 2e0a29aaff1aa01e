"""`python -m server --config FILE [--model M] [--host H] [--port P] [--log-format F]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from types import FrameType

import uvicorn

from server.app import create_app
from server.http import LimitedHttpToolsProtocol
from server.lifecycle import Runtime
from server.logs import setup_logging
from server.settings import Settings, load_settings

log = logging.getLogger("callgate")


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on the first SIGTERM/SIGINT and exits 0, and stops on a second."""

    runtime: Runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.runtime.state in ("draining", "dead", "stopped") or self.should_exit:
            self.should_exit = True
            self.force_exit = self.force_exit or sig == signal.SIGINT
            return
        log.info("received %s", signal.Signals(sig).name)
        asyncio.get_event_loop().call_soon_threadsafe(self.runtime.begin_drain)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    p.add_argument("--config", help="YAML settings file (configs/cpu.yaml, configs/gpu.yaml)")
    p.add_argument("--model", help="checkpoint dir or hub id (overrides engine.model)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--log-format", choices=["json", "text"], help="overrides server.log_format")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if args.model:
        settings.engine.model = args.model
    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    if args.log_format:
        settings.server.log_format = args.log_format
    return settings


def auth_codes(settings: Settings) -> list[str]:
    codes = [c.get_secret_value() for c in settings.auth.codes]
    if not codes:
        code = "sk-" + secrets.token_urlsafe(24)
        # Shown once, on the terminal that started the server; never logged.
        sys.stderr.write(f"\ncallgate: no auth code configured; this run accepts: {code}\n\n")
        codes = [code]
    return codes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    setup_logging(settings.server.log_format, settings.server.log_level)
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from sse_starlette.sse import AppStatus

    # We drain ourselves; sse-starlette would otherwise end every stream on the first SIGTERM.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    app = create_app(settings, auth_codes(settings))
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

    def stop() -> None:
        server.should_exit = True

    runtime.request_exit = stop
    server.run()
    log.info("exiting with code %d", runtime.exit_code)
    return runtime.exit_code


if __name__ == "__main__":
    sys.exit(main())
