"""The app and its runtime on a scripted engine (`engine_factory`): what real processes reach
only by chance or by being killed. Requests go through the ASGI app in process; the tokenizer is
the tiny checkpoint's.

Covered: 503 + Retry-After while the engine loads; the engine's own refusals (sampling values,
queue full) as the first response; the default admission limit; an engine error mid-stream;
`stream: false` hang-up aborts the engine; a stall turns `/ready` 503; an engine death exits 3.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from server.app.responses import Completion
from server.base.exits import EXIT_ENGINE_DEAD
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.engine.api import Engine
from server.serving.calls import CallClass
from server.serving.lifecycle import Runtime
from server.wire.schemas import ChatRequest, parse_request
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, serve_settings

AUTH = "test-code-0123456789"
HEADERS = {"Authorization": AUTH}
BODY = {"messages": [{"role": "user", "content": "Is my table booked?"}]}
# A turn of a call in progress (an earlier user turn): admitted past the new-call level.
CONTINUING = {"messages": [{"role": "user", "content": "Hello?"}, *BODY["messages"]]}
Factory = Callable[[Settings, Adapters], Awaitable[Engine]]


def _settings(model: Path, **sections: Any) -> Settings:
    fallback = {"fallback_text": FALLBACK, "system_prompt": "You are a phone agent."}
    return Settings(
        engine={"model": str(model)},
        models={"default": "qwen-plus", "aliases": {"qwen-plus": fallback}},
        **sections,
    )


@asynccontextmanager
async def _serve(
    settings: Settings, factory: Factory, ready: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with serve_settings(settings, factory, AUTH, ready) as served:
        yield served


async def _until(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    """Poll a condition (no timing assertion: the bound only keeps a broken test finite)."""
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def _counted(runtime: Runtime, outcome: str) -> float:
    return runtime.metrics.requests.labels("qwen-plus", outcome)._value.get()


def test_chat_while_the_engine_loads_is_503_with_retry_after(tiny_model_dir: Path) -> None:
    loaded = asyncio.Event()
    engine = ScriptedEngine(["Hi."])

    async def slow(settings: Settings, adapters: Adapters) -> Engine:
        await loaded.wait()
        return engine

    async def scenario() -> None:
        settings = _settings(tiny_model_dir, limits={"retry_after_s": 3})
        async with _serve(settings, slow, ready=False) as (client, runtime):
            response = await client.post("/", json=BODY, headers=HEADERS)
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "3"
            assert response.json()["code"] == "engine_unavailable"
            assert (await client.get("/ready")).status_code == 503
            assert _counted(runtime, "error") == 1
            loaded.set()
            await _until(lambda: runtime.state == "ready")
            assert (await client.post("/", json=BODY, headers=HEADERS)).status_code == 200

    asyncio.run(scenario())


def test_sampling_values_the_engine_refuses_are_a_400_before_the_response(
    tiny_model_dir: Path,
) -> None:
    engine = ScriptedEngine(["never"], refuse="min_tokens must be at most max_tokens")

    async def scenario() -> None:
        async with _serve(_settings(tiny_model_dir), engine.factory) as (client, runtime):
            response = await client.post("/", json={**BODY, "stream": True}, headers=HEADERS)
            assert response.status_code == 400
            assert "min_tokens" in response.json()["message"]
            assert engine.requests == []  # never started
            assert _counted(runtime, "invalid") == 1
            assert runtime.switchboard is not None
            assert runtime.switchboard.admission.in_flight == 0

    asyncio.run(scenario())


def test_the_engines_queue_full_is_a_503_with_retry_after(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(["never"], overloaded=True)

    async def scenario() -> None:
        async with _serve(_settings(tiny_model_dir), engine.factory) as (client, runtime):
            response = await client.post("/", json=BODY, headers=HEADERS)
            assert response.status_code == 503
            assert response.json()["code"] == "server_overloaded"
            assert "Retry-After" in response.headers
            assert _counted(runtime, "rejected") == 1
            assert runtime.switchboard is not None
            assert runtime.switchboard.admission.in_flight == 0

    asyncio.run(scenario())


def test_the_default_admission_limit_is_the_engines_max_num_seqs(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=[STALL], max_num_seqs=3)

    async def scenario() -> None:
        async with _serve(_settings(tiny_model_dir), engine.factory) as (client, runtime):
            board = runtime.switchboard
            assert board is not None and board.max_in_flight == 3
            assert board.new_call_max_in_flight == 2  # half of 3, rounded
            calls = [
                asyncio.create_task(client.post("/", json=CONTINUING, headers=HEADERS))
                for _ in range(3)
            ]
            await _until(lambda: len(engine.requests) == 3)
            response = await client.post("/", json=BODY, headers=HEADERS)
            assert response.status_code == 503
            assert response.json()["code"] == "server_overloaded"
            for turn in list(board.open_turns):
                turn.interrupt("draining")
            for done in await asyncio.gather(*calls):
                assert done.json()["choices"][0]["message"]["content"] == FALLBACK

    asyncio.run(scenario())


def test_an_engine_error_mid_stream_ends_the_stream_audibly(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=["Let me", " check", RuntimeError("engine core died")])

    async def scenario() -> None:
        async with _serve(_settings(tiny_model_dir), engine.factory) as (client, runtime):
            body = {**BODY, "stream": True}
            response = await client.post("/", json=body, headers=HEADERS)
            assert response.status_code == 200
            lines = [json.loads(x[6:]) for x in response.text.split("\n\n") if x[6:7] == "{"]
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in lines if c["choices"]
            )
            assert text == "Let me check " + FALLBACK
            assert response.text.endswith("data: [DONE]\n\n")
            assert _counted(runtime, "error") == 1

    asyncio.run(scenario())


def test_stream_false_hang_up_aborts_the_engine(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=["Thinking", STALL])

    async def scenario() -> None:
        async with _serve(_settings(tiny_model_dir), engine.factory) as (_, runtime):
            board = runtime.switchboard
            assert board is not None
            board.admit()
            request = board.plan_now(_request(), "hangup", time.perf_counter(), CallClass.FIRST)
            turn = board.start(request)
            gone = asyncio.Event()

            async def receive() -> dict[str, Any]:
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                raise AssertionError("nothing is sent to a caller who left")

            call = asyncio.create_task(Completion(turn, headers={})({}, receive, send))
            await _until(lambda: bool(engine.requests))
            gone.set()
            await call
            assert engine.aborts == [turn.plan.engine_id]
            assert turn.record.outcome == "client_gone"
            assert _counted(runtime, "client_gone") == 1
            assert board.admission.in_flight == 0

    asyncio.run(scenario())


def test_a_stalled_engine_turns_ready_503(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=[STALL], hung=True)
    settings = _settings(tiny_model_dir, readiness={"stall_s": 0.3, "hung_exit_after": 0})

    async def scenario() -> None:
        async with _serve(settings, engine.factory) as (client, runtime):
            assert (await client.get("/ready")).json() == {"status": "ready"}
            call = asyncio.create_task(client.post("/", json=BODY, headers=HEADERS))
            await _until(lambda: runtime.readiness() == (False, "stalled"))
            response = await client.get("/ready")
            assert (response.status_code, response.json()) == (503, {"status": "stalled"})
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)

    asyncio.run(scenario())


def test_an_engine_death_exits_3(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(["Hi."])

    async def scenario() -> Runtime:
        async with _serve(_settings(tiny_model_dir), engine.factory) as (client, runtime):
            exits: list[int] = []
            runtime.request_exit = lambda: exits.append(runtime.exit_code)
            engine.core_lost()
            await _until(lambda: bool(exits))
            assert (await client.get("/health")).status_code == 503
            response = await client.post("/", json=BODY, headers=HEADERS)
            assert response.status_code == 503
            return runtime

    runtime = asyncio.run(scenario())
    assert runtime.exit_code == EXIT_ENGINE_DEAD == 3


def _request() -> ChatRequest:
    return parse_request(json.dumps(BODY).encode())
