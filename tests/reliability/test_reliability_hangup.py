"""Hang-ups, barge-ins, stalled readers and overload: the engine never works for a caller who left.

Issue 4, points 2 and 3 (and the mid-stream half of point 6). On the shared busy server
(`busy_slot`, `tests/conftest.py` BUSY; test_api_cancel's hang-ups use it too), sized so that
every stage of a turn can be hit on purpose:

* `max_num_seqs` 4: a fifth stream waits in vLLM's queue;
* `max_in_flight` 16: four running plus twelve queued fill the gateway; the 17th is refused;
  `new_call_max_in_flight` 12: past twelve, only turns of calls in progress get in (tests that
  fill the server send those: `long_body(..., continuing=True)`);
* `max_model_len` 16384 and `max_tokens` 16000 with `ignore_eos`: a "long" turn lasts about
  40 s, far longer than any test step or the turn deadline;
* `max_num_batched_tokens` 256: a 3400-token prompt is prefilled over about fourteen engine
  steps, so a hang-up right after the role chunk lands while queued or during prefill;
* `turn_s` 20: a reader that stops reading is cut off while the engine is still working.

After every stage, each dropped turn must have been aborted within two seconds of its hang-up
(the server's own log line, `tests/wire/logs.py`), vLLM's running and waiting counts and our
in-flight gauge must be back to zero, and a new turn must be served normally. The engine-death
test kills the server: it uses the busy server up, and a test after it would get a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import BUSY
from tests.wire import (
    FALLBACK,
    IDLE_WITHIN_S,
    RawStream,
    address,
    assert_aborted_in_time,
    assert_error_shape,
    assert_processes_gone,
    async_client,
    delta,
    descendants,
    drop_after,
    engine_core,
    hang_up_raw,
    load,
    load_async,
    log_since,
    logged_at,
    long_body,
    metric,
    new_request_id,
    open_streams,
    outcomes,
    read_to_end,
    request_head,
    samples,
    scrape,
    turn_lines,
    wait_for,
    wait_idle,
    well_formed,
)
from tests.wire.http import EARLIER

pytestmark = pytest.mark.slow

MAX_NUM_SEQS = BUSY["engine"]["max_num_seqs"]  # 4
MAX_IN_FLIGHT = BUSY["limits"]["max_in_flight"]  # 16
NEW_CALL_MAX = BUSY["limits"]["new_call_max_in_flight"]  # 12
TURN_S = BUSY["deadlines"]["turn_s"]  # 20: far above any test step, far below a LONG turn
LONG = BUSY["sampling"]["max_tokens"]  # 16,000 (~40 s here): a turn outlasting every test step
PREFILL_REPEATS = 140  # STORY x 140 ~ 3400 prompt tokens
ROUNDS = 2  # each stage drops ROUNDS x (its batch) streams: dozens in all


@pytest.fixture
def busy(busy_slot):
    """The busy server (a fresh one if the engine-death test used the last one up)."""
    return busy_slot.get()


@pytest.fixture
def idle_before(busy):
    """Each test starts from an idle server and returns the outcome counts at its start."""
    assert wait_idle(busy, within_s=10.0).idle, load(busy)
    return outcomes(busy)


def _assert_serves(handle) -> None:
    """A new turn is served normally: 200, well-formed, full length, no fallback."""
    response = httpx.post(
        f"{handle.url}/",
        json=long_body(8),
        headers={"Authorization": handle.auth},
        timeout=60.0,
    )
    assert response.status_code == 200, response.text
    stream = well_formed(response.content)
    assert stream.finish_reason == "length"
    assert FALLBACK not in stream.content


def _assert_idle_and_serving(handle) -> None:
    idle = wait_idle(handle)
    assert idle.idle, f"engine or gateway still busy {IDLE_WITHIN_S} s after the hang-ups: {idle}"
    _assert_serves(handle)


async def _wait_load(handle, predicate, timeout_s: float = 30.0) -> Any:
    """Poll /metrics until `predicate(load)` holds; returns the last load."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=30.0) as client:
        while True:
            current = await load_async(handle, client)
            if predicate(current) or time.monotonic() > deadline:
                return current
            await asyncio.sleep(0.1)


# -- before the response headers -----------------------------------------------------------


def test_hang_up_before_the_response_headers(busy, idle_before):
    body = json.dumps(long_body(LONG)).encode()
    hung_up: dict[str, float] = {}
    threads = []
    for n in range(ROUNDS * 16):
        # Half send the whole request, half stop in the middle of the body.
        cut = len(body) if n % 2 else len(body) // 2
        threads.append(threading.Thread(target=hang_up_raw, args=(busy, body, cut, hung_up)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The server learns of each hang-up as it gets to it: allow it time, then demand idle.
    wait_for(lambda: sum(delta(outcomes(busy), idle_before).values()) >= len(threads), 10.0)
    changed = delta(outcomes(busy), idle_before)
    assert set(changed) <= {"client_gone", "rejected"}, changed
    assert sum(changed.values()) == len(threads), changed
    assert_aborted_in_time(busy, hung_up)
    _assert_idle_and_serving(busy)


# -- while queued ----------------------------------------------------------------------------


@pytest.mark.compat  # aborting what waits in vLLM's queue
def test_hang_up_while_queued_in_the_engine(busy, idle_before):
    hung_up: dict[str, float] = {}

    async def round_() -> None:
        release_blockers, release_queued = asyncio.Event(), asyncio.Event()
        body = long_body(LONG, continuing=True)  # 16 at once: past the new-call level (12)
        async with async_client() as client:
            blockers = [
                asyncio.create_task(drop_after(client, busy, body, 1, release_blockers, hung_up))
                for _ in range(MAX_NUM_SEQS)
            ]
            running = await _wait_load(busy, lambda x: x.running == MAX_NUM_SEQS)
            assert running.running == MAX_NUM_SEQS, running
            queued = [
                asyncio.create_task(drop_after(client, busy, body, 0, release_queued, hung_up))
                for _ in range(MAX_IN_FLIGHT - MAX_NUM_SEQS)
            ]
            full = await _wait_load(busy, lambda x: x.waiting == len(queued))
            assert (full.running, full.waiting) == (MAX_NUM_SEQS, len(queued)), full
            release_queued.set()
            assert await asyncio.gather(*queued) == [200] * len(queued)
            # The queue empties at once; the four running turns are untouched.
            after = await _wait_load(busy, lambda x: x.waiting == 0, timeout_s=IDLE_WITHIN_S)
            assert (after.running, after.waiting) == (MAX_NUM_SEQS, 0), after
            release_blockers.set()
            assert await asyncio.gather(*blockers) == [200] * MAX_NUM_SEQS

    for _ in range(ROUNDS):
        asyncio.run(round_())
        assert wait_idle(busy).idle
    changed = delta(outcomes(busy), idle_before)
    assert changed == {"client_gone": ROUNDS * MAX_IN_FLIGHT}, changed
    assert_aborted_in_time(busy, hung_up)
    _assert_idle_and_serving(busy)


# -- during prefill --------------------------------------------------------------------------


@pytest.mark.compat  # aborting a chunked prefill
def test_hang_up_during_prefill(busy, idle_before):
    mark = len(busy.log_text())
    rng = random.Random(4)
    hung_up: dict[str, float] = {}

    async def drop_soon(client, delay: float) -> int:
        body = long_body(LONG, prompt_repeats=PREFILL_REPEATS, continuing=True)
        rid = new_request_id()
        headers = {"Authorization": busy.auth, "X-Request-Id": rid}
        async with client.stream("POST", f"{busy.url}/", json=body, headers=headers) as response:
            assert response.status_code == 200
            await RawStream(response).until(0)  # admitted: the role chunk is out
            await asyncio.sleep(delay)  # somewhere in the queue or the prefill
            hung_up[rid] = time.time()
        return 200

    async def round_() -> None:
        async with async_client() as client:
            delays = [rng.uniform(0.0, 0.6) for _ in range(MAX_IN_FLIGHT)]
            await asyncio.gather(*(drop_soon(client, d) for d in delays))

    for _ in range(ROUNDS):
        asyncio.run(round_())
    changed = delta(outcomes(busy), idle_before)
    assert changed == {"client_gone": ROUNDS * MAX_IN_FLIGHT}, changed
    assert_aborted_in_time(busy, hung_up)
    _assert_idle_and_serving(busy)
    stages = [
        json.loads(line).get("disconnect_stage")
        for line in log_since(busy, mark).splitlines()
        if '"outcome": "client_gone"' in line
    ]
    assert stages.count("before_first_token") >= MAX_IN_FLIGHT, stages


# -- mid-stream ------------------------------------------------------------------------------


def test_hang_up_mid_stream(busy, idle_before):
    mark = len(busy.log_text())
    hung_up: dict[str, float] = {}

    async def round_() -> list[int]:
        async with async_client() as client:
            return await asyncio.gather(
                *(
                    drop_after(client, busy, long_body(LONG, continuing=True), 3, hung_up=hung_up)
                    for _ in range(MAX_IN_FLIGHT)
                )
            )

    for _ in range(ROUNDS):
        assert asyncio.run(round_()) == [200] * MAX_IN_FLIGHT
    changed = delta(outcomes(busy), idle_before)
    assert changed == {"client_gone": ROUNDS * MAX_IN_FLIGHT}, changed
    assert_aborted_in_time(busy, hung_up)
    _assert_idle_and_serving(busy)
    log = log_since(busy, mark)
    assert log.count('"disconnect_stage": "streaming"') == ROUNDS * MAX_IN_FLIGHT


# -- overload --------------------------------------------------------------------------------


def test_overload_keeps_room_for_calls_in_progress(busy, idle_before):
    """Calls first, on one worker: at the new-call level (12) a first turn is refused at once
    while a turn of a call in progress is still admitted, up to the total (16), which refuses
    anything; admitted turns are unaffected and refused ones never reach vLLM."""
    short = 24
    first, continuing = long_body(short), long_body(short, continuing=True)
    before = scrape(busy)

    async def scenario() -> tuple[list[httpx.Response], list[bytes]]:
        release = asyncio.Event()
        async with async_client() as client:

            async def post(body: dict[str, Any]) -> httpx.Response:
                return await client.post(f"{busy.url}/", json=body, headers=_auth(busy))

            async def open_(body: dict[str, Any], n: int) -> list[httpx.Response]:
                requests = [
                    client.build_request("POST", f"{busy.url}/", json=body, headers=_auth(busy))
                    for _ in range(n)
                ]
                return list(await asyncio.gather(*(client.send(r, stream=True) for r in requests)))

            blockers = [
                asyncio.create_task(drop_after(client, busy, long_body(LONG), 1, release))
                for _ in range(MAX_NUM_SEQS)
            ]
            running = await _wait_load(busy, lambda x: x.running == MAX_NUM_SEQS)
            assert running.running == MAX_NUM_SEQS, running
            # New calls up to the new-call level, admitted and queued behind the blockers.
            streams = await open_(first, NEW_CALL_MAX - MAX_NUM_SEQS)
            refused = [await post(first), await post({**first, "stream": False})]  # new calls
            # Calls in progress still get in, up to the total.
            streams += await open_(continuing, MAX_IN_FLIGHT - NEW_CALL_MAX)
            assert [r.status_code for r in streams] == [200] * len(streams)
            full = await _wait_load(busy, lambda x: x.in_flight == MAX_IN_FLIGHT)
            assert full.in_flight == MAX_IN_FLIGHT, full
            assert metric(scrape(busy), "callgate_new_call_slots") == 0
            refused.append(await post(continuing))  # the total holds for them too
            after = await _wait_load(busy, lambda _: True)
            assert after.running + after.waiting == MAX_IN_FLIGHT, "refused turns reached vLLM"
            release.set()  # the blockers hang up; the queued short turns run
            await asyncio.gather(*blockers)
            bodies = [await r.aread() for r in streams]
            for r in streams:
                await r.aclose()
            return refused, bodies

    refused, bodies = asyncio.run(scenario())
    for response in refused:
        body = assert_error_shape(response, 503)
        assert body["error"]["code"] == "server_overloaded"
        assert response.headers["retry-after"].isdigit()
    for raw in bodies:
        stream = well_formed(raw)
        assert stream.finish_reason == "length"
        assert FALLBACK not in stream.content
    changed = delta(outcomes(busy), idle_before)
    assert changed == {
        "rejected": 3,
        "length": MAX_IN_FLIGHT - MAX_NUM_SEQS,
        "client_gone": MAX_NUM_SEQS,
    }, changed
    decisions = delta(_admissions(scrape(busy)), _admissions(before))
    assert decisions == {
        ("first", "admitted"): NEW_CALL_MAX,
        ("first", "refused"): 2,
        ("continuing", "admitted"): MAX_IN_FLIGHT - NEW_CALL_MAX,
        ("unclassified", "refused"): 1,
    }, decisions
    assert metric(scrape(busy), "callgate_new_call_slots") == NEW_CALL_MAX
    _assert_idle_and_serving(busy)


@pytest.mark.compat  # vLLM's priority queue (engine.scheduling_policy: priority)
def test_a_call_in_progress_goes_ahead_of_a_new_call_in_vllms_queue(busy, idle_before):
    """A new call's turn queues first, a call in progress's turn after it; when one running
    turn ends, the call in progress is scheduled first (FCFS would take the new call)."""
    short = 24

    async def scenario() -> list[str]:
        releases = [asyncio.Event() for _ in range(MAX_NUM_SEQS)]
        heard: list[str] = []
        async with async_client() as client:

            async def listen(name: str, body: dict[str, Any]) -> bytes:
                request = client.build_request(
                    "POST", f"{busy.url}/", json=body, headers=_auth(busy)
                )
                stream = RawStream(await client.send(request, stream=True))
                await stream.until(1)
                heard.append(name)
                raw = await stream.rest()
                await stream.response.aclose()
                return raw

            blockers = [
                asyncio.create_task(drop_after(client, busy, long_body(LONG), 1, release))
                for release in releases
            ]
            running = await _wait_load(busy, lambda x: x.running == MAX_NUM_SEQS)
            assert running.running == MAX_NUM_SEQS, running
            new = asyncio.create_task(listen("new call", long_body(short)))
            await _wait_load(busy, lambda x: x.waiting == 1)
            later = asyncio.create_task(
                listen("call in progress", long_body(short, continuing=True))
            )
            queued = await _wait_load(busy, lambda x: x.waiting == 2)
            assert queued.waiting == 2, queued
            releases[0].set()  # one running turn ends: one queued turn may start
            bodies = await asyncio.gather(new, later)
            for release in releases:
                release.set()
            await asyncio.gather(*blockers)
        for raw in bodies:
            assert well_formed(raw).finish_reason == "length"
        return heard

    assert asyncio.run(scenario()) == ["call in progress", "new call"]
    changed = delta(outcomes(busy), idle_before)
    assert changed == {"length": 2, "client_gone": MAX_NUM_SEQS}, changed
    _assert_idle_and_serving(busy)


def _admissions(text: str) -> dict[tuple[str, str], float]:
    return {
        (labels["call"], labels["decision"]): value
        for name, labels, value in samples(text)
        if name == "callgate_admissions_total"
    }


def _auth(handle) -> dict[str, str]:
    return {"Authorization": handle.auth}


# -- the turn deadline ------------------------------------------------------------------------


def _read_past_the_turn_deadline(handle) -> bytes:
    """A caller that reads a turn outliving `turn_s` to its end: what it received."""
    received = bytearray()
    with (
        httpx.Client(timeout=TURN_S + 30.0) as client,
        client.stream("POST", f"{handle.url}/", json=long_body(LONG), headers=_auth(handle)) as r,
    ):
        assert r.status_code == 200
        try:
            for piece in r.iter_bytes():
                received += piece
        except httpx.RemoteProtocolError as e:
            # pytrace=False: the message says it all, and httpx's deep traceback adds nothing.
            pytest.fail(
                f"stream cut at the turn deadline ({e}); it ended: {bytes(received[-300:])!r}",
                pytrace=False,
            )
    return bytes(received)


def test_the_turn_deadline_cuts_off_a_stalled_reader_and_ends_a_readers_turn_audibly(
    busy, idle_before
):
    """Two turns outlive `turn_s` at once (one deadline's wait for both):

    * a reader that stops reading (a small window, never read) is cut off at the deadline,
      counted as `deadline`, and its engine request aborted;
    * a caller that reads still hears the turn end audibly (issue 4: "The call must never go
      silent or get a broken stream"): the fallback sentence, a final chunk and `[DONE]`.
    """
    body = json.dumps(long_body(LONG)).encode()
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(_read_past_the_turn_deadline, busy)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(address(busy))
            sock.sendall(request_head(busy, auth=busy.auth, length=len(body)) + body)
            # The engine works for both until the deadline...
            assert wait_for(lambda: load(busy).running == 2, 5.0), load(busy)
            # ...then both turns end, counted as `deadline`, and the engine requests aborted.
            cut = wait_for(
                lambda: delta(outcomes(busy), idle_before).get("deadline") == 2,
                TURN_S + 10.0,
                0.2,
            )
            assert cut, delta(outcomes(busy), idle_before)
            idle = wait_idle(busy)
            assert idle.idle, idle
        received = reading.result(timeout=30.0)
    assert well_formed(received).content.endswith(FALLBACK)
    assert delta(outcomes(busy), idle_before) == {"deadline": 2}
    _assert_serves(busy)


# -- barge-in --------------------------------------------------------------------------------


def test_a_barge_in_supersedes_the_calls_open_turn(busy, idle_before):
    """A barge-in: the gateway sends the call's next turn while its last one still streams. The
    older turn is aborted in the engine at once and ends with `[DONE]` and no fallback; the
    newer one is served. A turn of another call is untouched."""
    session = "147417592084^1341barge"
    mark = len(busy.log_text())

    def body(text: str, max_tokens: int, call: str = session) -> dict[str, Any]:
        messages = [*EARLIER, {"role": "user", "content": text}]
        return {**long_body(max_tokens), "session_id": call, "messages": messages}

    async def scenario() -> tuple[bytes, httpx.Response, float]:
        async with async_client() as client:

            async def open_(payload: dict[str, Any]) -> httpx.Response:
                request = client.build_request(
                    "POST", f"{busy.url}/", json=payload, headers=_auth(busy)
                )
                return await client.send(request, stream=True)

            other = await open_(body("Tell me a story.", LONG, "another-call"))
            old = RawStream(await open_(body("Tell me a story.", LONG)))
            await old.until(2)  # the old turn is speaking
            barged = time.time()
            new = await client.post(
                f"{busy.url}/", json=body("Wait, one more thing.", 40), headers=_auth(busy)
            )
            old_raw = await old.rest()
            await old.response.aclose()
            await other.aclose()  # the other call hangs up: it was streaming all along
            return old_raw, new, barged

    old_raw, response, barged = asyncio.run(scenario())
    assert response.status_code == 200, response.text
    old = well_formed(old_raw)  # a final chunk and [DONE]
    assert old.content and FALLBACK not in old.content, old.content
    new = well_formed(response.content)
    assert new.finish_reason == "length" and FALLBACK not in new.content
    lines = [f for f in turn_lines(log_since(busy, mark)) if f.get("session_id") == session]
    assert sorted(f["outcome"] for f in lines) == ["length", "superseded"], lines
    (gone,) = [f for f in lines if f["outcome"] == "superseded"]
    assert gone["call"] == "continuing"
    # Aborted at once: the superseded turn's line is written within 2 s of the barge-in.
    assert logged_at(gone) - barged < 2.0, (logged_at(gone), barged)
    assert gone["output_tokens"] < LONG
    changed = delta(outcomes(busy), idle_before)
    assert changed == {"superseded": 1, "length": 1, "client_gone": 1}, changed
    _assert_idle_and_serving(busy)


# -- engine death with streams open (the server exits) ---------------------------------------


@pytest.mark.compat  # how vLLM's client reports a dead core
def test_engine_death_mid_stream_ends_turns_audibly_and_exits_nonzero(busy_slot, idle_before):
    busy = busy_slot.use_up()
    family = descendants(busy)
    core = engine_core(busy)
    seen_health: list[int] = []
    seen_turns: list[tuple[int, str | None]] = []

    async def watch(client: httpx.AsyncClient) -> None:
        """Poll /health and try new turns until the process is gone; record what was seen."""
        deadline = time.monotonic() + 60.0
        while busy.proc.poll() is None and time.monotonic() < deadline:
            try:
                seen_health.append((await client.get(f"{busy.url}/health")).status_code)
                response = await client.post(f"{busy.url}/", json=long_body(4), headers=_auth(busy))
            except httpx.TransportError:
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 200:
                problem = _stream_problem(response.content)
            else:
                problem = _error_problem(response)
            seen_turns.append((response.status_code, problem))

    async def scenario() -> list[bytes]:
        async with async_client() as client, httpx.AsyncClient(timeout=10.0) as probe:
            opened = await open_streams(client, busy, long_body(LONG), MAX_NUM_SEQS, 3)
            core.send_signal(signal.SIGKILL)
            watcher = asyncio.create_task(watch(probe))
            bodies = await read_to_end(opened)
            await watcher
            return bodies

    bodies = asyncio.run(scenario())
    code = busy.proc.wait(timeout=30.0)
    for raw in bodies:
        stream = well_formed(raw)
        assert stream.content.endswith(FALLBACK), stream.content[-80:]
    assert code == 3  # EXIT_ENGINE_DEAD
    assert 503 in seen_health, seen_health
    assert (503, None) in seen_turns, seen_turns
    assert all(problem is None for _, problem in seen_turns), seen_turns
    assert_processes_gone(family)


def _stream_problem(body: bytes) -> str | None:
    try:
        well_formed(body)
    except AssertionError as e:
        return f"broken stream: {e}"
    return None


def _error_problem(response: httpx.Response) -> str | None:
    try:
        assert_error_shape(response, 503)
    except (AssertionError, KeyError, ValueError) as e:
        return f"{response.status_code}: {e!r}"
    return None
