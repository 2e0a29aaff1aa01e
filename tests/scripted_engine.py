"""A scripted engine: planned deltas, errors and ends, for unit tests of `Turn` (the real engine
is the main tier; this reaches what a random-weight model cannot be made to write on demand).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any, cast

from server.chunks import ChunkRenderer
from server.engine import Delta
from server.turn import Progress, Turn, TurnPlan

FALLBACK = "Sorry, could you say that again?"


class ScriptedEngine:
    """Yields the given text pieces as deltas of one token each, then ends with `reason`."""

    def __init__(self, pieces: list[str], reason: str | None = "stop", fail: bool = False):
        self.pieces, self.reason, self.fail = pieces, reason, fail
        self.aborted = False

    async def generate(
        self,
        engine_id: str,
        token_ids: list[int],
        sampling: dict[str, Any],
        adapter: Any = None,
    ) -> AsyncGenerator[Delta, None]:
        for n, piece in enumerate(self.pieces):
            last = n == len(self.pieces) - 1
            if last and self.fail:
                raise RuntimeError("engine died")
            yield Delta(piece, 1, last, self.reason if last else None, 0)

    async def abort(self, engine_id: str) -> None:
        self.aborted = True


def scripted_turn(engine: ScriptedEngine, **fields: Any) -> Turn:
    """A turn on `engine`; `fields` override TurnPlan's (thinking, speech_filter, ...)."""
    plan = TurnPlan(
        request_id="r",
        engine_id="r.1",
        alias="qwen-plus",
        request=cast(Any, None),
        token_ids=[1, 2, 3],
        sampling={},
        renderer=ChunkRenderer("qwen-plus", "chatcmpl-r", 1),
        fallback_text=FALLBACK,
        first_token_s=30.0,
        arrival=time.perf_counter(),
        **fields,
    )
    return Turn(plan, cast(Any, engine), cast(Any, None), lambda turn: None, Progress())


async def texts_of(turn: Turn) -> list[str]:
    return [text async for text in turn.texts()]
