"""Stand-in worker processes for tests/unit/test_supervisor.py.

In a module of their own that imports nothing heavy: a spawned process imports the module of its
target, and the supervisor's module imports vLLM (seconds per process on this machine).
"""

from __future__ import annotations

import signal
import sys
import time

from server.serving.admission import Admission, SharedSlots


def sleep() -> None:
    """A worker that drains and exits 0 on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(600)


def exit_with(code: int) -> None:
    sys.exit(code)


def hold_turns(slots: SharedSlots, index: int, turns: int) -> None:
    """A worker with `turns` turns admitted, then waiting (to be killed)."""
    admission = Admission(slots, index)
    admission.limit = 100
    for _ in range(turns):
        assert admission.try_enter()
    time.sleep(600)
