"""What the caller hears first, on a scripted engine: the time to the first clause of the answer
(after the filters, whatever the split of the reply into deltas) and the filler (after its delay,
once, before the answer; never once the answer has started; the fallback still comes).

The engine is scripted so that the answer can be held back until the test has seen what came
before it: a random-weight model cannot be made late on demand.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from server.engine.api import Delta
from server.serving.turn import Turn
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, scripted_turn, serve_in_process


class HeldEngine(ScriptedEngine):
    """Plays its script, but holds the delta at `hold_at` until `release` is set."""

    def __init__(self, pieces: list[str], hold_at: int = 0) -> None:
        super().__init__(pieces)
        self.hold_at = hold_at
        self.release = asyncio.Event()

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Delta, None]:
        n = 0
        async for delta in super().generate(*args, **kwargs):
            if n == self.hold_at:
                await self.release.wait()
            n += 1
            yield delta


def _content(chunk: bytes) -> str | None:
    """The content of one SSE chunk of a turn (None: the role, final, usage or [DONE] chunk)."""
    data = chunk.decode().removeprefix("data: ").strip()
    if data == "[DONE]":
        return None
    choices = json.loads(data)["choices"]
    if not choices or choices[0]["finish_reason"] is not None:
        return None
    delta = choices[0]["delta"]
    return None if "role" in delta else delta["content"]


async def _stream(turn: Turn, on_content: Any = None) -> list[tuple[str, float]]:
    """The turn's content chunks, each with when the caller received it (perf_counter)."""
    heard = []
    async for chunk in turn.sse():
        text = _content(chunk)
        if text is not None:
            heard.append((text, time.perf_counter()))
            if on_content is not None:
                on_content(text)
    return heard


def _observed(turn: Turn, histogram: str) -> float:
    metric = getattr(turn._metrics, histogram).labels(turn.plan.alias)
    return sum(b.get() for b in metric._buckets)


# -- time to the first clause ----------------------------------------------------------------

REPLIES = {
    "english": "Sure, it costs 3.5 dollars. Anything else?",
    "abbreviation": "Mr. Lee will call you back. Bye",
    "chinese": "好的，您的订单已经发货。",
    "no punctuation": "thank you for calling",
}


def _clause_piece(pieces: list[str]) -> int:
    """The piece in which the reply's first clause ends (the reference: the pure function)."""
    from server.text.clauses import first_clause_end

    end = first_clause_end("".join(pieces))
    assert end is not None
    at = 0
    for n, piece in enumerate(pieces):
        at += len(piece)
        if end - 1 < at:
            return n
    raise AssertionError


@pytest.mark.parametrize("name", list(REPLIES))
def test_the_first_clause_is_timed_at_the_piece_that_ends_it_at_every_split(name: str) -> None:
    reply = REPLIES[name]

    async def run() -> None:
        for cut in range(1, len(reply)):
            pieces = [reply[:cut], reply[cut:]]
            turn = scripted_turn(ScriptedEngine(pieces))
            heard = await _stream(turn)
            assert [text for text, _ in heard] == pieces
            k = _clause_piece(pieces)
            sent = turn.plan.arrival + (turn.record.first_clause or 0.0)
            # Sent after the previous piece was received and no later than its own was.
            assert k == 0 or sent > heard[k - 1][1], (cut, pieces)
            assert sent <= heard[k][1], (cut, pieces)
            assert turn.record.ttft is not None and turn.record.ttft <= turn.record.first_clause
            assert _observed(turn, "first_clause") == 1

    asyncio.run(run())


def test_the_first_clause_is_the_answers_not_the_reasoning() -> None:
    pieces = ["<think>Hmm, well. ", "Ok.</think>", "Hello", " there, caller."]
    turn = scripted_turn(ScriptedEngine(pieces), thinking=True)
    heard = asyncio.run(_stream(turn))
    assert [text for text, _ in heard] == ["Hello", " there, caller."]
    sent = turn.plan.arrival + (turn.record.first_clause or 0.0)
    assert heard[0][1] < sent <= heard[1][1]


def test_stream_false_times_the_first_clause_with_the_whole_body() -> None:
    turn = scripted_turn(ScriptedEngine(["Yes, ", "sure."]))
    asyncio.run(turn.completion())
    assert turn.record.first_clause is not None
    assert turn.record.first_clause == pytest.approx(turn.record.ttft, abs=0.05)


# -- the filler ------------------------------------------------------------------------------

FILLER = "嗯，"


def test_the_filler_comes_after_its_delay_once_then_the_answer() -> None:
    engine = HeldEngine(["Your table", " is booked."])
    turn = scripted_turn(engine, filler=FILLER, filler_after_s=0.05)

    def seen(text: str) -> None:
        if text == FILLER:
            engine.release.set()  # the answer comes only once the filler has been heard

    heard = asyncio.run(_stream(turn, seen))
    assert [text for text, _ in heard] == [FILLER, "Your table", " is booked."]
    rec = turn.record
    assert rec.filler is not None and rec.filler >= 0.05
    assert rec.outcome == "stop"
    # Neither the first token nor the first clause is the filler's.
    assert rec.ttft is not None and rec.ttft >= heard[1][1] - turn.plan.arrival - 1e-3
    assert rec.first_clause is not None and rec.first_clause > rec.filler


def test_never_two_fillers_however_long_the_wait() -> None:
    engine = HeldEngine(["Here", " you are."])
    turn = scripted_turn(engine, filler=FILLER, filler_after_s=0.01)

    async def run() -> list[tuple[str, float]]:
        asyncio.get_running_loop().call_later(0.2, engine.release.set)  # 20 filler delays
        return await _stream(turn)

    heard = asyncio.run(run())
    assert [text for text, _ in heard] == [FILLER, "Here", " you are."]


def test_no_filler_when_the_answer_comes_first() -> None:
    turn = scripted_turn(ScriptedEngine(["Right away."]), filler=FILLER, filler_after_s=5.0)
    heard = asyncio.run(_stream(turn))
    assert [text for text, _ in heard] == ["Right away."]
    assert turn.record.filler is None


def test_no_filler_once_the_answer_has_started() -> None:
    # The first words come at once, then the engine stalls well past the filler's time.
    engine = HeldEngine(["Let me", " see.", " It is booked."], hold_at=1)
    turn = scripted_turn(engine, filler=FILLER, filler_after_s=0.02)

    async def run() -> list[tuple[str, float]]:
        asyncio.get_running_loop().call_later(0.2, engine.release.set)
        return await _stream(turn)

    heard = asyncio.run(run())
    assert FILLER not in [text for text, _ in heard]
    assert turn.record.filler is None


def test_after_the_filler_the_first_token_deadline_still_ends_the_turn_with_the_fallback() -> None:
    engine = ScriptedEngine(script=[STALL])
    turn = scripted_turn(engine, filler=FILLER, filler_after_s=0.02, first_token_s=0.2)
    heard = asyncio.run(_stream(turn))
    assert [text for text, _ in heard] == [FILLER, " " + FALLBACK]
    assert turn.record.outcome == "deadline"
    assert engine.aborts == ["r.1"]
    # The fallback is what the caller hears of the turn: its first clause, not the filler.
    assert turn.record.first_clause is not None and turn.record.first_clause >= 0.2


def test_a_caller_who_leaves_during_the_filler_wait_aborts_the_engine() -> None:
    engine = ScriptedEngine(script=[STALL])
    turn = scripted_turn(engine, filler=FILLER, filler_after_s=0.02)

    async def run() -> None:
        filled = asyncio.Event()
        caller = asyncio.ensure_future(_stream(turn, lambda text: filled.set()))
        await filled.wait()
        caller.cancel()  # the caller hangs up after the filler: Starlette cancels the body
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(run())
    assert engine.aborts == ["r.1"]
    assert turn.record.outcome == "client_gone"


# -- through the app: the alias's settings ---------------------------------------------------

AUTH = "test-code-0123456789"


def _app(model: Path, engine: ScriptedEngine) -> Any:
    from server.app.routes import create_app
    from server.base.settings import Settings
    from server.engine.adapters import Adapters

    alias = {"fallback_text": FALLBACK, "filler_texts": [FILLER], "filler_after_s": 0.0}
    settings = Settings(
        engine={"model": str(model)},
        models={"default": "qwen-plus", "aliases": {"qwen-plus": alias}},
    )
    return create_app(settings, [AUTH], engine_factory=engine.factory, adapters=Adapters())


@pytest.mark.parametrize("stream", [True, False])
def test_an_aliases_filler_is_said_in_streams_only(tiny_model_dir: Path, stream: bool) -> None:
    body = {"stream": stream, "messages": [{"role": "user", "content": "Is my table booked?"}]}

    async def run() -> str:
        async with serve_in_process(_app(tiny_model_dir, ScriptedEngine(["Yes."]))) as (c, _):
            r = await c.post("/", json=body, headers={"Authorization": AUTH})
            assert r.status_code == 200
            if not stream:
                content: str = r.json()["choices"][0]["message"]["content"]
                return content
            chunks = [line.encode() for line in r.text.split("\n\n") if line]
            return "".join(t for t in map(_content, chunks) if t is not None)

    # filler_after_s 0: a stream always starts with it; a whole body never has it.
    assert asyncio.run(run()) == (FILLER + "Yes." if stream else "Yes.")
