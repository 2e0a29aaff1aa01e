"""Qwen3 thinking is never spoken: the streaming filter, and a turn that uses it.

The turn tests script the engine's deltas, because the random-weight test model cannot be made
to write `</think>` on demand; `tests/models/test_api_qwen3_thinking.py` checks the real server, and
the end of this file which alias thinks on one switchboard.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from server.base.settings import Settings
from server.serving.calls import CallClass
from server.serving.metrics import Metrics
from server.serving.switchboard import THINK_TOKENS, Switchboard
from server.text.thinking import ThinkingFilter
from server.text.tokenizer import ChatTokenizer
from server.wire.schemas import parse_request
from tests.scripted_engine import FALLBACK, ScriptedEngine, scripted_turn, texts_of
from tests.unit.splits import split_at


def answer_of(reply: str) -> str:
    """The reference: Qwen's parsing of a whole reply (answer after the first `</think>`,
    leading newlines stripped; no `</think>`: all reasoning)."""
    _, marker, answer = reply.partition("</think>")
    return answer.lstrip("\n") if marker else ""


def feed_all(pieces: list[str]) -> str:
    f = ThinkingFilter()
    return "".join(f.feed(p) for p in pieces)


@pytest.mark.parametrize(
    ("reply", "spoken"),
    [
        ("<think>\nLet me think.\n</think>\n\nHello there.", "Hello there."),
        ("reasoning without an opener</think>\n\n你好", "你好"),  # opener in the prompt
        ("<think>\nstill thinking when the tokens ran out", ""),
        ("<think>\n\n</think>\n\n", ""),
        ("<think></think>  spaces stay\n", "  spaces stay\n"),
        ("<think>a</think>\nSay </think> and <think> later.", "Say </think> and <think> later."),
        ("</thin>k> is not the marker", ""),
    ],
)
def test_only_the_answer_after_the_first_end_marker_is_spoken(reply: str, spoken: str) -> None:
    assert answer_of(reply) == spoken
    assert feed_all([reply]) == spoken
    assert feed_all(list(reply)) == spoken  # one character a delta


def test_nothing_is_held_back_once_the_answer_has_begun() -> None:
    f = ThinkingFilter()
    assert f.feed("<think>x</th") == ""
    assert f.feed("ink>") == "" and f.answering and not f.speaking
    assert f.feed("\n\n") == ""
    assert f.feed("An") == "An" and f.speaking
    assert f.feed("</") == "</"  # answer text, even when it looks like a marker


_PIECES = st.sampled_from(
    ["<think>", "</think>", "</", "think", ">", "<", "/", "\n", "\n\n", " ", "a", "答", "k>"]
)


@given(
    pieces=st.lists(_PIECES, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_any_split_into_deltas_speaks_what_the_whole_reply_speaks(
    pieces: list[str], cuts: list[int]
) -> None:
    reply = "".join(pieces)
    assert feed_all(split_at(reply, cuts)) == answer_of(reply)


# -- a turn with thinking on, the engine scripted -----------------------------------------------


REPLY = ["<think>\n", "The caller ", "asks who I am.", "\n</", "thi", "nk>\n", "\nI am ", "Qwen."]


def test_a_thinking_turn_speaks_only_the_answer_and_counts_every_token() -> None:
    turn = scripted_turn(ScriptedEngine(REPLY), thinking=True)
    assert asyncio.run(texts_of(turn)) == ["I am ", "Qwen."]
    assert turn.record.outcome == "stop" and turn.finish_reason == "stop"
    assert turn.record.output_tokens == len(REPLY)  # reasoning tokens are output tokens


def test_a_turn_that_ends_while_thinking_says_the_fallback_only() -> None:
    turn = scripted_turn(ScriptedEngine(REPLY[:5], reason="length"), thinking=True)
    assert asyncio.run(texts_of(turn)) == [FALLBACK]
    assert turn.finish_reason == "length" and turn.record.outcome == "length"
    assert turn.record.output_tokens == 5


def test_an_engine_failure_while_thinking_says_the_fallback_without_a_joining_space() -> None:
    engine = ScriptedEngine(REPLY[:4], fail=True)
    turn = scripted_turn(engine, thinking=True)
    assert asyncio.run(texts_of(turn)) == [FALLBACK]
    assert turn.record.outcome == "error" and engine.aborted
    after_answer = scripted_turn(ScriptedEngine(REPLY, fail=True), thinking=True)
    assert asyncio.run(texts_of(after_answer)) == ["I am ", " " + FALLBACK]


def test_with_thinking_off_there_is_no_filter_and_text_passes_unchanged() -> None:
    turn = scripted_turn(ScriptedEngine(REPLY), thinking=False)
    assert turn._thinking is None
    assert "".join(asyncio.run(texts_of(turn))) == "".join(REPLY)


# -- which alias thinks ----------------------------------------------------------------------


def _settings(model: Path, sampling_on: bool, own: dict[str, bool | None]) -> Settings:
    aliases = {alias: {"enable_thinking": value} for alias, value in own.items()}
    return Settings(
        engine={"model": str(model)},
        models={"default": next(iter(own)), "aliases": aliases},
        sampling={"enable_thinking": sampling_on},
    )


@pytest.mark.parametrize(
    ("sampling_on", "own", "thinks"),
    [
        (False, None, False),
        (True, None, True),
        (False, True, True),
        (True, False, False),
    ],
)
def test_an_alias_thinks_as_it_says_else_as_sampling_says(
    tiny_model_dir: Path, sampling_on: bool, own: bool | None, thinks: bool
) -> None:
    settings = _settings(tiny_model_dir, sampling_on, {"quick": own, "other": not thinks})
    assert settings.thinking("quick") is thinks
    assert settings.thinking("other") is (not thinks)


def test_one_switchboard_plans_each_alias_with_its_own_thinking(qwen3_model_dir: Path) -> None:
    """On the Qwen3 checkpoint: the quick alias's prompt ends with the empty think block and its
    sampler bans the markers; the reasoning alias's prompt has no block, nothing is banned, and
    its reply goes through the filter."""
    settings = _settings(qwen3_model_dir, False, {"quick": None, "reasoning": True})
    tokenizer = ChatTokenizer.load(str(qwen3_model_dir), trust_remote_code=False)
    board = Switchboard(settings, ScriptedEngine(), tokenizer, Metrics(CollectorRegistry()))
    think_ids = tokenizer.token_ids(*THINK_TOKENS)
    assert len(think_ids) == 2
    plans = {}
    for alias in ("quick", "reasoning"):
        body = {"model": alias, "messages": [{"role": "user", "content": "你好"}]}
        request = parse_request(json.dumps(body).encode())
        plans[alias] = board.plan_now(request, alias, time.perf_counter(), CallClass.FIRST)
    quick, reasoning = plans["quick"], plans["reasoning"]
    empty_block = tokenizer.encode_template("<think>\n\n</think>\n\n")
    assert quick.token_ids[-len(empty_block) :] == list(empty_block)
    assert quick.token_ids[: -len(empty_block)] == reasoning.token_ids
    assert set(quick.sampling["logit_bias"]) == set(think_ids)
    assert "logit_bias" not in reasoning.sampling
    assert (quick.thinking, reasoning.thinking) == (False, True)
