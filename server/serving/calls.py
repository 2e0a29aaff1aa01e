"""Calls, not just turns: which turns belong to a call in progress, and what is kept per call.

A phone call is a series of turns, each of which re-sends the whole dialog. callgate serves a
caller who is already talking before a call that has not started (issue: calls first):

- `classify` says whether a turn is a call's first or a continuing one. The dialog decides, not
  `session_id`: a turn with an earlier user turn in its messages is continuing, even when its
  `session_id` was never seen here (after a restart, on another worker) or is absent. The
  answer is the same on every worker, since it depends on the body alone.
- `CallTable` is the per-call record shared by every front-end worker: which turn of a call is
  open (so that a newer turn supersedes it: one open turn per call), the engine rank that served
  it last (data-parallel affinity) and whether the call's hang-up was claimed. It is a fixed
  array in shared memory, so it is bounded in size (`CAPACITY` calls; the least recently used
  entry of a probe window gives way) and in time (an entry unused for `IDLE_S` is free again).
  With several workers it is read and written under the admission's `flock`
  (`server/serving/admission.py`), which the kernel releases when a holder dies.

vLLM's queue orders by `priority`, lower first (`engine.scheduling_policy: priority`): a
continuing turn goes ahead of a first turn, and start-up warming comes last.
"""

from __future__ import annotations

import ctypes
import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

PRIORITY_CONTINUING = 0
PRIORITY_FIRST = 1
PRIORITY_WARM = 2

CAPACITY = 8192  # calls remembered at once (about 330 KiB of shared memory)
IDLE_S = 900.0  # a call with no turn for this long is forgotten (calls last up to an hour)
PROBE = 8  # slots searched for a key: its home slot and the next seven


class CallClass(StrEnum):
    FIRST = "first"  # no earlier user turn: a call that has not started yet
    CONTINUING = "continuing"  # the caller has spoken before in this call


# The label of a turn refused before its body was parsed (the total limit), whose kind is unknown.
UNCLASSIFIED = "unclassified"


class HasRole(Protocol):
    @property
    def role(self) -> str: ...


def user_turns(messages: Sequence[HasRole]) -> int:
    """How many user turns the dialog holds (consecutive ones count one each)."""
    return sum(1 for m in messages if m.role == "user")


def classify(messages: Sequence[HasRole]) -> CallClass:
    """First or continuing. The turn's own user turn is the last message when that is a user's;
    any user turn before it is an earlier one. A dialog that ends with the assistant (the call
    has just connected, after the opening line) has no user turn of its own, so any user turn in
    it is an earlier one. Two user turns in a row (the caller spoke twice) are two user turns."""
    users = user_turns(messages)
    own = 1 if messages and messages[-1].role == "user" else 0
    return CallClass.CONTINUING if users > own else CallClass.FIRST


def priority(call: CallClass) -> int:
    return PRIORITY_CONTINUING if call is CallClass.CONTINUING else PRIORITY_FIRST


def call_key(key: str) -> int:
    """A call's 64-bit key in the table (never 0, which marks a free slot)."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return digest or 1


class Entry(ctypes.Structure):
    _fields_ = (
        ("key", ctypes.c_uint64),  # `call_key`; 0: free
        ("seen", ctypes.c_double),  # time.monotonic() of its last turn (system-wide on Linux)
        ("turn", ctypes.c_uint64),  # the open turn's number in its worker; 0: none open
        ("worker", ctypes.c_int32),  # the worker of the open turn
        ("rank", ctypes.c_int32),  # the engine rank of its last turn; -1: none yet
        ("hangup", ctypes.c_uint8),  # 1 once its hang-up has been claimed
    )


def entries(n: int = CAPACITY, make: Callable[[Any, int], Any] | None = None) -> Any:
    """The table's storage: shared memory from `make` (`ctx.RawArray`), else this process's."""
    return make(Entry, n) if make is not None else (Entry * n)()


@dataclass(frozen=True)
class OpenTurn:
    """A call's turn that is still generating: where it runs."""

    worker: int
    number: int


class CallTable:
    """The per-call record (see the module docstring). `lock` guards it across workers."""

    def __init__(
        self,
        slots: Any = None,
        lock: Callable[[], AbstractContextManager[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = slots if slots is not None else entries()
        self._lock = lock or nullcontext
        self._clock = clock

    def _find(self, key: int, now: float, create: bool) -> Entry | None:
        """The key's entry; with `create`, a new one in a free, expired or least recent slot."""
        slots, n = self._slots, len(self._slots)
        home = key % n
        spare: Entry | None = None
        for i in range(PROBE):
            e = slots[(home + i) % n]
            if e.key == key:
                return e  # type: ignore[no-any-return]
            if create and (spare is None or _staler(e, spare, now)):
                spare = e
        if spare is not None:
            spare.key, spare.seen, spare.turn, spare.worker = key, now, 0, 0
            spare.rank, spare.hangup = -1, 0
        return spare

    def open_turn(self, key: str, worker: int, number: int) -> OpenTurn | None:
        """Record a newly admitted turn as its call's open one; return the turn it supersedes
        (the call's previous turn, if it is still open)."""
        k = call_key(key)
        with self._lock():
            now = self._clock()
            e = self._find(k, now, create=True)
            assert e is not None
            previous = OpenTurn(e.worker, e.turn) if e.turn else None
            e.turn, e.worker, e.seen = number, worker, now
        return previous

    def close_turn(self, key: str, worker: int, number: int) -> None:
        """The turn has ended: it is no longer its call's open turn (unless a newer one is)."""
        k = call_key(key)
        with self._lock():
            e = self._find(k, 0.0, create=False)
            if e is not None and e.turn == number and e.worker == worker:
                e.turn = 0

    def engine_of(self, key: str) -> int | None:
        """The engine rank that served the call's last turn, if remembered."""
        with self._lock():
            e = self._find(call_key(key), 0.0, create=False)
            return None if e is None or e.rank < 0 else int(e.rank)

    def set_engine(self, key: str, rank: int) -> None:
        with self._lock():
            now = self._clock()
            e = self._find(call_key(key), now, create=True)
            assert e is not None
            e.rank, e.seen = rank, now

    def claim_hangup(self, key: str) -> bool:
        """True exactly once per call, across workers: the caller of this may hang it up."""
        with self._lock():
            now = self._clock()
            e = self._find(call_key(key), now, create=True)
            assert e is not None
            if e.hangup:
                return False
            e.hangup, e.seen = 1, now
            return True


def _staler(e: Entry, than: Entry, now: float) -> bool:
    """Whether slot `e` should give way before `than`: free first, then expired without an open
    turn, then least recently used."""

    def rank(x: Entry) -> tuple[int, float]:
        if x.key == 0:
            return (0, 0.0)
        if not x.turn and now - x.seen > IDLE_S:
            return (1, x.seen)
        return (2, x.seen)

    return rank(e) < rank(than)
