"""How many turns are in flight, against one limit for the whole server.

With one front-end process the count is a plain integer. With several (`server.workers`), every
worker holds the same shared counter (a `multiprocessing.Value` made by the supervisor), and a
turn is admitted by checking and incrementing it under its lock, so the limit holds for the
server as a whole: N workers never admit N x the limit, and two workers racing for the last slot
cannot both get it. Admission happens once per turn, not per token; the lock costs about a
microsecond.
"""

from __future__ import annotations

from multiprocessing.sharedctypes import Synchronized


class Admission:
    def __init__(self, shared: Synchronized[int] | None = None) -> None:
        self._shared = shared
        self._local = 0
        self.limit = 0  # set once the engine's size is known (Switchboard)

    def try_enter(self) -> bool:
        """Take a slot if one is free; False means refuse the turn."""
        shared = self._shared
        if shared is None:
            if self._local >= self.limit:
                return False
            self._local += 1
            return True
        with shared.get_lock():
            if shared.value >= self.limit:
                return False
            shared.value += 1
        self._local += 1
        return True

    def leave(self) -> None:
        """Give a slot back (the turn has finished, or was refused after admission)."""
        self._local -= 1
        if self._shared is not None:
            with self._shared.get_lock():
                self._shared.value -= 1

    @property
    def in_flight(self) -> int:
        """Turns in flight in the whole server."""
        return self._local if self._shared is None else int(self._shared.value)
