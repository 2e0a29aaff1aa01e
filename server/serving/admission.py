"""How many turns are in flight, against one limit for the whole server.

With one front-end process the count is a plain integer. With several (`server.workers`), the
supervisor makes a `SharedSlots`: one counter per worker in shared memory, and a lock file.
A turn is admitted by summing the counters and incrementing the worker's own under the lock, so
the limit holds for the server as a whole: N workers never admit N x the limit, and two workers
racing for the last slot cannot both get it.

The lock is an `flock` on the lock file, not a `multiprocessing` lock: the kernel releases an
`flock` when its holder dies, so a worker killed inside the lock cannot block the others (a
semaphore would stay taken for good). Each worker counts in its own slot, so when one dies the
supervisor frees that worker's turns at once (`SharedSlots.release`) and the limit stays exact.
Admission happens once per turn, not per token; the lock costs a few microseconds.

Two limits, for calls rather than turns (`server/serving/calls.py`): the total (`limit`, checked
before the body is parsed) and a lower one for the first turns of calls (`new_call_limit`,
checked once the dialog says which the turn is): above it only calls in progress get in, so a
burst of new calls cannot take the room of a caller who is mid-conversation. The per-call record
(`CallTable`) lives beside the counts and under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from server.serving.calls import CallClass, CallTable, entries
from server.serving.placement import EngineLoads, load_rows, release_row


@dataclass
class SharedSlots:
    """What every worker shares (pickled to each by `spawn`): a count per worker, a lock file."""

    counts: SynchronizedArray[int]  # made with lock=False: the flock below guards it
    lock_path: str
    calls: Any  # the `CallTable`'s entries (`calls.entries`), guarded by the same flock
    loads: Any = None  # turns in flight per engine core, a row per worker (`placement`)

    @classmethod
    def create(cls, ctx: BaseContext, workers: int, directory: str) -> SharedSlots:
        """For `workers` workers; the lock file goes in `directory` (the supervisor's own)."""
        path = os.path.join(directory, "admission.lock")
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        counts = ctx.Array("i", workers, lock=False)
        calls = entries(make=ctx.RawArray)
        return cls(counts, path, calls, load_rows(ctx.RawArray, workers))  # type: ignore[arg-type]

    @contextlib.contextmanager
    def locked(self, fd: int) -> Iterator[None]:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def release(self, index: int) -> int:
        """The supervisor, once worker `index` has died: free its turns. Returns how many."""
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            with self.locked(fd):
                freed = int(self.counts[index])
                self.counts[index] = 0
                if self.loads is not None:
                    release_row(self.loads, index)
        finally:
            os.close(fd)
        return freed


class Admission:
    def __init__(self, shared: SharedSlots | None = None, index: int = 0) -> None:
        self._shared = shared
        self.index = index  # this worker's (0 with one process)
        self.lock_path = shared.lock_path if shared is not None else ""
        self._fd: int | None = None  # the lock file, opened in the worker on first use
        self._local = 0
        self.limit = 0  # set once the engine's size is known (Switchboard)
        self.new_call_limit = 0  # the same: the level at which first turns are refused
        self.calls = CallTable(
            shared.calls if shared is not None else None,
            self._lock if shared is not None else None,
        )
        self.loads = EngineLoads(
            shared.loads if shared is not None else None,
            self._lock if shared is not None else None,
            index,
        )

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        assert self._shared is not None
        if self._fd is None:
            # Opened by this process, so its flock is its own (an inherited descriptor would
            # share one lock with every process that holds it).
            self._fd = os.open(self._shared.lock_path, os.O_RDWR | os.O_CLOEXEC)
        return self._shared.locked(self._fd)

    def try_enter(self) -> bool:
        """Take a slot if one is free; False means refuse the turn."""
        shared = self._shared
        if shared is None:
            if self._local >= self.limit:
                return False
            self._local += 1
            return True
        with self._lock():
            if sum(shared.counts[:]) >= self.limit:
                return False
            shared.counts[self.index] += 1
        self._local += 1
        return True

    def admits(self, call: CallClass) -> bool:
        """Once a turn holds a slot and its class is known: whether it may stay. A first turn is
        refused when the turns in flight, its own included, are past `new_call_limit`. Racing
        workers count each other's slots, so they may both refuse, never both pass."""
        return call is CallClass.CONTINUING or self.in_flight <= self.new_call_limit

    def new_call_room(self) -> int:
        """How many first turns could be admitted now (`callgate_new_call_slots`)."""
        return max(0, min(self.new_call_limit, self.limit) - self.in_flight)

    def leave(self) -> None:
        """Give a slot back (the turn has finished, or was refused after admission)."""
        self._local -= 1
        if self._shared is not None:
            with self._lock():
                self._shared.counts[self.index] -= 1

    @property
    def in_flight(self) -> int:
        """Turns in flight in the whole server."""
        return self._local if self._shared is None else int(sum(self._shared.counts[:]))
