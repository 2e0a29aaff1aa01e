"""A scripted engine (`server.engine.api.Engine`): planned deltas, errors and stalls, for unit tests
of `Turn`, `Switchboard` and `Runtime`. The real engine is the main tier; this reaches what a
random-weight model or a real process cannot be made to do on demand (an error mid-stream, a
stall, vLLM's own refusals).

A script is a list of steps: a string is one delta of one token; a `Delta` is sent as it is; an
exception is raised where it stands; `STALL` waits, producing nothing, until the request is
aborted (then the stream ends, as vLLM's does) or forever with `hung=True`. A script that runs
out ends the stream (with no finish reason: an end the turn must still make audible).

`ScriptedEngine(...).factory` is the `engine_factory` form for `Runtime` and `create_app`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from server.base.errors import InvalidRequest, Overloaded
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.engine.api import Delta, Engine, EngineParams
from server.serving.metrics import Metrics
from server.serving.progress import Progress
from server.serving.turn import Turn, TurnPlan
from server.wire.chunks import ChunkRenderer
from server.wire.schemas import parse_request

FALLBACK = "Sorry, could you say that again?"
STALL = object()
Step = str | Delta | BaseException | object


class ScriptedEngine:
    """Plays `script` for every request. `pieces`/`reason`/`fail` is the short form: the pieces
    as one-token deltas, the last one finished with `reason` (or raising, with `fail`)."""

    def __init__(
        self,
        pieces: Sequence[str] = (),
        reason: str | None = "stop",
        fail: bool = False,
        *,
        script: Sequence[Step] | None = None,
        hung: bool = False,
        refuse: str | None = None,
        overloaded: bool = False,
        max_model_len: int = 2048,
        max_num_seqs: int = 8,
        data_parallel_size: int = 1,
    ) -> None:
        self.script = list(script) if script is not None else self._short(pieces, reason, fail)
        self.hung = hung  # a stalled request ignores its abort
        self.refuse = refuse  # `params` refuses every request with this message (vLLM's 400)
        self.overloaded = overloaded  # `check_admission` refuses (vLLM's queue full)
        self.adapters = Adapters()
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.data_parallel_size = data_parallel_size
        self.generation_defaults: dict[str, Any] = {}
        self.version = "scripted"
        self.alive_flag = True
        self.aborts: list[str] = []
        self.requests: list[tuple[str, EngineParams, str | None]] = []
        self.priorities: dict[str, int] = {}  # request id: the priority it was queued at
        self.ranks: dict[str, int | None] = {}  # request id: the engine core it was sent to
        self.warmed: list[tuple[list[int], str | None, int]] = []  # `warm` calls
        self.stopped = False
        self._running: dict[str, asyncio.Event] = {}

    @staticmethod
    def _short(pieces: Sequence[str], reason: str | None, fail: bool) -> list[Step]:
        steps: list[Step] = [
            Delta(p, 1, n == len(pieces) - 1, reason if n == len(pieces) - 1 else None, 0)
            for n, p in enumerate(pieces)
        ]
        if fail and steps:
            steps[-1] = RuntimeError("engine died")
        return steps

    # -- the Engine protocol -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.alive_flag

    @property
    def aborted(self) -> bool:
        return bool(self.aborts)

    def params(self, sampling: dict[str, Any]) -> EngineParams:
        if self.refuse is not None:
            raise InvalidRequest(self.refuse)
        return EngineParams(dict(sampling))

    def check_admission(self) -> None:
        if self.overloaded:
            raise Overloaded("engine queue is full: scripted")

    async def generate(
        self,
        request_id: str,
        token_ids: list[int],
        params: EngineParams,
        adapter: str | None = None,
        priority: int = 0,
        rank: int | None = None,
    ) -> AsyncGenerator[Delta, None]:
        self.requests.append((request_id, params, adapter))
        self.priorities[request_id] = priority
        self.ranks[request_id] = rank
        aborted = self._running[request_id] = asyncio.Event()
        try:
            for step in self.script:
                if aborted.is_set():
                    break
                if step is STALL:
                    if self.hung:
                        await asyncio.Event().wait()
                    await aborted.wait()
                    break
                if isinstance(step, BaseException):
                    raise step
                if isinstance(step, str):
                    step = Delta(step, 1, False, None, 0)
                assert isinstance(step, Delta)
                yield Delta(
                    step.text,
                    step.new_tokens,
                    step.finished,
                    step.finish_reason,
                    step.cached_tokens,
                )
                await asyncio.sleep(0)  # a step of the engine: other tasks run between deltas
            if aborted.is_set():
                yield Delta("", 0, True, "abort", 0)
        finally:
            del self._running[request_id]

    async def warm(self, token_ids: list[int], adapter: str | None, priority: int) -> int:
        """Start-up warming: recorded in `warmed`, no script played."""
        self.warmed.append((list(token_ids), adapter, priority))
        return 0

    async def abort(self, request_id: str) -> None:
        self.aborts.append(request_id)
        if request_id in self._running:
            self._running[request_id].set()

    def num_unfinished(self) -> int:
        return len(self._running)

    def core_lost(self) -> None:
        self.alive_flag = False

    def stop(self) -> None:
        self.stopped = True

    # -- for tests -----------------------------------------------------------------------------

    async def factory(self, settings: Settings, adapters: Adapters) -> Engine:
        """`engine_factory` for `Runtime`/`create_app`: this engine, whatever the settings."""
        self.adapters = adapters
        return self


def scripted_turn(engine: ScriptedEngine, **fields: Any) -> Turn:
    """A turn on `engine`; `fields` override TurnPlan's (thinking, speech_filter, turn_s, ...)."""
    plan_fields: dict[str, Any] = {
        "request_id": "r",
        "engine_id": "r.1",
        "alias": "qwen-plus",
        "request": parse_request(b'{"messages": [{"role": "user", "content": "hi"}]}'),
        "token_ids": [1, 2, 3],
        "sampling": EngineParams({}),
        "renderer": ChunkRenderer("qwen-plus", "chatcmpl-r", 1),
        "fallback_text": FALLBACK,
        "first_token_s": 30.0,
        "turn_s": 120.0,
        "arrival": time.perf_counter(),
        **fields,
    }
    plan = TurnPlan(**plan_fields)
    metrics = Metrics(CollectorRegistry())
    metrics.declare([plan.alias])
    return Turn(plan, engine, metrics, lambda turn: None, Progress())


async def texts_of(turn: Turn) -> list[str]:
    return [text async for text in turn.texts()]


@asynccontextmanager
async def serve_in_process(
    app: Any, ready: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """`app` (from `create_app`) with its lifespan running, an HTTP client on it and its
    runtime; with `ready`, once the engine has loaded."""
    runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        while ready and runtime.state == "loading":
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://callgate") as client:
            yield client, runtime


@asynccontextmanager
async def serve_settings(
    settings: Settings, engine_factory: Any, code: str, ready: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """`create_app(settings)` on `engine_factory` (a `ScriptedEngine(...).factory`), with no
    LoRA adapters and the one auth `code`, served in-process (`serve_in_process`)."""
    from server.app.routes import create_app

    app = create_app(settings, [code], engine_factory=engine_factory, adapters=Adapters())
    async with serve_in_process(app, ready) as served:
        yield served
