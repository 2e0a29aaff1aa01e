"""`python -m server --config FILE [--model M] [--host H] [--port P] [--workers N] ...`.

Serves one checkpoint on one port; with `--workers N` (or `server.workers`), N front-end
processes share one engine core (`server.workers`)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

import yaml

from server.base.exits import EXIT_LOAD_FAILED, EXIT_REFUSED
from server.base.logs import setup_logging
from server.base.settings import Settings, load_settings, settings_problem
from server.engine.adapters import AdapterError, Adapters
from server.engine.adapters import resolve as resolve_adapters
from server.engine.model_source import Unavailable, resolve
from server.wire.auth import code_problem, is_loopback

log = logging.getLogger("callgate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    p.add_argument("--config", help="YAML settings file (configs/cpu.yaml, configs/gpu.yaml)")
    p.add_argument("--model", help="checkpoint dir or hub id (overrides engine.model)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--workers", type=int, help="front-end processes (overrides server.workers)")
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
    if args.workers:
        settings.server.workers = args.workers
    if args.log_format:
        settings.server.log_format = args.log_format
    return settings


class Refused(Exception):
    """A setting the server will not start with; the message is the one line shown."""


def auth_codes(settings: Settings) -> list[str]:
    """The configured codes, each checked; with none, a generated one on loopback only (the
    caller shows it)."""
    codes = [c.get_secret_value() for c in settings.auth.codes]
    for i, code in enumerate(codes, 1):
        problem = code_problem(code)
        if problem:
            raise Refused(f"auth code {i} of {len(codes)} {problem}")
    if not codes:
        if not is_loopback(settings.server.host):
            raise Refused(
                f"no auth code configured and server.host {settings.server.host} is not "
                "loopback: set CALLGATE_AUTH_CODES (one generated per process would differ "
                "between replicas and land in the container log)"
            )
        codes = ["sk-" + secrets.token_urlsafe(24)]
    return codes


def adapters(settings: Settings) -> Adapters:
    """The aliases' LoRA adapters, each a local directory with a known rank (may download)."""
    try:
        return resolve_adapters(settings.models.aliases, settings.engine.extra)
    except AdapterError as e:
        raise Refused(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
    except (OSError, ValueError, yaml.YAMLError) as e:  # pydantic's ValidationError included
        sys.stderr.write(f"callgate: refusing to start: {settings_problem(e)}\n")
        return EXIT_REFUSED
    setup_logging(settings.server.log_format, settings.server.log_level)
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        codes = auth_codes(settings)
        loras = adapters(settings)
    except Refused as e:
        sys.stderr.write(f"callgate: refusing to start: {e}\n")
        return EXIT_REFUSED
    try:
        # An explicit --model is served or refused, never replaced by the embedded model.
        fallback = settings.engine.offline_fallback and not args.model
        source = resolve(settings.engine.model, offline_fallback=fallback)
    except Unavailable as e:
        sys.stderr.write(f"callgate: {e}\n")
        return EXIT_LOAD_FAILED
    if not settings.auth.codes:
        # Shown once, on the terminal that started the server; never logged.
        sys.stderr.write(f"\ncallgate: no auth code configured; this run accepts: {codes[0]}\n\n")
    settings.engine.model = source.model
    if source.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # cached, hub unreachable: no retries at load
    if source.embedded:
        log.warning("serving %s", source.why)
    else:
        log.info("serving %s", source.why)
    # Imported only now: the engine adapter loads vLLM, which is slow and talks on stderr, and
    # a refusal above should be quick and be the only line.
    if settings.server.workers > 1:
        from server.process.workers import supervise

        return supervise(settings, codes, loras)
    from server.app.routes import create_app
    from server.engine.vllm_adapter import start_engine
    from server.process.serve import serve

    app = create_app(settings, codes, engine_factory=start_engine, adapters=loras)
    return serve(app, settings)


if __name__ == "__main__":
    sys.exit(main())
