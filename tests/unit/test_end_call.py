"""The model ends the call: its marker never reaches the caller, and once the reply has been sent
callgate asks Alibaba's API (a local stand-in, `tests/wire/aliyun.py`) to hang up, exactly once.

The engine is scripted: the random-weight test model cannot be made to write the marker, and
these are the turn's and the switchboard's decisions; the embedded SmolLM2 writing it for real
is tests/models/test_real_model.py. The hang-up service alone is tests/unit/test_hangup.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from server.app.routes import create_app
from server.base.outcomes import Outcome
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.serving.admission import Admission, SharedSlots
from server.serving.hangup import AlibabaHangupApi, Hangups
from server.serving.lifecycle import Runtime
from server.serving.turn import Turn
from server.text.end_call import MARKER
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, scripted_turn, texts_of
from tests.unit.test_hangup import static_key
from tests.wire import metric, parse_chat_stream
from tests.wire.aliyun import OK, AliyunStandIn

AUTH = "test-code-0123456789"
HEADERS = {"Authorization": AUTH}
CLOSING = "Thanks for calling, goodbye!"
GOODBYE = f"You are welcome, goodbye! {MARKER}"


def body(session_id: str | None = "call-7", stream: bool = True) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": "agent",
        "messages": [{"role": "user", "content": "Thanks, that is all. Bye!"}],
        "stream": stream,
    }
    if session_id is not None:
        request["session_id"] = session_id
    return request


# -- the turn -----------------------------------------------------------------------------------


def turn_on(pieces: list[str], **fields: Any) -> Turn:
    engine = ScriptedEngine(pieces)
    return scripted_turn(engine, end_call=True, closing_text=CLOSING, **fields)


def test_the_marker_split_at_every_offset_never_reaches_the_caller() -> None:
    """Through the turn's filter chain (with the speech filter on, as shipped): two deltas cut
    at every offset of the reply, and every character a delta of its own."""
    splits = [[GOODBYE[:cut], GOODBYE[cut:]] for cut in range(len(GOODBYE) + 1)]
    for pieces in [*splits, list(GOODBYE)]:
        for speech_filter in (False, True):
            turn = turn_on([p for p in pieces if p], speech_filter=speech_filter)
            said = "".join(asyncio.run(texts_of(turn)))
            assert said == "You are welcome, goodbye!", (pieces, said)
            assert turn.ends_call and turn.record.outcome is Outcome.STOP


def test_thinking_comes_first_a_marker_in_the_reasoning_ends_nothing() -> None:
    turn = turn_on(
        ["<think>\nMaybe ", MARKER, "?\n</think>\n\n", "Sure, what else?"], thinking=True
    )
    assert "".join(asyncio.run(texts_of(turn))) == "Sure, what else?"
    assert not turn.ends_call


def test_a_marker_alone_says_the_closing_sentence() -> None:
    turn = turn_on([" ", MARKER])
    assert asyncio.run(texts_of(turn)) == [CLOSING]
    assert turn.ends_call


def test_a_reply_without_the_marker_is_unchanged_and_ends_nothing() -> None:
    turn = turn_on(["Your table ", "is booked for ", "eight."])
    assert "".join(asyncio.run(texts_of(turn))) == "Your table is booked for eight."
    assert not turn.ends_call


def _hang_ups(turn: Turn) -> list[Turn]:
    asked: list[Turn] = []
    turn.on_end_call = asked.append
    return asked


def test_a_cut_off_turn_asks_for_no_hang_up() -> None:
    """The marker came, then the engine stalled past the turn's deadline: the caller hears the
    fallback, and the call is not hung up."""
    engine = ScriptedEngine(script=["Goodbye! ", MARKER, STALL])
    turn = scripted_turn(engine, end_call=True, closing_text=CLOSING, turn_s=0.2)
    asked = _hang_ups(turn)

    async def go() -> list[bytes]:
        return [chunk async for chunk in turn.sse()]

    chunks = asyncio.run(go())
    assert turn.record.outcome is Outcome.DEADLINE
    assert FALLBACK.encode() in b"".join(chunks)
    assert asked == [] and not turn.ends_call


def test_a_caller_who_hangs_up_first_is_not_hung_up() -> None:
    turn = turn_on(["Goodbye! ", MARKER, " more", " words"])
    asked = _hang_ups(turn)

    async def go() -> None:
        stream = turn.sse()
        async for chunk in stream:
            if b"more" in chunk:
                break  # the marker has come; the caller leaves before the final chunk
        await stream.aclose()
        turn.finish()

    asyncio.run(go())
    assert turn.record.outcome is Outcome.CLIENT_GONE
    assert asked == []


def test_a_superseded_turn_is_not_hung_up() -> None:
    engine = ScriptedEngine(script=["Goodbye! ", MARKER, " Oh, and", STALL])
    turn = scripted_turn(engine, end_call=True, closing_text=CLOSING)
    asked = _hang_ups(turn)

    async def go() -> None:
        async for text in turn.texts():
            if "and" in text:
                turn.interrupt(Outcome.SUPERSEDED)  # the caller spoke again
        turn.delivered()

    asyncio.run(go())
    assert turn.end_call is not None and turn.end_call.signalled
    assert turn.record.outcome is Outcome.SUPERSEDED
    assert asked == []


# -- the app: the reply, then HangupOperate --------------------------------------------------


def settings_for(model: Path, api: AliyunStandIn | None, **hangup: Any) -> Settings:
    agent = {
        "system_prompt": "You are a phone agent.",
        "fallback_text": FALLBACK,
        "closing_text": CLOSING,
        "end_call": True,
        "speech_filter": True,
    }
    if api is not None:
        hangup = {"endpoint": api.endpoint, "timeout_s": 5.0, "backoff_s": 0.01, **hangup}
    return Settings(
        engine={"model": str(model)},
        models={"default": "agent", "aliases": {"agent": agent}},
        hangup=hangup,
    )


@asynccontextmanager
async def serving(
    settings: Settings, engine: ScriptedEngine, admission: Admission | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, list[float]]]:
    """The app in process, its hang-ups signed with the test key, and when each `[DONE]` was
    handed to the transport (`time.monotonic()`, the stand-in's clock)."""
    app = create_app(
        settings, [AUTH], engine_factory=engine.factory, adapters=Adapters(), admission=admission
    )
    runtime: Runtime = app.state.runtime
    if settings.hangup.endpoint:
        api = AlibabaHangupApi(settings.hangup, static_key())
        runtime.hangups = Hangups(settings.hangup, runtime.metrics.count_hangup, api=api)
    done_at: list[float] = []

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        async def send_timed(message: Any) -> None:
            await send(message)
            if b"[DONE]" in message.get("body", b"") or b'"usage"' in message.get("body", b""):
                done_at.append(time.monotonic())

        await app(scope, receive, send_timed)

    async with app.router.lifespan_context(app):
        while runtime.state == "loading":
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=timed)
        async with httpx.AsyncClient(transport=transport, base_url="http://callgate") as client:
            yield client, runtime, done_at


def hangups_counted(runtime: Runtime, outcome: str) -> float:
    text = runtime.metrics.render("")[0].decode()
    return metric(text, "callgate_hangups_total", model="agent", outcome=outcome)


async def settle(runtime: Runtime) -> None:
    while runtime.hangups.pending:
        await asyncio.sleep(0.01)


def test_one_hang_up_operate_with_the_call_id_after_the_final_chunk(
    tiny_model_dir: Path,
) -> None:
    engine = ScriptedEngine(["You are welcome, ", "goodbye! [END", "_CALL]"])
    with AliyunStandIn() as api:

        async def go() -> None:
            settings = settings_for(tiny_model_dir, api)
            async with serving(settings, engine) as (client, runtime, done_at):
                response = await client.post("/", json=body(), headers=HEADERS)
                stream = parse_chat_stream(response.content)
                assert stream.content == "You are welcome, goodbye!"
                assert stream.finish_reason == "stop"  # then [DONE], checked by the parser
                # stream: false, the same call's next turn: the body says it, no second call.
                again = await client.post("/", json=body(stream=False), headers=HEADERS)
                assert again.json()["choices"][0]["message"]["content"] == stream.content
                await settle(runtime)
                assert hangups_counted(runtime, "sent") == 1
                assert hangups_counted(runtime, "duplicate") == 1
                [call] = api.calls
                assert call.at > done_at[0]  # after the final chunk and [DONE] were sent

        asyncio.run(go())
    [call] = api.calls
    assert call.action == "HangupOperate" and call.signed
    assert call.query == {"CallId": "call-7", "ImmediateHangup": "False"}


def test_stream_false_hangs_up_after_the_body(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(["Goodbye! ", MARKER])
    with AliyunStandIn() as api:

        async def go() -> None:
            async with serving(settings_for(tiny_model_dir, api), engine) as (client, runtime, _):
                response = await client.post("/", json=body(stream=False), headers=HEADERS)
                assert response.json()["choices"][0]["message"]["content"] == "Goodbye!"
                await settle(runtime)

        asyncio.run(go())
    assert [c.query["CallId"] for c in api.calls] == ["call-7"]


def test_a_failing_endpoint_leaves_the_turn_whole_counts_and_bounds_its_retries(
    tiny_model_dir: Path,
) -> None:
    engine = ScriptedEngine(["Goodbye! ", MARKER])
    with AliyunStandIn([(500, {"Code": "InternalError"})]) as api:

        async def go() -> None:
            settings = settings_for(tiny_model_dir, api, attempts=2)
            async with serving(settings, engine) as (client, runtime, _):
                response = await client.post("/", json=body(), headers=HEADERS)
                stream = parse_chat_stream(response.content)
                assert stream.content == "Goodbye!" and stream.finish_reason == "stop"
                await settle(runtime)
                assert hangups_counted(runtime, "failed") == 1
                assert hangups_counted(runtime, "sent") == 0
                served = runtime.metrics.requests.labels("agent", "stop")._value.get()
                assert served == 1

        asyncio.run(go())
        assert len(api.calls) == 2  # hangup.attempts, no more


def test_no_session_id_and_no_configuration_call_nothing(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(["Goodbye! ", MARKER])
    with AliyunStandIn() as api:

        async def go() -> None:
            async with serving(settings_for(tiny_model_dir, api), engine) as (client, runtime, _):
                response = await client.post("/", json=body(session_id=None), headers=HEADERS)
                assert parse_chat_stream(response.content).content == "Goodbye!"
                await settle(runtime)
                assert hangups_counted(runtime, "no_session") == 1
            unconfigured = settings_for(tiny_model_dir, None)
            async with serving(unconfigured, engine) as (client, runtime, _):
                response = await client.post("/", json=body(), headers=HEADERS)
                assert parse_chat_stream(response.content).content == "Goodbye!"
                assert hangups_counted(runtime, "not_configured") == 1

        asyncio.run(go())
        assert api.calls == []


def test_two_workers_hang_a_call_up_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two front-end workers' apps on one shared per-call record (shared memory and the
    admission's flock, as `server.workers: 2` builds it): the call's turns on each end it, the
    stand-in hears one HangupOperate."""
    import multiprocessing

    shared = SharedSlots.create(multiprocessing.get_context("spawn"), 2, str(tmp_path))
    with AliyunStandIn([OK]) as api:

        async def go() -> None:
            settings = settings_for(tiny_model_dir, api)
            first, second = ScriptedEngine(["Bye! ", MARKER]), ScriptedEngine([MARKER])
            async with (
                serving(settings, first, Admission(shared, 0)) as (one, runtime_one, _),
                serving(settings, second, Admission(shared, 1)) as (two, runtime_two, _),
            ):
                said = []
                for client in (one, two):
                    response = await client.post("/", json=body(), headers=HEADERS)
                    said.append(parse_chat_stream(response.content).content)
                assert said == ["Bye!", CLOSING]
                for runtime in (runtime_one, runtime_two):
                    await settle(runtime)
                counted = [
                    hangups_counted(r, o)
                    for r in (runtime_one, runtime_two)
                    for o in ("sent", "duplicate")
                ]
                assert counted == [1, 0, 0, 1]

        asyncio.run(go())
        assert [c.query["CallId"] for c in api.calls] == ["call-7"]
