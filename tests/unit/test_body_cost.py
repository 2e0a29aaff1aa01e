"""What a body costs the event loop when one caller with a code sends a heavy one, on the app
with a scripted engine.

A full server answers 503 before it parses a body, and gives the slot back whatever the parse
says. A large body is parsed in a thread, and a dialog of many small messages is planned in
one, however few characters it has; one such thread at a time per process. Which thread did
the work is recorded by a spy, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import server.wire.schemas
from server.app.routes import create_app
from server.base.settings import Settings
from server.serving.lifecycle import Runtime
from server.serving.switchboard import PARSE_INLINE_BYTES, PLAN_INLINE_MESSAGES, Switchboard
from tests.scripted_engine import FALLBACK, STALL, ScriptedEngine, serve_in_process

HEADERS = {"Authorization": "test-code-0123456789", "Content-Type": "application/json"}
SHORT = {"messages": [{"role": "user", "content": "Is my table booked?"}]}


def _dialog(messages: int, **extra: Any) -> bytes:
    turns = [{"role": ("user", "assistant")[i % 2], "content": "ok"} for i in range(messages)]
    return json.dumps({"messages": turns, **extra}).encode()


def _parts(parts: int) -> bytes:
    """One message of `parts` empty text parts: 16 bytes each, 65,000 in a 1 MiB body."""
    content = ",".join(['{"type":"text"}'] * parts)
    return f'{{"messages":[{{"role":"user","content":[{content}]}}]}}'.encode()


@asynccontextmanager
async def _app(
    model: Path, engine: ScriptedEngine, max_in_flight: int = 4
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = Settings(
        engine={"model": str(model)},
        models={"default": "qwen-plus", "aliases": {"qwen-plus": {"fallback_text": FALLBACK}}},
        limits={"max_in_flight": max_in_flight, "new_call_max_in_flight": max_in_flight},
    )
    app = create_app(settings, [HEADERS["Authorization"]], engine_factory=engine.factory)
    async with serve_in_process(app) as served:
        yield served


def _board(runtime: Runtime) -> Switchboard:
    assert runtime.switchboard is not None
    return runtime.switchboard


def _answered(model: Path, *bodies: bytes, together: bool = False) -> None:
    """Post `bodies` to a fresh app, one after the other or all at once; each is a 200."""

    async def scenario() -> None:
        async with _app(model, ScriptedEngine(["Yes."])) as (client, _):
            posts = [client.post("/", content=body, headers=HEADERS) for body in bodies]
            if together:
                responses = await asyncio.gather(*posts)
            else:
                responses = [await post for post in posts]
            for response in responses:
                assert response.status_code == 200, response.text

    asyncio.run(scenario())


def _spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[bool]:
    """Wrap `owner.name`; each call appends whether it ran on the main (event loop) thread."""
    on_loop: list[bool] = []
    real: Callable[..., Any] = getattr(owner, name)

    def spy(*args: Any) -> Any:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return real(*args)

    monkeypatch.setattr(owner, name, spy)
    return on_loop


def test_a_full_server_answers_503_before_it_parses_the_body(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(script=[STALL])

    async def scenario() -> None:
        async with _app(tiny_model_dir, engine, max_in_flight=1) as (client, runtime):
            holder = asyncio.create_task(client.post("/", json=SHORT, headers=HEADERS))
            while _board(runtime).admission.in_flight < 1:
                await asyncio.sleep(0.01)
            for body in (b"{not json", _parts(65_000)):
                response = await client.post("/", content=body, headers=HEADERS)
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "server_overloaded"
                assert "Retry-After" in response.headers
            assert _board(runtime).admission.in_flight == 1
            _board(runtime).open_turns.copy().pop().interrupt("deadline")
            assert (await holder).status_code == 200

    asyncio.run(scenario())


def test_a_refused_body_gives_its_slot_back(tiny_model_dir: Path) -> None:
    engine = ScriptedEngine(["Yes."])
    refused = (
        b"{not json",
        b"[]",
        _parts(5000),
        json.dumps({**SHORT, "n": 2}).encode(),
        json.dumps({**SHORT, "stop": ["x" * 1000]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "word " * 5000}]}).encode(),
    )

    async def scenario() -> None:
        async with _app(tiny_model_dir, engine, max_in_flight=1) as (client, runtime):
            for body in refused:
                response = await client.post("/", content=body, headers=HEADERS)
                assert response.status_code == 400, response.text
                assert _board(runtime).admission.in_flight == 0
            assert (await client.post("/", json=SHORT, headers=HEADERS)).status_code == 200

    asyncio.run(scenario())


def test_a_large_body_is_parsed_in_a_thread_and_a_small_one_on_the_loop(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop = _spy(monkeypatch, server.wire.schemas, "decode_json")
    large = _dialog(40, max_tokens=1, metadata="x" * PARSE_INLINE_BYTES)
    _answered(tiny_model_dir, large, json.dumps(SHORT).encode())
    assert on_loop == [False, True]


def test_many_small_messages_are_planned_in_a_thread(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4096 messages of two characters: 8 kB of text, but the most rendering a dialog can ask.
    on_loop = _spy(monkeypatch, Switchboard, "plan_now")
    _answered(tiny_model_dir, _dialog(4095, max_tokens=1), _dialog(PLAN_INLINE_MESSAGES - 1))
    assert on_loop == [False, True]


def test_one_large_parse_at_a_time_per_process(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = server.wire.schemas.decode_json
    running, most = 0, 0
    lock = threading.Lock()

    def slow(body: bytes) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)  # long enough for the other calls to try to start one
        with lock:
            running -= 1
        return real(body)

    monkeypatch.setattr(server.wire.schemas, "decode_json", slow)
    large = json.dumps({**SHORT, "metadata": "x" * PARSE_INLINE_BYTES}).encode()

    _answered(tiny_model_dir, *[large] * 4, together=True)
    assert most == 1
