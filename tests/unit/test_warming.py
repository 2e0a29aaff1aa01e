"""Start-up warming (`server/serving/warming.py`): each alias's fixed system prompt, once, before
the server says ready. The prefixes are found from the templates (`SystemPrompts.fixed_prefix`),
tokenized as a turn's prompt starts; the runtime runs them on a scripted engine, at the lowest
priority, before `/ready`, once per distinct prompt and only in the process that warms. The
real engine's side (a first turn finds the prompt cached): tests/api/test_api_first_words.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from server.app.routes import create_app
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.serving.calls import PRIORITY_WARM
from server.serving.warming import warm_prompts
from server.text.end_call import INSTRUCTION as END_CALL_INSTRUCTION
from server.text.prompt import PromptBuilder, SystemPrompts, alias_prompts, assemble
from server.text.tokenizer import ChatTokenizer
from tests.scripted_engine import ScriptedEngine, serve_in_process

AUTH = "test-code-0123456789"
CITY = "You are a phone agent. The caller is in {{ biz.city }}."
FIXED = "You are a concise phone agent. Keep it short."


@pytest.mark.parametrize(
    ("template", "prefix"),
    [
        (CITY, "You are a phone agent. The caller is in "),
        (FIXED, FIXED),
        ("Be brief. {% if biz.name %}The caller is {{ biz.name }}.{% endif %}", "Be brief."),
        ("{{ biz.greeting }} Then the rules.", ""),
        ("A {{ biz.get('city', 'nowhere') }} B", "A "),
        ("Total: {{ biz.n + 1 }}", ""),  # fails on the probes: no prefix known
        ("", ""),
    ],
)
def test_the_fixed_prefix_ends_at_the_first_per_call_value(template: str, prefix: str) -> None:
    assert SystemPrompts({"a": template}).fixed_prefix("a") == prefix


def _settings(model: Path, **aliases: dict[str, Any]) -> Settings:
    return Settings(
        engine={"model": str(model)},
        models={"default": next(iter(aliases)), "aliases": aliases},
    )


ALIASES: dict[str, dict[str, Any]] = {
    "qwen-plus": {"system_prompt": CITY},
    "qwen-max": {"system_prompt": FIXED},
    "qwen-turbo": {"system_prompt": FIXED},  # the same prompt: warmed once
    "plain": {},  # no system prompt: nothing to warm
}


def test_one_prompt_per_distinct_prefix_in_a_turns_own_token_ids(tiny_model_dir: Path) -> None:
    settings = _settings(tiny_model_dir, **ALIASES)
    tokenizer = ChatTokenizer.load(str(tiny_model_dir), trust_remote_code=False)
    prompts = warm_prompts(settings, tokenizer, ScriptedEngine())
    assert [p.aliases for p in prompts] == [("qwen-plus",), ("qwen-max", "qwen-turbo")]
    assert all(p.adapter is None for p in prompts)

    builder = PromptBuilder(tokenizer, 2048, reserve=32, thinking=False)
    for prompt, system in zip(
        prompts, [CITY.replace("{{ biz.city }}", "Hangzhou"), FIXED], strict=True
    ):
        turn = builder.build(assemble(system, [("user", "Is my table booked?")])).token_ids
        shared = next(
            i for i, (a, b) in enumerate(zip(prompt.token_ids, turn, strict=False)) if a != b
        )
        # The turn starts with the warmed tokens up to the prefix's end (its last token may be
        # cut differently where the per-call value joins it).
        head = len(tokenizer.encode_template("<|im_start|>system\n"))
        prefix = SystemPrompts({"a": system if system == FIXED else CITY}).fixed_prefix("a")
        assert shared >= head + len(tokenizer.encode_text(prefix)) - 1


def test_an_alias_that_ends_calls_warms_its_prompt_with_the_instruction(
    tiny_model_dir: Path,
) -> None:
    """What is warmed is what its turns render (`alias_prompts`): the alias's prompt and the
    end-call instruction after it; with no prompt of its own, the instruction alone."""
    aliases = {"closer": {"end_call": True}, "agent": {"system_prompt": FIXED, "end_call": True}}
    settings = _settings(tiny_model_dir, **aliases)
    tokenizer = ChatTokenizer.load(str(tiny_model_dir), trust_remote_code=False)
    prompts = {p.aliases: p.token_ids for p in warm_prompts(settings, tokenizer, ScriptedEngine())}
    assert set(prompts) == {("closer",), ("agent",)}
    rendered = alias_prompts(settings.models.aliases)
    builder = PromptBuilder(tokenizer, 2048, reserve=32, thinking=False)
    for alias in aliases:
        system = rendered.render(alias, None)
        assert END_CALL_INSTRUCTION in system
        turn = builder.build(assemble(system, [("user", "Bye!")])).token_ids
        # A fixed prompt: the turn starts with the whole warmed system message.
        warmed = prompts[(alias,)]
        shared = next(i for i, (a, b) in enumerate(zip(warmed, turn, strict=False)) if a != b)
        head = len(tokenizer.encode_template("<|im_start|>system\n"))
        assert shared >= head + len(tokenizer.encode_text(system))


class WarmHeld(ScriptedEngine):
    """Warming waits for `release`; `fail` makes it raise instead."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(["Yes."])
        self.release = asyncio.Event()
        self.fail = fail

    async def warm(self, token_ids: list[int], adapter: str | None, priority: int) -> int:
        await self.release.wait()
        if self.fail:
            raise RuntimeError("engine core busy")
        return await super().warm(token_ids, adapter, priority)


def _app(settings: Settings, engine: ScriptedEngine, **kwargs: Any) -> Any:
    return create_app(
        settings, [AUTH], engine_factory=engine.factory, adapters=Adapters(), **kwargs
    )


async def _until(condition: Any) -> None:
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_warming_runs_before_ready_once_per_prompt_at_the_lowest_priority(
    tiny_model_dir: Path,
) -> None:
    engine = WarmHeld()
    warmed: list[bool] = []
    app = _app(_settings(tiny_model_dir, **ALIASES), engine, on_warmed=lambda: warmed.append(True))
    body = {"messages": [{"role": "user", "content": "hi"}]}

    async def run() -> None:
        async with serve_in_process(app, ready=False) as (client, runtime):
            await _until(lambda: runtime.switchboard is not None)
            await asyncio.sleep(0.05)
            assert runtime.state == "loading" and not warmed
            assert (await client.get("/ready")).status_code == 503
            refused = await client.post("/", json=body, headers={"Authorization": AUTH})
            assert refused.status_code == 503 and engine.requests == []
            engine.release.set()
            await _until(lambda: runtime.state == "ready")
            assert (await client.get("/ready")).status_code == 200
            served = await client.post("/", json=body, headers={"Authorization": AUTH})
            assert served.status_code == 200

    asyncio.run(run())
    assert [priority for _, _, priority in engine.warmed] == [PRIORITY_WARM, PRIORITY_WARM]
    assert warmed == [True]


@pytest.mark.parametrize(
    ("kwargs", "config"),
    [({"warms": False}, {}), ({}, {"warm_prompts": False})],
    ids=["another-worker-warms", "turned-off"],
)
def test_no_warming_where_another_process_warms_or_it_is_off(
    tiny_model_dir: Path, kwargs: dict[str, Any], config: dict[str, Any]
) -> None:
    engine = ScriptedEngine(["Yes."])
    settings = Settings(
        engine={"model": str(tiny_model_dir)},
        models={"default": "qwen-max", "aliases": {"qwen-max": ALIASES["qwen-max"]}, **config},
    )

    async def run() -> None:
        async with serve_in_process(_app(settings, engine, **kwargs)) as (client, _):
            assert (await client.get("/ready")).status_code == 200

    asyncio.run(run())
    assert engine.warmed == []


def test_a_warming_that_fails_is_logged_and_the_server_serves(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = WarmHeld(fail=True)
    engine.release.set()

    async def run() -> None:
        app = _app(_settings(tiny_model_dir, **ALIASES), engine)
        async with serve_in_process(app) as (client, _):
            assert (await client.get("/ready")).status_code == 200

    with caplog.at_level(logging.WARNING, logger="callgate"):
        asyncio.run(run())
    assert "warming the system prompts failed (RuntimeError: engine core busy)" in caplog.text
