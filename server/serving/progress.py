"""The stall clock: busy time since the engine last produced a token (/ready, hung exit)."""

from __future__ import annotations

import time


class Progress:
    """The stall clock behind /ready and the hung-engine exit: how long the engine has had
    requests without producing a token for any of them.

    Turns set `at` whenever the engine hands them tokens, with text or without (`Turn._count`):
    text lags tokens while vLLM holds back what could start a stop string, or a filter holds
    back reasoning, and that is work, not a stall. The runtime's watchdog calls `tick` every
    half second.
    Only busy time counts, so an idle hour is not a stall, while turns that each time out
    waiting for a first token add up across the gaps between them."""

    __slots__ = ("_tick", "at", "starved_s")

    def __init__(self, now: float | None = None) -> None:
        self.at = self._tick = time.perf_counter() if now is None else now
        self.starved_s = 0.0

    def tick(self, busy: bool, now: float | None = None) -> float:
        """Advance the clock to `now`; the busy seconds since the last token."""
        now = time.perf_counter() if now is None else now
        if self.at >= self._tick:  # a token came since the last tick
            self.starved_s = 0.0
        if busy:
            self.starved_s += now - max(self._tick, self.at)
        self._tick = now
        return self.starved_s
