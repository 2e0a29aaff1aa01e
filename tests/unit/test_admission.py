"""The in-flight count: one limit per server, also when several processes share it."""

from __future__ import annotations

import multiprocessing
from multiprocessing.sharedctypes import Synchronized

from server.admission import Admission


def test_local_count_holds_the_limit() -> None:
    a = Admission()
    a.limit = 2
    assert a.try_enter() and a.try_enter()
    assert not a.try_enter()
    a.leave()
    assert a.in_flight == 1 and a.try_enter()


def test_shared_count_is_one_limit_for_every_holder() -> None:
    shared: Synchronized[int] = multiprocessing.get_context("spawn").Value("i", 0)
    first, second = Admission(shared), Admission(shared)
    first.limit = second.limit = 3
    assert first.try_enter() and second.try_enter() and second.try_enter()
    assert not first.try_enter() and not second.try_enter()
    assert first.in_flight == second.in_flight == 3
    second.leave()
    assert first.try_enter()
    assert shared.value == 3


def _take(shared: Synchronized[int], limit: int, tries: int, won: Synchronized[int]) -> None:
    a = Admission(shared)
    a.limit = limit
    for _ in range(tries):
        if a.try_enter():
            with won.get_lock():
                won.value += 1


def test_processes_racing_for_slots_never_exceed_the_limit() -> None:
    ctx = multiprocessing.get_context("spawn")
    shared, won = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_take, args=(shared, 50, 200, won)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert won.value == shared.value == 50
