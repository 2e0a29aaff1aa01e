"""The load generator against a fake endpoint: what it sends, what it measures, how it counts.

The fake (benchmarks/fakeserver.py) has no model, so these tests are fast and exact: they check
the request shapes (seed fields, growing history under one session_id, identical bodies across
runs), TTFT counting from the first non-empty content, barge-in cuts and errors by kind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import load
from benchmarks.fakeserver import AUTH_CODE, create_app, serve_in_thread
from benchmarks.lib import loadgen
from benchmarks.lib.workloads import Level, Workload


@pytest.fixture
def fake() -> Iterator[tuple[str, Any]]:
    app = create_app()
    with serve_in_thread(app) as url:
        yield url, app.state.fake


def _run(url: str, workload: Workload, levels: list[Level], **kw: Any) -> dict[str, Any]:
    kw.setdefault("warmup", 0)
    return asyncio.run(loadgen.run_load(url, AUTH_CODE, workload, levels, **kw))


def test_single_turns_send_the_seed_shape_with_length_controls(fake: tuple[str, Any]) -> None:
    url, state = fake
    w = Workload(prompt_tokens=12, output_tokens=5)
    doc = _run(url, w, [Level(units=6, concurrency=3)])
    level = doc["levels"][0]
    assert level["turns_ok"] == 6 and level["errors"] == {}
    assert level["output_tokens"] == 30  # from the usage chunk
    assert level["ttft_ms"]["n"] == 6 and level["itl_ms"]["n"] == 6 * 4
    bodies = [r["body"] for r in state.requests]
    assert all(b["stream"] is True and b["model"] == "qwen-plus" for b in bodies)
    assert all(b["max_tokens"] == 5 and b["ignore_eos"] is True for b in bodies)
    assert all(b["stream_options"] == {"include_usage": True} for b in bodies)
    assert all(b["temperature"] == 0.1 and b["top_k"] == 1 for b in bodies)
    prompts = [b["messages"][0]["content"] for b in bodies]
    assert len(set(prompts)) == 6  # no prefix-cache hits between requests
    assert all(len(p.split()) == 12 for p in prompts)  # no tokenizer: one word per token
    auths = {r["headers"]["authorization"] for r in state.requests}
    assert auths == {AUTH_CODE}  # raw code, as the gateway sends it


def test_without_usage_tokens_are_counted_by_chunk(fake: tuple[str, Any]) -> None:
    url, _ = fake
    doc = _run(url, Workload(output_tokens=7, include_usage=False), [Level(units=2, concurrency=1)])
    assert doc["levels"][0]["output_tokens"] == 14


def test_ttft_waits_for_non_empty_content() -> None:
    """The role chunk comes at once, the first content after a deliberate 0.3 s sleep."""
    with serve_in_thread(create_app(token_delay_s=0.3)) as url:
        doc = _run(url, Workload(output_tokens=1), [Level(units=1, concurrency=1)])
    assert doc["levels"][0]["ttft_ms"]["p50"] >= 300.0


def test_calls_grow_the_history_under_one_session(fake: tuple[str, Any]) -> None:
    url, state = fake
    w = Workload(kind="calls", turns=3, output_tokens=4, user_tokens=5, think_time_s=0.0)
    doc = _run(url, w, [Level(units=2, concurrency=2)])
    level = doc["levels"][0]
    assert level["turns_ok"] == 6
    assert sorted(level["ttft_by_turn_ms"]) == ["1", "2", "3"]
    by_session: dict[str, list[dict[str, Any]]] = {}
    for req in state.requests:
        by_session.setdefault(req["body"]["session_id"], []).append(req["body"])
    assert len(by_session) == 2
    for bodies in by_session.values():
        bodies.sort(key=lambda b: len(b["messages"]))
        roles = [[m["role"] for m in b["messages"]] for b in bodies]
        assert roles[0] == ["assistant", "user"]
        assert roles[2] == ["assistant", "user", "assistant", "user", "assistant", "user"]
        # The bot's previous answer is echoed back exactly as streamed.
        assert bodies[1]["messages"][2]["content"] == "tok0 tok1 tok2 tok3 "
        assert bodies[2]["messages"][:4] == bodies[1]["messages"][:4]


def test_barge_in_cuts_turns_and_echoes_what_was_heard(fake: tuple[str, Any]) -> None:
    url, state = fake
    w = Workload(kind="calls", turns=2, output_tokens=8, think_time_s=0.0, barge_in=1.0)
    doc = _run(url, w, [Level(units=3, concurrency=3)])
    level = doc["levels"][0]
    assert level["turns_cut"] == 6 and level["turns_ok"] == 0 and level["errors"] == {}
    assert level["e2e_ms"]["n"] == 0 and level["ttft_ms"]["n"] == 6
    second_turns = [r["body"] for r in state.requests if len(r["body"]["messages"]) == 4]
    heard = [b["messages"][2]["content"].split() for b in second_turns]
    assert len(heard) == 3
    assert all(1 <= len(h) <= 4 for h in heard)  # cut within the first half of 8 tokens


@pytest.mark.parametrize(
    ("path", "auth", "kind"),
    [
        ("/", "wrong-code", "http_401"),
        ("/fault/no-done", AUTH_CODE, "no_done"),
        ("/fault/bad-json", AUTH_CODE, "bad_chunk"),
    ],
)
def test_errors_are_counted_by_kind(fake: tuple[str, Any], path: str, auth: str, kind: str) -> None:
    url, _ = fake
    doc = asyncio.run(
        loadgen.run_load(url + path, auth, Workload(), [Level(units=3, concurrency=3)], warmup=0)
    )
    level = doc["levels"][0]
    assert level["errors"] == {kind: 3}
    assert level["turns_ok"] == 0 and kind in level["error_samples"]


def test_connection_refused_is_an_error_kind() -> None:
    doc = _run("http://127.0.0.1:9/", Workload(), [Level(units=2, concurrency=1)], timeout_s=2.0)
    assert doc["levels"][0]["errors"] == {"connect": 2}


def test_warmup_failure_stops_the_run(fake: tuple[str, Any]) -> None:
    url, _ = fake
    with pytest.raises(RuntimeError, match="http_401"):
        asyncio.run(
            loadgen.run_load(url, "wrong", Workload(), [Level(units=1, concurrency=1)], warmup=1)
        )


def test_two_runs_send_identical_requests() -> None:
    """Side by side is fair only if both servers get byte-identical work."""
    w = Workload(kind="calls", turns=3, think_time_s=0.0, barge_in=0.5, output_tokens=6, seed=7)
    seen = []
    for _ in range(2):
        app = create_app()
        with serve_in_thread(app) as url:
            _run(url, w, [Level(units=4, concurrency=2)])
        bodies = [json.dumps(r["body"], sort_keys=True) for r in app.state.fake.requests]
        seen.append(sorted(bodies))
    assert seen[0] == seen[1]


def test_poisson_level_runs_every_unit(fake: tuple[str, Any]) -> None:
    url, state = fake
    doc = _run(url, Workload(output_tokens=2), [Level(units=5, rate=50.0)])
    assert doc["levels"][0]["rate"] == 50.0 and doc["levels"][0]["turns_ok"] == 5
    assert len(state.requests) == 5


def test_cli_writes_json_per_level(fake: tuple[str, Any], tmp_path: Path) -> None:
    url, _ = fake
    out = tmp_path / "r.json"
    argv = [
        "--url", url, "--auth", AUTH_CODE, "--concurrency", "1,4", "--requests", "2,8",
        "--output-tokens", "3", "--warmup", "1", "--out", str(out),
    ]  # fmt: skip
    assert load.main(argv) == 0
    doc = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 4]
    assert [lv["turns_ok"] for lv in doc["levels"]] == [2, 8]
    assert doc["machine"]["cpu_cores"] and doc["workload"]["output_tokens"] == 3


def test_cli_exit_code_is_non_zero_on_errors(fake: tuple[str, Any]) -> None:
    url, _ = fake
    argv = ["--url", url + "/fault/no-done", "--auth", AUTH_CODE, "--concurrency", "1",
            "--requests", "2", "--warmup", "0"]  # fmt: skip
    assert load.main(argv) == 1


def test_build_levels() -> None:
    assert loadgen.build_levels([1, 8], None, [10]) == [
        Level(units=10, concurrency=1),
        Level(units=10, concurrency=8),
    ]
    assert loadgen.build_levels([4], [0.5, 2.0], [3, 6]) == [
        Level(units=3, rate=0.5, concurrency=4),
        Level(units=6, rate=2.0, concurrency=4),
    ]
    with pytest.raises(SystemExit):
        loadgen.build_levels([1, 2, 3], None, [1, 2])
