"""A load client's thread at real-time priority, so that a busy engine cannot starve it.

On a 2-core machine vLLM's CPU engine busy-waits on both cores; an ordinary client then waits
seconds for the CPU, and what it measures is its own starvation. `realtime()` puts the calling
thread (not the process: servers started before or after keep the normal policy) at SCHED_FIFO
10 while inside. It needs root or CAP_SYS_NICE; without, it says so and runs at normal priority.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

PRIORITY = 10


@contextlib.contextmanager
def realtime(quiet: bool = False) -> Iterator[bool]:
    """This thread at SCHED_FIFO `PRIORITY` while inside; False when the system refuses it."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
    except (PermissionError, OSError) as e:
        if not quiet:
            print(f"note: the load client runs at normal priority ({e})", file=sys.stderr)
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
