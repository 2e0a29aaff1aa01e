"""benchmarks/calls_first.py against the fake Model Address (no model, fast, exact): the calls
in progress send continuing dialogs under their own session, the burst's calls start with a
first turn, refusals and kinds are counted apart, and the report renders."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks import calls_first
from benchmarks.fakeserver import AUTH_CODE, create_app, serve_in_thread
from benchmarks.lib.client import TurnResult
from server.serving.calls import CallClass, classify


@pytest.fixture
def fake() -> Iterator[tuple[str, Any]]:
    app = create_app()
    with serve_in_thread(app) as url:
        yield url, app.state.fake


class _M:
    def __init__(self, d: dict[str, str]) -> None:
        self.role = d["role"]


def _plan(**kw: Any) -> calls_first.Plan:
    values: dict[str, Any] = dict(
        population=2, burst=4, new_call_turns=2, output_tokens=3, user_tokens=4, think_s=0.05,
        phase_s=1.0, seed=1, burst_at_s=0.2, auth=AUTH_CODE,
    )  # fmt: skip
    return calls_first.Plan(**(values | kw))


def _phase(url: str, plan: calls_first.Plan, burst: bool) -> calls_first.Tally:
    async def run() -> calls_first.Tally:
        async with httpx.AsyncClient(timeout=30.0) as client:
            return await calls_first._phase(client, url, plan, burst, "t")

    return asyncio.run(run())


def test_calls_in_progress_and_the_burst_send_what_callgate_classifies(
    fake: tuple[str, Any],
) -> None:
    url, state = fake
    tally = _phase(url, _plan(), burst=True)
    summary = tally.summary()
    assert summary["first"]["attempts"] == 4 and summary["first"]["served"] == 4
    assert summary["continuing"]["served"] == summary["continuing"]["attempts"] > 0
    bodies = [r["body"] for r in state.requests]
    for body in bodies:
        users = sum(m["role"] == "user" for m in body["messages"])
        kind = classify([_M(m) for m in body["messages"]])
        assert kind is (CallClass.CONTINUING if users > 1 else CallClass.FIRST)
        assert body["ignore_eos"] is True and body["max_tokens"] == 3
    # Each member's first turn is not measured; its measured turns all continue its call.
    assert sum(b["session_id"].startswith("t-pop-") for b in bodies) == 2 + (
        summary["continuing"]["attempts"]
        - sum(len([b for b in bodies if b["session_id"] == f"t-new-{i}"]) - 1 for i in range(4))
    )
    news = {b["session_id"] for b in bodies if b["session_id"].startswith("t-new-")}
    assert len(news) == 4  # each new call its own session
    doc = {
        "command": "x", "date": "d", "plan": _plan().__dict__, "realtime": False,
        "machine": {"cpu_cores": 2, "cpu_model": "m", "vllm": "v", "callgate_git_sha": "s"},
        "shape": {"max_num_seqs": 16, "max_model_len": 4096},
        "results": {"side": {"calm": summary, "burst": summary}},
    }  # fmt: skip
    text = calls_first.markdown(doc)
    assert "| side | burst | first | 4 | 4 | 0 |" in text


def test_refusals_and_failures_are_counted_apart_by_kind() -> None:
    tally = calls_first.Tally()
    served = TurnResult(ttft=0.02, text="ok", content_chunks=1)
    tally.add("first", TurnResult(error="http_503"))
    tally.add("first", TurnResult(error="http_400"))
    tally.add("continuing", served)
    summary = tally.summary()
    assert summary["first"] | {"ttft_p50_ms": None} == {
        "attempts": 2, "served": 0, "refused": 1, "failed": {"http_400": 1},
        "ttft_p50_ms": None, "ttft_p99_ms": None,
    }  # fmt: skip
    assert summary["continuing"]["served"] == 1
    assert summary["continuing"]["ttft_p50_ms"] == pytest.approx(20.0)


def test_a_refused_new_call_gives_up(fake: tuple[str, Any]) -> None:
    url, state = fake
    tally = _phase(url, _plan(population=0, auth="wrong-code"), burst=True)
    assert tally.summary()["first"]["attempts"] == 4  # one turn each: none went on
    assert len(state.requests) == 4
