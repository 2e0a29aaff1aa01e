"""The supervisor of several workers, on real processes with the engine core left out.

A stalled start (workers whose engine client never connects), a worker that exits because the
engine hung, a worker killed with turns in flight: the real engine cannot produce these on demand,
so the workers here are plain processes that sleep, exit or hold admission slots, and the engine
core is a stand-in that stays alive. The 2-worker start on the real engine is in
tests/reliability/test_workers.py; `benchmarks/worker_starts.py` counts stalled starts.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path

import pytest

from server.base.exits import EXIT_ENGINE_HUNG, EXIT_LOAD_FAILED, EXIT_WORKER_DIED
from server.base.settings import Settings
from server.process import workers
from server.serving.admission import SharedSlots
from tests.unit import supervised

CTX = multiprocessing.get_context("spawn")


class AliveCore:
    @property
    def engine_processes(self) -> list[BaseProcess]:
        return []

    def engine_alive(self) -> bool:
        return True


def _start(sup: workers.Supervisor, procs: list[BaseProcess]) -> None:
    for p in procs:
        p.start()
    sup.started(procs)


def _connected(n: int, value: int) -> SynchronizedArray[int]:
    flags: SynchronizedArray[int] = CTX.Array("i", [value] * n, lock=False)  # type: ignore[assignment]
    return flags


@pytest.fixture(autouse=True)
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))


@pytest.fixture
def settings() -> Settings:
    s = Settings()
    s.shutdown.drain_s = 1.0
    return s


def test_workers_that_never_connect_are_killed_and_the_start_is_repeated(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "CONNECT_GRACE_S", 1.0)
    sup = workers.Supervisor(settings)
    procs = [CTX.Process(target=supervised.sleep) for _ in range(2)]
    _start(sup, procs)
    started = time.monotonic()
    assert sup.watch(AliveCore(), _connected(2, 0)) == workers._STALLED
    assert time.monotonic() - started < 30
    assert [p.exitcode for p in procs] == [-signal.SIGKILL] * 2


def test_connected_workers_are_not_restarted(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "CONNECT_GRACE_S", 0.5)
    sup = workers.Supervisor(settings)
    procs = [
        CTX.Process(target=supervised.exit_with, args=(0,)),
        CTX.Process(target=supervised.sleep),
    ]
    _start(sup, procs)
    time.sleep(1.0)  # past the grace: connected workers are left alone
    sup.on_signal(signal.SIGTERM, None)
    assert sup.watch(AliveCore(), _connected(2, 1)) == 0


def test_a_stalled_start_is_tried_three_times_then_the_server_exits_4(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(workers.tempfile, "gettempdir", lambda: str(tmp_path))
    results = iter([workers._STALLED, workers._STALLED, 0])
    monkeypatch.setattr(workers, "_run_once", lambda *a: next(results))
    assert workers.supervise(settings, [], None) == 0  # type: ignore[arg-type]
    monkeypatch.setattr(workers, "_run_once", lambda *a: workers._STALLED)
    assert workers.supervise(settings, [], None) == EXIT_LOAD_FAILED  # type: ignore[arg-type]


def test_a_worker_that_found_the_engine_hung_makes_the_server_exit_6(settings: Settings) -> None:
    sup = workers.Supervisor(settings)
    procs = [
        CTX.Process(target=supervised.exit_with, args=(EXIT_ENGINE_HUNG,)),
        CTX.Process(target=supervised.sleep),
    ]
    _start(sup, procs)
    assert sup.watch(AliveCore(), _connected(2, 1)) == EXIT_ENGINE_HUNG
    assert procs[1].exitcode in (0, -signal.SIGTERM)  # told to drain, not killed


def test_a_killed_workers_turns_are_freed_at_once(settings: Settings, tmp_path: Path) -> None:
    sup = workers.Supervisor(settings)
    sup.slots = SharedSlots.create(CTX, 2, str(tmp_path))
    procs = [
        CTX.Process(target=supervised.hold_turns, args=(sup.slots, 0, 3)),
        CTX.Process(target=supervised.sleep),
    ]
    _start(sup, procs)
    deadline = time.monotonic() + 60
    while sum(sup.slots.counts[:]) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(sup.slots.counts) == [3, 0]
    assert procs[0].pid is not None
    os.kill(procs[0].pid, signal.SIGKILL)
    assert sup.watch(AliveCore(), _connected(2, 1)) == EXIT_WORKER_DIED
    assert list(sup.slots.counts) == [0, 0]


def test_stale_metrics_directories_are_swept(tmp_path: Path) -> None:
    gone = CTX.Process(target=supervised.exit_with, args=(0,))
    gone.start()
    gone.join()
    live = CTX.Process(target=supervised.sleep)
    live.start()
    try:
        prefix = workers.METRICS_PREFIX
        for name in (f"{prefix}{gone.pid}-a", f"{prefix}{live.pid}-b", f"{prefix}{os.getpid()}-c"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "counter_1.db").write_bytes(b"x")
        (tmp_path / "unrelated").mkdir()
        swept = workers.sweep_metrics_dirs(str(tmp_path))
    finally:
        live.kill()
        live.join()
    assert sorted(swept) == sorted([f"{prefix}{gone.pid}-a", f"{prefix}{os.getpid()}-c"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{prefix}{live.pid}-b", "unrelated"]
