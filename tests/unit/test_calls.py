"""Calls first (issue 21): which turn is which, the per-call record, admission by kind, one open
turn per call. The kinds and the record are pure; admission and the supersede run the real app
in-process on the scripted engine (a stalled turn is what a real engine cannot hold on demand).
The real engine's side (vLLM's queue order, two workers) is in tests/reliability/."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.app.routes import create_app
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.serving.admission import SharedSlots
from server.serving.calls import (
    IDLE_S,
    PRIORITY_CONTINUING,
    PRIORITY_FIRST,
    CallClass,
    CallTable,
    classify,
    entries,
    user_turns,
)
from server.wire.schemas import parse_request
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, serve_in_process
from tests.wire import metric, parse_chat_stream

AUTH = "sk-calls"
HEADERS = {"Authorization": AUTH}


class M:
    def __init__(self, role: str, content: str = "x") -> None:
        self.role, self.content = role, content


def _roles(*roles: str) -> list[M]:
    return [M(r) for r in roles]


# -- which turn is which -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "kind"),
    [
        (("user",), CallClass.FIRST),
        (("assistant",), CallClass.FIRST),  # the call just connected: the opening line only
        (("assistant", "user"), CallClass.FIRST),  # the opening line, then the caller's first
        (("system", "assistant", "user"), CallClass.FIRST),
        (("user", "assistant", "user"), CallClass.CONTINUING),
        (("assistant", "user", "user"), CallClass.CONTINUING),  # two user turns in a row
        (("assistant", "user", "assistant"), CallClass.CONTINUING),  # ends on the bot's line
        (("assistant", "user", "assistant", "user", "assistant", "user"), CallClass.CONTINUING),
    ],
)
def test_the_dialog_says_whether_a_turn_continues_a_call(
    roles: tuple[str, ...], kind: CallClass
) -> None:
    assert classify(_roles(*roles)) is kind


def test_an_empty_user_turn_still_counts_and_the_session_does_not_matter() -> None:
    silence = [M("assistant"), M("user", ""), M("assistant"), M("user", "")]
    assert classify(silence) is CallClass.CONTINUING
    assert user_turns(silence) == 2


# -- the per-call record -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_calls_newer_turn_finds_the_open_one_and_only_its_own_close_clears_it() -> None:
    table = CallTable()
    assert table.open_turn("call-a", worker=0, number=1) is None
    previous = table.open_turn("call-a", worker=1, number=7)
    assert previous is not None and (previous.worker, previous.number) == (0, 1)
    table.close_turn("call-a", worker=0, number=1)  # the superseded turn ends: not the open one
    again = table.open_turn("call-a", worker=0, number=2)
    assert again is not None and (again.worker, again.number) == (1, 7)
    table.close_turn("call-a", worker=0, number=2)
    assert table.open_turn("call-a", worker=0, number=3) is None
    assert table.open_turn("call-b", worker=0, number=4) is None  # another call


def test_the_hang_up_is_claimed_once_and_the_engine_is_remembered() -> None:
    table = CallTable()
    assert table.engine_of("call-a") is None
    table.set_engine("call-a", 1)
    assert table.engine_of("call-a") == 1
    assert [table.claim_hangup("call-a") for _ in range(3)] == [True, False, False]
    assert table.claim_hangup("call-b") is True


def test_the_record_is_bounded_in_size_and_forgets_idle_calls_first() -> None:
    clock = Clock()
    table = CallTable(entries(16), clock=clock)
    for i in range(16 * 8):  # eight times its size: it never grows, the oldest go first
        clock.now += 1.0
        table.set_engine(f"call-{i}", i % 4)
    assert table.engine_of("call-127") == 127 % 4  # the newest are kept
    assert sum(table.engine_of(f"call-{i}") is not None for i in range(128)) <= 16
    # An idle call's entry is free again after IDLE_S; a recent call's stays.
    clock.now += IDLE_S + 1
    table.set_engine("recent", 2)
    for i in range(15):  # the table's other fifteen slots: all idle, so they go first
        table.set_engine(f"new-{i}", 3)
    assert table.engine_of("recent") == 2
    assert all(table.engine_of(f"new-{i}") == 3 for i in range(15))


def _claim(shared: SharedSlots, key: str, out: Any) -> None:
    from server.serving.admission import Admission

    out.put(Admission(shared, 0).calls.claim_hangup(key))


def test_the_record_is_shared_by_worker_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    shared = SharedSlots.create(ctx, 2, str(tmp_path))
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(shared, "call-x", out)) for _ in range(3)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == [False, False, True]


# -- admission by kind and the engine's queue order -------------------------------------------


def _body(text: str, *, continuing: bool, session: str | None = None, **extra: Any) -> dict:
    earlier = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]
    turn = {"role": "user", "content": text}
    body: dict[str, Any] = {"stream": True, "messages": [*earlier, turn] if continuing else [turn]}
    if session:
        body["session_id"] = session
    return {**body, **extra}


def _app(model: Path, engine: ScriptedEngine, **limits: int) -> Any:
    settings = Settings(
        engine={"model": str(model)},
        models={"default": "qwen-plus", "aliases": {"qwen-plus": {"fallback_text": FALLBACK}}},
        limits=limits,
    )
    return create_app(settings, [AUTH], engine_factory=engine.factory, adapters=Adapters())


def _open(client: httpx.AsyncClient, body: dict) -> asyncio.Task[httpx.Response]:
    """A turn posted in the background (the in-process transport answers once it has ended)."""
    return asyncio.create_task(client.post("/", json=body, headers=HEADERS))


async def _until(condition: Any, within_s: float = 30.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_first_turns_stop_at_the_new_call_level_and_calls_in_progress_go_on(
    tiny_model_dir: Path,
) -> None:
    engine = ScriptedEngine(script=["Yes", STALL])

    async def scenario() -> None:
        async with serve_in_process(
            _app(tiny_model_dir, engine, max_in_flight=4, new_call_max_in_flight=2)
        ) as (
            client,
            runtime,
        ):
            held = [_open(client, _body("a", continuing=False)) for _ in range(2)]
            await _until(lambda: len(engine.requests) == 2)
            refused = await client.post("/", json=_body("b", continuing=False), headers=HEADERS)
            assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
            assert refused.json()["code"] == "server_overloaded"
            held += [_open(client, _body("c", continuing=True)) for _ in range(2)]
            await _until(lambda: len(engine.requests) == 4)
            full = await client.post("/", json=_body("d", continuing=True), headers=HEADERS)
            assert full.status_code == 503
            text = (await client.get("/metrics")).text
            assert metric(text, "callgate_new_call_slots") == 0
            admitted = {"call": "first", "decision": "admitted"}
            assert metric(text, "callgate_admissions_total", **admitted) == 2
            assert metric(text, "callgate_admissions_total", call="first", decision="refused") == 1
            assert (
                metric(text, "callgate_admissions_total", call="continuing", decision="admitted")
                == 2
            )
            assert (
                metric(text, "callgate_admissions_total", call="unclassified", decision="refused")
                == 1
            )
            priorities = [engine.priorities[rid] for rid, _, _ in engine.requests]
            assert priorities == [PRIORITY_FIRST] * 2 + [PRIORITY_CONTINUING] * 2
            for turn in list(runtime.switchboard.open_turns):
                turn.interrupt("draining")
            for r in await asyncio.gather(*held):
                assert r.status_code == 200
            text = (await client.get("/metrics")).text
            assert metric(text, "callgate_new_call_slots") == 2

    asyncio.run(scenario())


# -- one open turn per call -------------------------------------------------------------------


def test_a_newer_turn_of_a_call_supersedes_the_open_one(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=["Let me ", "see", STALL])

    async def scenario() -> tuple[bytes, bytes, list[str], Any]:
        async with serve_in_process(_app(tiny_model_dir, engine, max_in_flight=8)) as (
            client,
            runtime,
        ):
            old = _open(client, _body("a", continuing=True, session="call-1"))
            await _until(lambda: len(engine.requests) == 1)
            other = _open(client, _body("a", continuing=True, session="call-2"))
            await _until(lambda: len(engine.requests) == 2)
            old_id = engine.requests[0][0]
            engine.script = ScriptedEngine(["Sure."]).script  # the newer turn answers at once
            new = await client.post(
                "/", json=_body("b", continuing=True, session="call-1"), headers=HEADERS
            )
            old_body = (await old).content
            assert old_id in engine.aborts
            assert len(runtime.switchboard.open_turns) == 1  # call-2's turn runs on
            for turn in list(runtime.switchboard.open_turns):
                turn.interrupt("draining")
            await other
            return old_body, new.content, [old_id], runtime

    old_body, new_body, _, runtime = asyncio.run(scenario())
    old = parse_chat_stream(old_body)  # a final chunk and [DONE]
    assert old.content == "Let me see" and FALLBACK not in old.content
    assert parse_chat_stream(new_body).content == "Sure."
    counted = runtime.metrics.requests.labels("qwen-plus", "superseded")._value.get()
    assert counted == 1


def test_a_refused_turn_supersedes_nothing(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=["Let me ", STALL])

    async def scenario() -> None:
        async with serve_in_process(_app(tiny_model_dir, engine, max_in_flight=1)) as (
            client,
            runtime,
        ):
            old = _open(client, _body("a", continuing=True, session="call-1"))
            await _until(lambda: len(engine.requests) == 1)
            again = await client.post(
                "/", json=_body("b", continuing=True, session="call-1"), headers=HEADERS
            )
            assert again.status_code == 503
            await asyncio.sleep(0.1)
            assert engine.aborts == [] and len(runtime.switchboard.open_turns) == 1
            for turn in list(runtime.switchboard.open_turns):
                turn.interrupt("draining")
            assert FALLBACK in (await old).text

    asyncio.run(scenario())


def test_without_a_session_id_nothing_is_superseded(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=["Let me ", STALL])

    async def scenario() -> None:
        async with serve_in_process(_app(tiny_model_dir, engine, max_in_flight=8)) as (
            client,
            runtime,
        ):
            held = [_open(client, _body("a", continuing=True)) for _ in range(2)]
            await _until(lambda: len(engine.requests) == 2)
            await asyncio.sleep(0.05)
            assert engine.aborts == [] and len(runtime.switchboard.open_turns) == 2
            for turn in list(runtime.switchboard.open_turns):
                turn.interrupt("draining")
            await asyncio.gather(*held)

    asyncio.run(scenario())


def test_a_call_bus_datagram_reaches_the_other_worker() -> None:
    from server.serving.call_bus import CallBus

    async def scenario(directory: str) -> list[int]:
        got: list[int] = []
        a = CallBus(directory, 0, got.append)
        b = CallBus(directory, 1, lambda n: None)
        b.send(0, 42)
        b.send(5, 1)  # no such worker: logged, nothing raised
        await _until(lambda: bool(got), 5.0)
        a.close()
        b.close()
        return got

    with tempfile.TemporaryDirectory() as d:
        assert asyncio.run(scenario(d)) == [42]


def test_a_turn_superseded_before_it_reached_the_engine_never_does(tiny_model_dir: Path) -> None:
    """The call's newer turn is admitted before the older one's response began: the older one
    asks the engine nothing and ends at once with [DONE], no fallback."""
    engine = ScriptedEngine(["Sure."])

    async def scenario() -> tuple[bytes, bytes, Any]:
        async with serve_in_process(_app(tiny_model_dir, engine, max_in_flight=8)) as (_, runtime):
            board = runtime.switchboard
            body = _body("a", continuing=True, session="call-1")
            request = parse_request(json.dumps(body).encode())
            turns = []
            for rid in ("old", "new"):
                board.admit()
                plan = board.plan_now(request, rid, time.perf_counter(), CallClass.CONTINUING)
                turns.append(board.start(plan))
            old, new = [b"".join([chunk async for chunk in t.sse()]) for t in turns]
            return old, new, turns

    old, new, turns = asyncio.run(scenario())
    assert [rid for rid, _, _ in engine.requests] == [turns[1].plan.engine_id]
    assert parse_chat_stream(old).content == ""
    assert parse_chat_stream(new).content == "Sure."
    assert turns[0].record.outcome == "superseded"
