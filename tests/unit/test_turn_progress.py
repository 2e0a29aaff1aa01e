"""The stall clock moves on the tokens the engine produces, not on the text the caller hears.

vLLM holds back the last characters of a reply while they could still start a stop string, and
the filters hold back reasoning and markers: tokens with no text yet. That is the engine
working, not a stall; counted as silence, one caller's long stop string would flip `/ready` to
`stalled` and, held long enough, make the server exit as hung under every other call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from server.engine.api import Delta
from server.serving.metrics import Metrics
from server.serving.progress import Progress
from server.serving.turn import Turn
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, scripted_turn

LONG_AGO = 0.0  # perf_counter time far before any token of the test


def _held_back(n: int) -> list[object]:
    """`n` steps of one token each whose text is held back (none of it given out yet)."""
    return [Delta("", 1, False, None, 0) for _ in range(n)]


def _turn(engine: ScriptedEngine, speech_filter: bool = False) -> tuple[Turn, Progress]:
    plan = scripted_turn(engine, speech_filter=speech_filter).plan
    metrics = Metrics(CollectorRegistry())
    metrics.declare([plan.alias])
    progress = Progress(now=LONG_AGO)
    return Turn(plan, engine, metrics, lambda turn: None, progress), progress


async def _until(condition: Callable[[], bool]) -> None:
    """Let the engine's steps run until `condition` (bounded, so a broken test ends)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("speech_filter", [False, True])
def test_tokens_before_any_text_move_the_stall_clock(speech_filter: bool) -> None:
    engine = ScriptedEngine(script=[*_held_back(3), STALL])
    turn, progress = _turn(engine, speech_filter)

    async def scenario() -> list[str]:
        texts = turn.texts()
        first = asyncio.ensure_future(anext(texts))
        await _until(lambda: turn.record.output_tokens == 3)
        assert progress.at > LONG_AGO, "tokens without text were counted as silence"
        turn.interrupt("deadline")
        return [await first] + [text async for text in texts]

    assert asyncio.run(scenario()) == [FALLBACK]


def test_tokens_held_back_mid_reply_move_the_stall_clock() -> None:
    engine = ScriptedEngine(script=["Your table", *_held_back(3), STALL])
    turn, progress = _turn(engine)

    async def scenario() -> list[str]:
        texts = turn.texts()
        said = [await anext(texts)]
        progress.at = LONG_AGO
        rest = asyncio.ensure_future(anext(texts))
        await _until(lambda: turn.record.output_tokens == 4)
        assert progress.at > LONG_AGO, "tokens without text were counted as silence"
        turn.interrupt("deadline")
        return [*said, await rest] + [text async for text in texts]

    assert asyncio.run(scenario()) == ["Your table", " " + FALLBACK]


def test_a_step_without_tokens_does_not_move_the_stall_clock() -> None:
    # vLLM's last delta of an aborted request carries no token: it is not progress.
    engine = ScriptedEngine(script=[Delta("", 0, False, None, 0), STALL])
    turn, progress = _turn(engine)

    async def scenario() -> None:
        texts = turn.texts()
        first = asyncio.ensure_future(anext(texts))
        await _until(lambda: bool(engine.requests))
        for _ in range(10):
            await asyncio.sleep(0)
        assert progress.at == LONG_AGO
        turn.interrupt("deadline")
        assert [await first] + [text async for text in texts] == [FALLBACK]

    asyncio.run(scenario())
