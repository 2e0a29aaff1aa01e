"""The in-flight count: one limit per server, also when several processes share it."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

from server.serving.admission import Admission, SharedSlots

CTX = multiprocessing.get_context("spawn")


def test_local_count_holds_the_limit() -> None:
    a = Admission()
    a.limit = 2
    assert a.try_enter() and a.try_enter()
    assert not a.try_enter()
    a.leave()
    assert a.in_flight == 1 and a.try_enter()


def test_shared_count_is_one_limit_for_every_holder(tmp_path: Path) -> None:
    shared = SharedSlots.create(CTX, 2, str(tmp_path))
    first, second = Admission(shared, 0), Admission(shared, 1)
    first.limit = second.limit = 3
    assert first.try_enter() and second.try_enter() and second.try_enter()
    assert not first.try_enter() and not second.try_enter()
    assert first.in_flight == second.in_flight == 3
    second.leave()
    assert first.try_enter()
    assert list(shared.counts) == [2, 1]


def _take(shared: SharedSlots, index: int, limit: int, tries: int, won: Synchronized[int]) -> None:
    a = Admission(shared, index)
    a.limit = limit
    for _ in range(tries):
        if a.try_enter():
            with won.get_lock():
                won.value += 1


def test_processes_racing_for_slots_never_exceed_the_limit(tmp_path: Path) -> None:
    shared, won = SharedSlots.create(CTX, 4, str(tmp_path)), CTX.Value("i", 0)
    procs = [CTX.Process(target=_take, args=(shared, i, 50, 200, won)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert won.value == sum(shared.counts) == 50


def _die_holding_the_lock(shared: SharedSlots, holding: Synchronized[int]) -> None:
    a = Admission(shared, 0)
    a.limit = 10
    assert a.try_enter()
    with a._lock():
        holding.value = 1
        time.sleep(600)  # killed here, inside the lock


def test_a_worker_killed_inside_the_lock_blocks_nobody_and_its_turns_are_freed(
    tmp_path: Path,
) -> None:
    shared, holding = SharedSlots.create(CTX, 2, str(tmp_path)), CTX.Value("i", 0)
    proc = CTX.Process(target=_die_holding_the_lock, args=(shared, holding))
    proc.start()
    deadline = time.monotonic() + 60
    while not holding.value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holding.value, "the worker never took the lock"
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=10)
    fd = os.open(shared.lock_path, os.O_RDWR)
    try:  # free at once: a lock the dead worker still held would raise BlockingIOError here
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    other = Admission(shared, 1)
    other.limit = 1
    # The dead worker's turn still counts until the supervisor frees it...
    assert other.in_flight == 1 and not other.try_enter()
    assert shared.release(0) == 1
    # ...and then the slot is free at once, with the limit still exact.
    assert other.try_enter() and not other.try_enter()
