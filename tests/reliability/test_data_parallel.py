"""Two engine cores behind one address (`engine.data_parallel_size: 2`), with two front-end
workers: still one server, and a call stays on the core that holds its dialog.

Real engine, tiny checkpoint, one server process for the module (two workers x two engine cores:
the shape of a GPU host, and the placement's counts shared across workers). Its own server, as
no shared one can have two engine cores without doubling its start; the engine-death test uses
it up, last. Which core served a turn is checked against vLLM's own per-core metrics
(`engine="0"`, `engine="1"`), not only against our log. vLLM's data-parallel client (the rank a
request names, aborts routed to its core, one core's death) is release-specific: `compat`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import ServerHandle, ServerSlot
from tests.wire import (
    FALLBACK,
    RawStream,
    assert_aborted_in_time,
    assert_processes_gone,
    async_client,
    descendants,
    load,
    log_since,
    long_body,
    metric,
    new_request_id,
    read_to_end,
    scrape,
    turn_lines,
    wait_for,
    wait_idle,
    well_formed,
)

pytestmark = pytest.mark.slow

RANKS = ("0", "1")
LONG = 1500  # output tokens: a turn that outlasts every step of a test here
ENV = {
    "CALLGATE_SERVER__WORKERS": "2",
    "CALLGATE_ENGINE__DATA_PARALLEL_SIZE": "2",
    "CALLGATE_ENGINE__MAX_NUM_SEQS": "4",  # admission: 4 x 2 cores
    # Calls first off: six calls start at once here, past the new-call level's default.
    "CALLGATE_LIMITS__NEW_CALL_MAX_IN_FLIGHT": "8",
    "CALLGATE_ENGINE__AFFINITY_SLACK": "1",  # two turns ahead of the other core: a call moves
    "CALLGATE_SAMPLING__MAX_TOKENS": str(LONG),
}
OPENING = {"role": "assistant", "content": "Hello, this is the Grand Hotel. How can I help you?"}
# A call's first words: long enough (about 170 tokens) to fill a whole block of vLLM's prefix
# cache (128 tokens on the CPU build) that no other call shares.
REQUEST = (
    "I would like to book a table for four people tonight at eight, near the window if "
    "possible, and we have one guest who cannot eat nuts. "
) * 2


@pytest.fixture(scope="module")
def dp_slot(start_server: Any) -> Iterator[ServerSlot[ServerHandle]]:
    with ServerSlot(lambda: start_server(env=ENV)) as slot:
        yield slot


@pytest.fixture
def dp(dp_slot: ServerSlot[ServerHandle]) -> ServerHandle:
    srv = dp_slot.get()
    assert wait_idle(srv, within_s=10.0).idle, load(srv)
    return srv


def _auth(handle: ServerHandle) -> dict[str, str]:
    return {"Authorization": handle.auth}


def _per_core(text: str, name: str) -> dict[str, float]:
    return {rank: metric(text, name, engine=rank) for rank in RANKS}


def _grown(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def _dialog(session: str, turns: int) -> list[dict[str, str]]:
    messages = [OPENING]
    for n in range(turns):
        if n:
            messages.append({"role": "assistant", "content": f"Noted, {n}."})
        words = f"{session}: {REQUEST}" if n == 0 else f"And request number {n}, please."
        messages.append({"role": "user", "content": words})
    return messages


def _turn(handle: ServerHandle, session: str, turns: int, max_tokens: int = 4) -> httpx.Response:
    body = {
        "model": "qwen-plus",
        "stream": True,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "session_id": session,
        "messages": _dialog(session, turns),
    }
    with httpx.Client(timeout=60.0) as client:  # a fresh connection: either worker
        return client.post(f"{handle.url}/", json=body, headers=_auth(handle))


def _lines_of(handle: ServerHandle, mark: int, count: int) -> list[dict[str, Any]]:
    assert wait_for(lambda: len(turn_lines(log_since(handle, mark))) >= count, 10.0)
    return turn_lines(log_since(handle, mark))


@pytest.mark.compat
def test_both_cores_serve_each_calls_turns_stay_on_one_and_the_sums_are_exact(dp):
    """Six overlapping calls of three turns each, on fresh connections (both workers): every
    stream is well formed, both cores serve, a call's turn runs on the core of its last turn
    unless released (this server's slack is 1: two turns ahead moves a call, which overlapping
    calls can reach), held turns find the dialog in that core's cache, vLLM's per-core counts
    agree with the log, and our per-core counts sum exactly to the turns served."""
    before, mark = scrape(dp), len(dp.log_text())
    sessions = [f"dp-call-{n}" for n in range(6)]

    async def call(session: str) -> list[httpx.Response]:
        return [await asyncio.to_thread(_turn, dp, session, n) for n in (1, 2, 3)]

    async def calls() -> list[list[httpx.Response]]:
        return await asyncio.gather(*(call(s) for s in sessions))

    for replies in asyncio.run(calls()):
        for reply in replies:
            assert reply.status_code == 200, reply.text
            assert well_formed(reply.content).finish_reason == "length"
    lines = _lines_of(dp, mark, 18)
    assert len(lines) == 18 and {line["outcome"] for line in lines} == {"length"}
    calls: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for line in sorted(lines, key=lambda line: line["time"]):
        calls[line["session_id"]].append(line)
    for turns in calls.values():
        assert turns[0]["affinity"] == "new", turns
        for last, turn in itertools.pairwise(turns):
            moved = turn["engine"] != last["engine"]
            assert moved == (turn["affinity"] == "released"), (last, turn)
    assert {line["engine"] for line in lines} == {0, 1}  # both cores serve
    assert len({line["pid"] for line in lines}) == 2  # and both workers
    how = collections.Counter(line["affinity"] for line in lines)
    assert how["new"] == 6 and how["held"] + how["released"] == 12, how
    assert how["held"] > how["released"], how  # calls mostly stay where their dialog is
    # A later turn finds its call's first words in its core's prefix cache (another core has
    # none of them: no other call shares a block of it).
    later = [line for line in lines if line["affinity"] == "held"]
    assert all(line["cached_tokens"] >= 128 for line in later), later

    after = scrape(dp)
    ours = collections.Counter(str(line["engine"]) for line in lines)
    done = "vllm:request_success_total"
    vllm_ran = _grown(_per_core(after, done), _per_core(before, done))
    assert vllm_ran == {rank: float(ours[rank]) for rank in RANKS}, (vllm_ran, ours)
    for rank in RANKS:
        grown = sum(
            metric(after, "callgate_engine_turns_total", engine=rank, affinity=how)
            - metric(before, "callgate_engine_turns_total", engine=rank, affinity=how)
            for how in ("new", "held", "released")
        )
        assert grown == ours[rank], (rank, grown, ours)
        assert metric(after, "callgate_engine_turns_in_flight", engine=rank) == 0


@pytest.mark.compat
def test_a_call_moves_off_a_busy_core_and_hang_ups_reach_the_core_that_has_them(dp):
    """Two long turns of calls at home on one core make it two turns busier than the other:
    the next turn of a third call at home there moves to the other core (and stays), and
    hanging up the long turns aborts them on the core that runs them."""
    mark = len(dp.log_text())
    assert _turn(dp, "dp-mover", 1).status_code == 200
    (first,) = _lines_of(dp, mark, 1)
    home = first["engine"]
    # Two more calls at home on the same core (first turns alternate between idle cores).
    others: list[str] = []
    for n in range(8):
        mark = len(dp.log_text())
        assert _turn(dp, f"dp-heavy-{n}", 1).status_code == 200
        (line,) = _lines_of(dp, mark, 1)
        if line["engine"] == home:
            others.append(f"dp-heavy-{n}")
        if len(others) == 2:
            break
    assert len(others) == 2, "eight first turns all went to the other core"

    hung_up: dict[str, float] = {}

    async def scenario() -> tuple[httpx.Response, httpx.Response, dict[str, float]]:
        async with async_client() as client:
            streams = []
            for session in others:  # their second turns: long, held on `home`
                rid = new_request_id()
                body = {
                    **long_body(LONG),
                    "session_id": session,
                    "messages": _dialog(session, 2),
                }
                request = client.build_request(
                    "POST", f"{dp.url}/", json=body, headers={**_auth(dp), "X-Request-Id": rid}
                )
                streams.append((rid, RawStream(await client.send(request, stream=True))))
                await streams[-1][1].until(2)
            running = _per_core(scrape(dp), "vllm:num_requests_running")
            moved = await asyncio.to_thread(_turn, dp, "dp-mover", 2)
            stayed = await asyncio.to_thread(_turn, dp, "dp-mover", 3)
            for rid, stream in streams:
                hung_up[rid] = time.time()
                await stream.response.aclose()
            return moved, stayed, running

    mark = len(dp.log_text())
    moved, stayed, running = asyncio.run(scenario())
    assert running == {str(home): 2.0, str(1 - home): 0.0}, running  # vLLM: both on `home`
    assert moved.status_code == 200 and stayed.status_code == 200
    assert_aborted_in_time(dp, hung_up)
    lines = {
        line["request_id"]: line
        for line in turn_lines(log_since(dp, mark))
        if line["session_id"] == "dp-mover"
    }
    mover = sorted(lines.values(), key=lambda line: line["time"])
    assert [(m["engine"], m["affinity"]) for m in mover] == [
        (1 - home, "released"),
        (1 - home, "held"),
    ], mover
    assert wait_idle(dp).idle, load(dp)  # the aborts reached the core that ran them


def _engine_cores(handle: ServerHandle) -> dict[str, psutil.Process]:
    """vLLM's engine cores by rank: the server's children named `EngineCore_DP<rank>`."""
    cores = {}
    for proc in descendants(handle):
        try:
            title = " ".join([proc.name(), *proc.cmdline()[:1]])
        except psutil.Error:
            continue
        for rank in RANKS:
            if f"EngineCore_DP{rank}" in title:
                cores[rank] = proc
    return cores


@pytest.mark.compat
def test_one_engine_core_dying_ends_the_turns_audibly_and_exits_3(dp_slot):
    srv = dp_slot.use_up()
    family = descendants(srv)
    cores = _engine_cores(srv)
    assert sorted(cores) == list(RANKS), [p.name() for p in family]

    async def scenario() -> list[bytes]:
        async with async_client() as client:
            streams = []
            for n in range(2):  # two new calls: one on each core
                body = {**long_body(LONG), "session_id": f"dp-dying-{n}"}
                request = client.build_request("POST", f"{srv.url}/", json=body, headers=_auth(srv))
                streams.append(RawStream(await client.send(request, stream=True)))
                await streams[-1].until(2)
            cores["1"].send_signal(signal.SIGKILL)
            return await read_to_end(streams)

    bodies = asyncio.run(scenario())
    code = srv.proc.wait(timeout=60.0)
    for raw in bodies:
        assert well_formed(raw).content.endswith(FALLBACK)
    assert code == 3, code
    assert_processes_gone(family)
