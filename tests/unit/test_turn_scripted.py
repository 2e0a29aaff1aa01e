"""`Turn` on a scripted engine: the endings a real engine cannot be made to produce on demand.

Every exit path aborts the engine request in `finally`; the first-token deadline, the turn
deadline and a shutdown interrupt all end the reply audibly; an engine error mid-stream keeps
what was said; `stream: false` at its deadline keeps the partial reply and the true token counts.
"""

from __future__ import annotations

import asyncio
import json
import time

from server.engine.api import Delta, Engine
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, scripted_turn, texts_of


def test_the_scripted_engine_is_an_engine() -> None:
    engine: Engine = ScriptedEngine(["a"])  # mypy checks the Protocol here
    assert engine.alive


def test_a_finished_reply_is_not_aborted() -> None:
    engine = ScriptedEngine(["Hello", " there."])
    turn = scripted_turn(engine)
    assert asyncio.run(texts_of(turn)) == ["Hello", " there."]
    assert turn.record.outcome == "stop"
    assert turn.record.output_tokens == 2
    assert engine.aborts == []


def test_no_first_token_by_the_deadline_says_the_fallback_and_aborts() -> None:
    engine = ScriptedEngine(script=[STALL])
    turn = scripted_turn(engine, first_token_s=0.05)
    assert asyncio.run(texts_of(turn)) == [FALLBACK]
    assert turn.record.outcome == "deadline"
    assert engine.aborts == ["r.1"]


def test_an_engine_error_mid_stream_keeps_what_was_said_then_the_fallback() -> None:
    engine = ScriptedEngine(script=["Your order", " is", RuntimeError("engine core died")])
    turn = scripted_turn(engine)
    assert asyncio.run(texts_of(turn)) == ["Your order", " is", " " + FALLBACK]
    assert turn.record.outcome == "error"
    assert turn.record.error == "RuntimeError: engine core died"
    assert engine.aborts == ["r.1"]


def test_a_stream_that_ends_without_a_finish_reason_ends_audibly() -> None:
    engine = ScriptedEngine(script=["Half a"])
    turn = scripted_turn(engine)
    assert asyncio.run(texts_of(turn)) == ["Half a", " " + FALLBACK]
    assert turn.record.outcome == "error"


def test_interrupt_mid_stream_aborts_and_ends_with_the_fallback() -> None:
    engine = ScriptedEngine(script=["One", " two", STALL])
    turn = scripted_turn(engine)

    async def run() -> list[str]:
        heard = []
        async for text in turn.texts():
            heard.append(text)
            if len(heard) == 2:
                turn.interrupt("draining")
        return heard

    assert asyncio.run(run()) == ["One", " two", " " + FALLBACK]
    assert turn.record.outcome == "draining"
    assert "r.1" in engine.aborts


def test_the_turn_deadline_interrupts_a_stream_in_progress() -> None:
    engine = ScriptedEngine(script=["Still", " talking", STALL])
    turn = scripted_turn(engine, turn_s=0.2)
    assert asyncio.run(texts_of(turn)) == ["Still", " talking", " " + FALLBACK]
    assert turn.record.outcome == "deadline"
    assert engine.aborts == ["r.1"]


def test_cancellation_while_waiting_for_the_first_token_aborts() -> None:
    engine = ScriptedEngine(script=[STALL], hung=True)
    turn = scripted_turn(engine)

    async def run() -> None:
        task = asyncio.create_task(texts_of(turn))
        while not engine.requests:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert turn.record.outcome == "client_gone"
    assert turn.record.stage == "before_first_token"
    assert engine.aborts == ["r.1"]


def test_a_consumer_that_stops_mid_stream_aborts() -> None:
    engine = ScriptedEngine(script=["a", "b", "c", STALL])
    turn = scripted_turn(engine)

    async def run() -> None:
        texts = turn.texts()
        async for _ in texts:
            break
        await texts.aclose()  # what Starlette does when the caller hangs up

    asyncio.run(run())
    assert turn.record.outcome == "client_gone"
    assert turn.record.stage == "streaming"
    assert engine.aborts == ["r.1"]


def test_stream_false_at_the_turn_deadline_keeps_the_partial_reply_and_true_counts() -> None:
    engine = ScriptedEngine(script=["Your table", " is booked", STALL])
    turn = scripted_turn(engine, turn_s=0.2)
    body = json.loads(asyncio.run(turn.completion()))
    assert body["choices"][0]["message"]["content"] == "Your table is booked " + FALLBACK
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 2
    assert body["usage"]["prompt_tokens"] == 3
    assert turn.record.outcome == "deadline"
    assert engine.aborts == ["r.1"]


def test_cut_off_after_an_engine_that_does_not_stop_keeps_what_was_said() -> None:
    # A hung engine ignores the deadline's abort: the response gives up and cuts the turn.
    engine = ScriptedEngine(script=["Hold on", STALL], hung=True)
    turn = scripted_turn(engine, turn_s=0.05)

    async def run() -> bytes:
        task = asyncio.create_task(turn.completion())
        while not engine.aborts:  # the deadline has fired
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return turn.cut_off()

    body = json.loads(asyncio.run(run()))
    assert body["choices"][0]["message"]["content"] == "Hold on " + FALLBACK
    assert body["usage"]["completion_tokens"] == 1
    assert turn.record.outcome == "deadline"


def test_the_usage_counts_are_the_engines_when_a_delta_carries_several_tokens() -> None:
    engine = ScriptedEngine(script=[Delta("Three tokens", 3, False, None, 2), STALL])
    turn = scripted_turn(engine, turn_s=0.1, arrival=time.perf_counter())
    body = json.loads(asyncio.run(turn.completion()))
    assert body["usage"]["completion_tokens"] == 3
    assert turn.record.cached_tokens == 2
