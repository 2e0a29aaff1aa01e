"""Which engine core serves a turn (`server/serving/placement.py`): the pure decision, the call
key, the server-wide counts, and the wiring through the switchboard with a scripted engine of two
cores (the real engine's two cores are `tests/reliability/test_data_parallel.py`)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.base.logs import JsonFormatter
from server.base.settings import Settings
from server.engine.api import Delta
from server.serving.calls import CallTable
from server.serving.lifecycle import Runtime
from server.serving.placement import (
    MAX_RANKS,
    Affinity,
    EngineLoads,
    Placement,
    Placer,
    affinity_key,
    default_slack,
    load_rows,
    place,
    release_row,
)
from server.wire.schemas import parse_request
from tests.scripted_engine import ScriptedEngine, serve_settings

AUTH = "test-code-0123456789"
HEADERS = {"Authorization": AUTH}
OPENING = {"role": "assistant", "content": "Hello, this is the hotel."}

# -- the decision ------------------------------------------------------------------------------


def test_a_first_turn_goes_to_the_least_busy_core() -> None:
    assert place([3, 1, 2], None, slack=2, capacity=8) == Placement(1, Affinity.NEW)
    assert place([0, 0, 5, 0], None, slack=2, capacity=8, start=2) == Placement(3, Affinity.NEW)


def test_ties_go_to_the_first_core_from_the_rotating_start() -> None:
    assert [place([0, 0, 0], None, 2, 8, start=s).rank for s in range(4)] == [0, 1, 2, 0]


def test_a_later_turn_stays_on_its_core_up_to_the_slack() -> None:
    assert place([5, 3], home=0, slack=2, capacity=8) == Placement(0, Affinity.HELD)
    assert place([3, 5], home=0, slack=0, capacity=8) == Placement(0, Affinity.HELD)
    assert place([6, 3], home=0, slack=2, capacity=8) == Placement(1, Affinity.RELEASED)
    assert place([1, 0], home=0, slack=0, capacity=8) == Placement(1, Affinity.RELEASED)


def test_a_full_core_releases_a_call_to_one_with_room_but_not_to_another_full_one() -> None:
    assert place([8, 7], home=0, slack=4, capacity=8) == Placement(1, Affinity.RELEASED)
    assert place([9, 8], home=0, slack=4, capacity=8) == Placement(0, Affinity.HELD)


def test_a_core_that_is_not_there_is_no_home() -> None:
    assert place([2, 1], home=5, slack=2, capacity=8) == Placement(1, Affinity.NEW)


def test_the_default_slack_is_half_a_batch_and_at_least_two() -> None:
    assert [default_slack(n) for n in (1, 8, 64, 256)] == [2, 4, 32, 128]


# -- the call key -------------------------------------------------------------------------------


def _messages(*turns: tuple[str, str]) -> Any:
    body = {"messages": [{"role": r, "content": c} for r, c in turns]}
    return parse_request(json.dumps(body).encode()).messages


def test_a_call_is_its_session_id() -> None:
    messages = _messages(("user", "hi"))
    assert affinity_key("qwen-plus", "call-7", messages) == "call-7"


def test_without_a_session_id_a_call_is_its_dialog_up_to_the_first_user_turn() -> None:
    first = _messages(("assistant", "Hello."), ("user", "Book a table."))
    later = _messages(
        ("assistant", "Hello."), ("user", "Book a table."), ("assistant", "For when?"),
        ("user", "Tonight."),
    )  # fmt: skip
    other = _messages(("assistant", "Hello."), ("user", "Cancel my table."))
    key = affinity_key("qwen-plus", None, first)
    assert key is not None and key == affinity_key("qwen-plus", None, later)
    assert key != affinity_key("qwen-plus", None, other)
    assert key != affinity_key("qwen-max", None, first)  # another alias: another prompt
    assert affinity_key("qwen-plus", None, _messages(("assistant", "Hello."))) is None


# -- the counts ---------------------------------------------------------------------------------


def test_every_worker_places_by_the_whole_servers_counts_and_a_dead_workers_are_freed() -> None:
    rows = load_rows(multiprocessing.get_context("spawn").RawArray, 2)
    one, two = EngineLoads(rows, index=0), EngineLoads(rows, index=1)
    least = lambda loads: place(loads, None, 2, 8)  # noqa: E731
    assert one.take(2, least).rank == 0
    assert two.take(2, least).rank == 1  # worker 1 sees worker 0's turn on core 0
    assert one.take(2, least).rank == 0
    assert two.totals(2) == [2, 1]
    one.leave(0)
    assert one.totals(2) == [1, 1]
    assert release_row(rows, 1) == 1
    assert one.totals(2) == [1, 0] and len(rows) == 2 * MAX_RANKS


def _placer(affinity: bool = True, slack: int = 1, ranks: int = 2) -> Placer:
    return Placer(ranks, affinity, slack, 8, EngineLoads(), CallTable())


def test_a_calls_turns_stay_on_its_core_and_move_once_when_it_is_much_busier() -> None:
    placer = _placer(slack=1)
    first = placer.place("call-a")
    assert first.affinity is Affinity.NEW
    placer.leave(first)
    for _ in range(3):
        again = placer.place("call-a")
        assert again == Placement(first.rank, Affinity.HELD)
        placer.leave(again)
    # Two other calls' turns run on call-a's core, none on the other: two ahead, slack 1.
    assert first.rank is not None
    busy = [placer._loads.take(2, lambda _: Placement(first.rank, Affinity.NEW)) for _ in "xy"]
    moved = placer.place("call-a")
    assert moved.affinity is Affinity.RELEASED and moved.rank == 1 - first.rank
    placer.leave(moved)
    for b in busy:
        placer.leave(b)
    assert placer.place("call-a") == Placement(moved.rank, Affinity.HELD)  # it stays moved


def test_first_turns_of_new_calls_spread_over_idle_cores() -> None:
    placer = _placer(ranks=4)
    ranks = []
    for n in range(8):
        placed = placer.place(f"call-{n}")
        ranks.append(placed.rank)
        placer.leave(placed)
    assert sorted(ranks) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_with_affinity_off_vllms_balancer_chooses() -> None:
    placer = _placer(affinity=False)
    assert placer.place("call-a") == Placement(None, Affinity.BALANCER)
    assert Placement(None, Affinity.BALANCER).engine == "any"


# -- through the switchboard (scripted engine, two cores) -------------------------------------


def _settings(model: Path, **engine: Any) -> Settings:
    alias = {"system_prompt": "You are a phone agent."}
    return Settings(
        engine={"model": str(model), **engine},
        models={"default": "qwen-plus", "aliases": {"qwen-plus": alias}},
    )


@asynccontextmanager
async def _serve(
    settings: Settings, engine: ScriptedEngine
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with serve_settings(settings, engine.factory, AUTH) as served:
        yield served


async def _call(client: httpx.AsyncClient, session: str | None, turns: int, tag: str) -> None:
    messages: list[dict[str, str]] = [OPENING]
    for n in range(turns):
        messages.append({"role": "user", "content": f"{tag} turn {n}"})
        body: dict[str, Any] = {"model": "qwen-plus", "messages": messages}
        if session is not None:
            body["session_id"] = session
        reply = await client.post("/", json=body, headers=HEADERS)
        assert reply.status_code == 200
        messages.append({"role": "assistant", "content": "Yes."})


def _turn_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "callgate.turn" and getattr(r, "turn", {}).get("outcome") == "stop"
    ]


def test_each_calls_turns_reach_one_core_and_the_log_and_metrics_say_which(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ScriptedEngine(["Yes."], data_parallel_size=2, max_num_seqs=4)

    async def scenario() -> Runtime:
        async with _serve(_settings(tiny_model_dir), engine) as (client, runtime):
            board = runtime.switchboard
            assert board is not None and board.max_in_flight == 8  # max_num_seqs x 2 cores
            await asyncio.gather(
                _call(client, "call-a", 4, "a"),
                _call(client, "call-b", 4, "b"),
                _call(client, None, 4, "c"),  # no session_id: its dialog's opening
            )
            return runtime

    with caplog.at_level(logging.INFO, logger="callgate.turn"):
        runtime = asyncio.run(scenario())
    lines = _turn_lines(caplog)
    assert len(lines) == 12
    by_call: dict[str, set[int]] = {}
    for line in lines:
        call = line["session_id"] or "c"
        by_call.setdefault(call, set()).add(line["engine"])
        assert engine.ranks[_engine_id(engine, line["request_id"])] == line["engine"]
    assert all(len(ranks) == 1 for ranks in by_call.values()), by_call
    assert {r for ranks in by_call.values() for r in ranks} == {0, 1}  # both cores serve
    assert sorted(line["affinity"] for line in lines) == ["held"] * 9 + ["new"] * 3
    turns = runtime.metrics.engine_turns
    counted = {
        (rank, how): turns.labels(rank, how)._value.get()
        for rank in ("0", "1")
        for how in ("new", "held", "released")
    }
    assert sum(counted.values()) == 12 and counted[("0", "released")] == 0
    assert sum(v for (_, how), v in counted.items() if how == "new") == 3
    in_flight = runtime.metrics.engine_in_flight
    assert [in_flight.labels(r)._value.get() for r in ("0", "1")] == [0, 0]


def _engine_id(engine: ScriptedEngine, request_id: str) -> str:
    return next(rid for rid in engine.ranks if rid.startswith(request_id + "."))


def test_with_affinity_off_no_core_is_named_to_the_engine(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(["Yes."], data_parallel_size=2)

    async def scenario() -> Runtime:
        async with _serve(_settings(tiny_model_dir, call_affinity=False), engine) as (c, rt):
            await _call(c, "call-a", 3, "a")
            return rt

    runtime = asyncio.run(scenario())
    assert set(engine.ranks.values()) == {None}
    assert runtime.metrics.engine_turns.labels("any", "balancer")._value.get() == 3


def test_one_core_places_nothing(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(["Yes."], max_num_seqs=4)

    async def scenario() -> Runtime:
        async with _serve(_settings(tiny_model_dir), engine) as (c, rt):
            await _call(c, "call-a", 2, "a")
            return rt

    runtime = asyncio.run(scenario())
    assert set(engine.ranks.values()) == {None}
    assert runtime.switchboard is not None and runtime.switchboard.max_in_flight == 4


class OneCoreHung(ScriptedEngine):
    """Two engine cores: core 1 never produces a token, core 0 streams on and on."""

    def __init__(self) -> None:
        super().__init__(data_parallel_size=2)
        self.open = 0

    async def generate(  # type: ignore[override]
        self,
        request_id: str,
        token_ids: list[int],
        params: Any,
        adapter: str | None = None,
        priority: int = 0,
        rank: int | None = None,
    ) -> AsyncIterator[Delta]:
        self.ranks[request_id] = rank
        self.open += 1
        try:
            if rank == 1:
                await asyncio.Event().wait()
            while True:
                yield Delta("a", 1, False, None, 0)
                await asyncio.sleep(0.01)
        finally:
            self.open -= 1

    def num_unfinished(self) -> int:
        return self.open


def test_one_hung_core_stalls_the_server_though_the_other_makes_tokens(
    tiny_model_dir: Path,
) -> None:
    engine = OneCoreHung()
    settings = _settings(tiny_model_dir)
    settings.readiness.stall_s, settings.readiness.hung_exit_after = 0.3, 0

    async def scenario() -> None:
        async with _serve(settings, engine) as (client, runtime):
            calls = []
            for n in range(2):  # on idle cores: the first to core 0, the next to core 1
                messages = [OPENING, {"role": "user", "content": f"call {n}"}]
                body = {"model": "qwen-plus", "session_id": f"c{n}", "messages": messages}
                calls.append(asyncio.create_task(client.post("/", json=body, headers=HEADERS)))
                await _until(lambda n=n: len(engine.ranks) == n + 1)
            assert sorted(engine.ranks.values()) == [0, 1]
            await _until(lambda: runtime.readiness() == (False, "stalled"))
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    asyncio.run(scenario())


async def _until(condition: Any, within_s: float = 10.0) -> None:
    """Poll a condition (no timing assertion: the bound only keeps a broken test finite)."""
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")
