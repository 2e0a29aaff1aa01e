"""Which engine core serves a turn, when several serve one address (`engine.data_parallel_size`).

Every turn of a call re-sends the whole dialog, and the engine core that served the call's last
turn holds that dialog in its prefix cache: a later turn sent anywhere else prefills the whole
call again, more TTFT on every turn and more the longer the call. vLLM's own balancer looks at
load only. So, with `engine.call_affinity` on:

- a call's first turn goes to the least busy core, as vLLM's balancer would place it (ties
  rotate, so that a burst on idle cores spreads round-robin);
- its later turns go to the core that served it (`CallTable.engine_of`), whichever worker
  receives them;
- unless that core is much busier than the least busy one: more than `affinity_slack` turns
  ahead of it, or full (`max_num_seqs` turns: the turn would wait in vLLM's queue for a batch
  slot) while another has room. Then the call moves, once, and stays on its new core. Sticking
  at any price is worse than moving: a replay study of sticky sessions found far worse tail TTFT
  than cache-aware routing once load is uneven.

A call is its `session_id`, or without one its dialog up to and including its first user turn
(the opening alone is the same for every call of an alias), with the alias.

Busy is turns in flight on the core, counted by us for the whole server: one row of counts per
front-end worker in shared memory (`SharedSlots.loads`), read and written under the admission's
`flock`, so that every worker places by the same numbers and a dead worker's row is freed at
once. `place` is the pure decision; `Placer` is the thin part that reads and writes the counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

MAX_RANKS = 64  # engine.data_parallel_size's ceiling: a row per worker holds this many counts


class Affinity(StrEnum):
    """How a turn's engine core was chosen (`callgate_engine_turns`, the turn log line)."""

    NEW = "new"  # a call's first turn, or one whose core is not known: the least busy core
    HELD = "held"  # the core that served the call's last turn
    RELEASED = "released"  # that core was much busier than the least busy one: moved
    BALANCER = "balancer"  # call_affinity off: vLLM's own balancer chose (core unknown here)


@dataclass(frozen=True)
class Placement:
    rank: int | None  # None: vLLM's balancer chooses
    affinity: Affinity

    @property
    def engine(self) -> str:
        """The metric's `engine` label: the rank, or `any` where vLLM's balancer chose."""
        return "any" if self.rank is None else str(self.rank)


def place(
    loads: Sequence[int], home: int | None, slack: int, capacity: int, start: int = 0
) -> Placement:
    """The core for a turn: `loads` are the turns in flight per core, `home` the core that
    served the call's last turn (None: none known), `slack` how many more turns than the least
    busy core `home` may have and keep the call, `capacity` how many turns one core runs at
    once (`max_num_seqs`). Ties for the least busy go to the first from `start` on."""
    n = len(loads)
    least = start % n
    for i in range(1, n):
        idx = (start + i) % n
        if loads[idx] < loads[least]:
            least = idx
    if home is None or not 0 <= home < n:
        return Placement(least, Affinity.NEW)
    lead = loads[home] - loads[least]
    full = loads[home] >= capacity > loads[least]
    if lead > slack or full:
        return Placement(least, Affinity.RELEASED)
    return Placement(home, Affinity.HELD)


def default_slack(max_num_seqs: int) -> int:
    """`engine.affinity_slack` when unset: half a core's batch, at least 2 (benchmarks/README.md,
    data parallel: on two CPU cores with batches of 8, a slack of 4 kept more calls with their
    cache and had a better TTFT p99 under uneven load than 2, or than moving only off a full
    core)."""
    return max(2, max_num_seqs // 2)


class HasText(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def text(self) -> str: ...


def affinity_key(alias: str, session_id: str | None, messages: Sequence[HasText]) -> str | None:
    """Which call a turn belongs to, for affinity: its `session_id`, else a digest of the alias
    and the dialog up to and including its first user turn; None without either (a dialog of
    the opening alone is the same for every call)."""
    if session_id:
        return session_id
    digest = hashlib.blake2b(alias.encode(), digest_size=16)
    for m in messages:
        digest.update(b"\x00" + m.role.encode() + b"\x00" + m.text.encode())
        if m.role == "user":
            return "dialog:" + digest.hexdigest()
    return None


class EngineTable(Protocol):
    """What placement reads and writes of the per-call record (`calls.CallTable`)."""

    def engine_of(self, key: str) -> int | None: ...
    def set_engine(self, key: str, rank: int) -> None: ...


def load_rows(make: Callable[[Any, int], Any] | None, workers: int) -> Any:
    """The counts' storage: a row of `MAX_RANKS` per worker, shared (`ctx.RawArray`) or local."""
    size = workers * MAX_RANKS
    return make("i", size) if make is not None else [0] * size


class EngineLoads:
    """Turns in flight per engine core, for the whole server: this worker writes its own row,
    everyone reads the sum. `lock` guards the rows across workers (the admission's `flock`)."""

    def __init__(
        self,
        rows: Any = None,
        lock: Callable[[], AbstractContextManager[None]] | None = None,
        index: int = 0,
    ) -> None:
        self._rows = rows if rows is not None else load_rows(None, 1)
        self._lock = lock or nullcontext
        self._own = index * MAX_RANKS

    def totals(self, ranks: int) -> list[int]:
        """Turns in flight on each of the first `ranks` cores, all workers together."""
        with self._lock():
            return self._sum(ranks)

    def _sum(self, ranks: int) -> list[int]:
        rows, workers = self._rows, len(self._rows) // MAX_RANKS
        return [sum(rows[w * MAX_RANKS + r] for w in range(workers)) for r in range(ranks)]

    def take(self, ranks: int, choose: Callable[[list[int]], Placement]) -> Placement:
        """`choose` on the current totals, and its core counted, in one step under the lock."""
        with self._lock():
            placed = choose(self._sum(ranks))
            if placed.rank is not None:
                self._rows[self._own + placed.rank] += 1
        return placed

    def leave(self, rank: int) -> None:
        with self._lock():
            self._rows[self._own + rank] -= 1


def release_row(rows: Any, index: int) -> int:
    """Worker `index` has died: its turns are over (called under the lock). Returns how many."""
    base = index * MAX_RANKS
    freed = sum(rows[base : base + MAX_RANKS])
    for r in range(MAX_RANKS):
        rows[base + r] = 0
    return int(freed)


class Placer:
    """The engine core for each turn of this worker, and its count while the turn runs."""

    def __init__(
        self,
        ranks: int,
        affinity: bool,
        slack: int,
        capacity: int,
        loads: EngineLoads,
        calls: EngineTable,
        start: int = 0,
    ) -> None:
        self.ranks = ranks
        self.affinity = affinity
        self.slack = slack
        self.capacity = capacity
        self._loads = loads
        self._calls = calls
        # Where the search for the least busy core starts, rotating, so that ties spread; each
        # worker starts elsewhere (vLLM's balancer does the same per front-end process).
        self._start = start % ranks

    def place(self, key: str | None) -> Placement:
        """Where the turn of call `key` (None: not known) runs; counted until `leave`."""
        if not self.affinity:
            return Placement(None, Affinity.BALANCER)
        home = self._calls.engine_of(key) if key is not None else None
        start = self._start
        self._start = (start + 1) % self.ranks
        placed = self._loads.take(
            self.ranks, lambda loads: place(loads, home, self.slack, self.capacity, start)
        )
        if key is not None and placed.rank is not None:
            self._calls.set_engine(key, placed.rank)  # also keeps the call's entry fresh
        return placed

    def leave(self, placed: Placement) -> None:
        if placed.rank is not None:
            self._loads.leave(placed.rank)
