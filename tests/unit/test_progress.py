"""The stall clock behind /ready's "stalled" and the hung-engine exit (`turn.Progress`)."""

from __future__ import annotations

import pytest

from server.serving.progress import Progress


def test_idle_time_is_not_a_stall() -> None:
    clock = Progress(now=0.0)
    assert clock.tick(busy=False, now=3600.0) == 0.0
    assert clock.tick(busy=True, now=3600.5) == 0.5


def test_busy_time_without_a_token_adds_up() -> None:
    clock = Progress(now=0.0)
    for t in (0.5, 1.0, 1.5, 2.0):
        clock.tick(busy=True, now=t)
    assert clock.starved_s == 2.0


def test_a_token_resets_the_clock_from_its_time() -> None:
    clock = Progress(now=0.0)
    clock.tick(busy=True, now=10.0)
    clock.at = 10.2  # a token
    assert clock.tick(busy=True, now=10.5) == pytest.approx(0.3)


def test_turns_that_time_out_add_up_across_idle_gaps() -> None:
    # Each turn waits 3 s for a first token that never comes; 2 s idle between turns.
    clock, t = Progress(now=0.0), 0.0
    for _ in range(5):
        for _ in range(6):
            t += 0.5
            clock.tick(busy=True, now=t)
        t += 2.0
        clock.tick(busy=False, now=t)
    assert clock.starved_s == 15.0
