"""Several front-end processes on one engine core (`server.workers: 2`): still one server.

Real engine, tiny checkpoint, a real server process with two workers. One server for the tests
that leave it as they found it (streams, spread, admission, metrics, hang-ups), which the
engine-death test then uses up; worker death gets a server of its own. Draining on SIGTERM with
two workers is in tests/reliability/test_reliability_shutdown.py. SharedCore, the engine's
clients in the workers and vLLM's metrics across processes are the most release-specific code
there is: all but the worker-death test are `compat`.
"""

from __future__ import annotations

import asyncio
import collections
import re
import signal
import time
from typing import Any

import httpx
import psutil
import pytest

from benchmarks.lib.servers import free_port
from tests.conftest import ServerSlot
from tests.wire import (
    FALLBACK,
    RawStream,
    assert_aborted_in_time,
    assert_error_shape,
    assert_processes_gone,
    async_client,
    delta,
    descendants,
    engine_core,
    load,
    log_since,
    logged_at,
    long_body,
    metric,
    new_request_id,
    open_streams,
    outcomes,
    read_to_end,
    scrape,
    turn_lines,
    wait_for,
    wait_idle,
    well_formed,
)

pytestmark = pytest.mark.slow

WORKERS = 2
MAX_IN_FLIGHT = 3
NEW_CALL_MAX = 2  # past two turns in flight only calls in progress get in
LONG = 1500  # output tokens: a turn that outlasts every step of a test here
ENV = {
    "CALLGATE_SERVER__WORKERS": str(WORKERS),
    # As configs/gpu.yaml ships it: /metrics only on the admin port, which every worker serves.
    "CALLGATE_SERVER__ADMIN_PORT": str(free_port()),
    "CALLGATE_LIMITS__MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    "CALLGATE_LIMITS__NEW_CALL_MAX_IN_FLIGHT": str(NEW_CALL_MAX),
    "CALLGATE_SAMPLING__MAX_TOKENS": str(LONG),
}
_WORKER_LINE = re.compile(r"front-end worker (\d+) \(pid (\d+)\)")


@pytest.fixture(scope="module")
def two_slot(start_server):
    with ServerSlot(lambda: start_server(env=ENV)) as slot:
        yield slot


@pytest.fixture
def two(two_slot):
    """The module's server (a fresh one if the engine-death test used the last one up)."""
    return two_slot.get()


@pytest.fixture
def idle(two):
    assert wait_idle(two, within_s=10.0).idle, load(two)
    return outcomes(two)


def _auth(handle) -> dict[str, str]:
    return {"Authorization": handle.auth}


def _worker_pids(handle) -> dict[int, int]:
    return {int(i): int(pid) for i, pid in _WORKER_LINE.findall(handle.log_text())}


def _fresh_connection_turns(handle, count: int, **extra: Any) -> list[httpx.Response]:
    """`count` turns, each on a new connection (as many gateway calls are)."""
    out = []
    for i in range(count):
        with httpx.Client(timeout=60.0) as client:
            body = {**long_body(4), "session_id": f"workers-{i}", **extra}
            out.append(client.post(f"{handle.url}/", json=body, headers=_auth(handle)))
    return out


@pytest.mark.compat
def test_info_gauge_says_what_runs(two):
    text = scrape(two)
    assert metric(text, "callgate_info", workers=str(WORKERS)) == 1.0
    info = [line for line in text.splitlines() if line.startswith("callgate_info{")]
    assert len(info) == 1 and 'vllm_version="0.' in info[0], info
    assert sorted(_worker_pids(two)) == list(range(WORKERS))


@pytest.mark.compat  # the cached-token count that vLLM's output carries
def test_the_prompts_are_warmed_once_for_both_workers(two):
    """One engine core for both workers: worker 0 warms each alias's system prompt once before
    the server is ready, and a call's first turn finds it cached, whichever worker takes it."""
    lines = two.log_text().splitlines()
    assert len([line for line in lines if "warmed the system prompt of first-words" in line]) == 1
    for i in range(4):  # fresh connections: both workers
        body = {
            "model": "first-words",  # tests/tiny.yaml: a fixed prompt longer than one KV block
            "stream": True,
            "max_tokens": 1,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Hello, this is caller {i}."}],
            "biz_params": {"city": f"city {i}"},
        }
        with httpx.Client(timeout=60.0) as client:
            response = client.post(f"{two.url}/", json=body, headers=_auth(two))
        usage = well_formed(response.content).usage
        assert usage is not None and usage["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.compat
def test_metrics_only_on_the_admin_port_whichever_worker_answers(two):
    for _ in range(6):  # fresh connections: both workers answer
        with httpx.Client(timeout=30.0) as client:
            assert client.get(f"{two.url}/metrics").status_code == 404
            assert client.get(two.metrics_url).status_code == 200
    assert two.metrics_url.startswith(two.admin_url)


@pytest.mark.compat
def test_streams_are_well_formed_and_spread_over_every_worker(two, idle):
    mark = len(two.log_text())
    responses = _fresh_connection_turns(two, 24)
    for response in responses:
        assert response.status_code == 200, response.text
        assert well_formed(response.content).finish_reason == "length"
    assert wait_for(lambda: len(turn_lines(log_since(two, mark))) == 24, 10.0)
    served = collections.Counter(line["pid"] for line in turn_lines(log_since(two, mark)))
    assert set(served) == set(_worker_pids(two).values()), served
    # The kernel hashes connections over the workers' sockets: even, within chance.
    assert min(served.values()) >= 4, served


@pytest.mark.compat
def test_metrics_are_exact_sums_over_workers(two, idle):
    before = scrape(two)
    responses = _fresh_connection_turns(two, 10)
    assert [r.status_code for r in responses] == [200] * 10
    # Scrapes on fresh connections reach either worker; every one must show the same sums.
    for _ in range(4):
        after = scrape(two)
        for name, labels in (
            ("callgate_time_to_first_token_seconds_count", {}),
            ("callgate_requests_total", {"outcome": "length"}),
            ("callgate_output_tokens_total", {}),
            ("vllm:request_success_total", {}),
        ):
            grown = metric(after, name, **labels) - metric(before, name, **labels)
            assert grown == (40 if name == "callgate_output_tokens_total" else 10), (name, grown)
    assert metric(after, "callgate_requests_in_flight") == 0
    assert metric(after, "callgate_engine_up") == 1


@pytest.mark.compat
def test_exemplars_survive_several_workers(two, idle):
    _fresh_connection_turns(two, 8)
    seen: set[str] = set()
    for _ in range(6):
        with httpx.Client(timeout=30.0) as client:
            text = client.get(
                two.metrics_url, headers={"Accept": "application/openmetrics-text"}
            ).text
        seen |= set(re.findall(r'# \{session_id="(workers-\d+)"\}', text))
    assert seen, "no TTFT exemplar in the OpenMetrics exposition"


@pytest.mark.compat
def test_admission_is_global_and_keeps_room_for_calls_in_progress(two, idle):
    """Calls first across workers: a burst of new calls gets exactly the new-call level, a
    burst of turns of calls in progress the rest of the total, wherever each lands; refusals
    are at once, and the admitted turns' hang-ups reach the engine from either worker."""
    hung_up: dict[str, float] = {}
    held: list[RawStream] = []

    async def burst(
        client: httpx.AsyncClient, body: dict[str, Any], n: int
    ) -> tuple[list[httpx.Response], list[httpx.Response]]:
        requests = [
            client.build_request(
                "POST",
                f"{two.url}/",
                json=body,
                headers={**_auth(two), "X-Request-Id": new_request_id()},
            )
            for _ in range(n)
        ]
        responses = await asyncio.gather(*(client.send(r, stream=True) for r in requests))
        admitted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        for r in refused:
            await r.aread()
        for stream in (streams := [RawStream(r) for r in admitted]):
            await stream.until(2)
        held.extend(streams)  # kept: a collected stream's iterator would hang up
        return admitted, refused

    async def scenario() -> tuple[list[int], list[httpx.Response]]:
        async with async_client() as client:
            new, refused = await burst(client, long_body(LONG), 4 * MAX_IN_FLIGHT)
            later, refused_later = await burst(
                client, long_body(LONG, continuing=True), 4 * MAX_IN_FLIGHT
            )
            for r in new + later:  # every caller hangs up mid-stream
                hung_up[r.request.headers["x-request-id"]] = time.time()
                await r.aclose()
            return [len(new), len(later)], refused + refused_later

    admitted, refused = asyncio.run(scenario())
    # Per-worker limits would admit up to WORKERS x the limits.
    assert admitted == [NEW_CALL_MAX, MAX_IN_FLIGHT - NEW_CALL_MAX], admitted
    for response in refused:
        body = assert_error_shape(response, 503)
        assert body["error"]["code"] == "server_overloaded"
        assert response.headers["retry-after"].isdigit()
    assert_aborted_in_time(two, hung_up)
    assert wait_idle(two).idle, load(two)
    changed = delta(outcomes(two), idle)
    assert changed == {"rejected": 8 * MAX_IN_FLIGHT - 3, "client_gone": MAX_IN_FLIGHT}, changed


@pytest.mark.compat
def test_a_calls_newer_turn_on_another_worker_supersedes_its_open_turn(two, idle):
    """One open turn per call across workers: the call's turn streams on one worker, its next
    turn arrives on the other, and the old turn ends at once with `[DONE]` and no fallback."""
    session = "147417592084^1341workers"
    mark = len(two.log_text())
    pids = _worker_pids(two)

    def body(text: str, max_tokens: int) -> dict[str, Any]:
        turn = long_body(max_tokens, continuing=True)
        return {**turn, "session_id": session, "messages": [*turn["messages"][:-1], _user(text)]}

    async def scenario() -> tuple[bytes, httpx.Response, float, set[int]]:
        async with httpx.AsyncClient(timeout=60.0) as first:
            old = RawStream(
                await first.send(
                    first.build_request(
                        "POST", f"{two.url}/", json=body("A story.", LONG), headers=_auth(two)
                    ),
                    stream=True,
                )
            )
            await old.until(2)
            home = _worker_of(old.response, pids)
            # A connection that the other worker accepted (the kernel spreads them).
            clients = []
            try:
                for _ in range(50):
                    client = httpx.AsyncClient(timeout=60.0)
                    clients.append(client)
                    async with client.stream("GET", f"{two.url}/health") as probe:
                        other = _worker_of(probe, pids)
                    if other != home:
                        break
                else:
                    pytest.fail("fifty connections in a row went to one worker")
                barged = time.time()
                new = await client.post(
                    f"{two.url}/", json=body("Wait, one more thing.", 8), headers=_auth(two)
                )
            finally:
                for c in clients:
                    await c.aclose()
            old_raw = await old.rest()
            return old_raw, new, barged, {home, other}

    old_raw, new, barged, workers = asyncio.run(scenario())
    assert workers == {0, 1}
    assert new.status_code == 200, new.text
    assert FALLBACK not in well_formed(new.content).content
    old = well_formed(old_raw)
    assert old.content and FALLBACK not in old.content, old.content
    lines = [f for f in turn_lines(log_since(two, mark)) if f.get("session_id") == session]
    assert sorted(f["outcome"] for f in lines) == ["length", "superseded"], lines
    (gone,) = [f for f in lines if f["outcome"] == "superseded"]
    assert logged_at(gone) - barged < 2.0, (logged_at(gone), barged)
    assert wait_idle(two).idle, load(two)
    assert delta(outcomes(two), idle) == {"superseded": 1, "length": 1}


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _worker_of(response: httpx.Response, pids: dict[int, int]) -> int:
    """Which worker holds the connection `response` came on (by our end's port)."""
    _, port = response.extensions["network_stream"].get_extra_info("client_addr")
    for index, pid in pids.items():
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == port:
                return index
    raise AssertionError(f"no worker holds the connection from port {port}")


# -- destructive: the engine's death uses the module's server up, a worker's gets its own -----


@pytest.mark.compat
def test_engine_death_ends_every_workers_turns_audibly_and_exits_3(two_slot, idle):
    srv = two_slot.use_up()
    family = descendants(srv)
    core = engine_core(srv)

    async def scenario() -> list[bytes]:
        async with async_client() as client:
            body = long_body(LONG, continuing=True)  # MAX_IN_FLIGHT of them: calls in progress
            opened = await open_streams(client, srv, body, MAX_IN_FLIGHT, 2)
            core.send_signal(signal.SIGKILL)
            return await read_to_end(opened)

    bodies = asyncio.run(scenario())
    code = srv.proc.wait(timeout=60.0)
    for raw in bodies:
        assert well_formed(raw).content.endswith(FALLBACK)
    assert code == 3
    assert_processes_gone(family)


def test_a_worker_that_dies_takes_the_server_down_cleanly(start_server):
    env = {**ENV, "CALLGATE_SHUTDOWN__DRAIN_S": "4"}
    with start_server(env=env) as srv:
        family = descendants(srv)
        pids = _worker_pids(srv)
        assert sorted(pids) == list(range(WORKERS)), pids
        psutil.Process(pids[0]).send_signal(signal.SIGKILL)
        # Never a silent port: every attempt is answered or refused at once until the exit.
        answers = []
        while srv.proc.poll() is None:
            try:
                with httpx.Client(timeout=5.0) as client:
                    answers.append(client.get(f"{srv.url}/ready").status_code)
            except httpx.TimeoutException:
                pytest.fail("a connection to the server hung after a worker died")
            except httpx.TransportError:  # refused, or reset by the dying worker: at once
                answers.append(0)
            time.sleep(0.1)
        code = srv.proc.wait(timeout=60.0)
        log = srv.log_text()
    assert code == 5, code
    assert "exited with signal 9" in log
    assert set(answers) <= {0, 200, 503}, answers
    assert_processes_gone(family)
