"""`benchmarks.affinity`'s summary and report, from synthetic turns and scrapes (no servers)."""

from __future__ import annotations

import pytest

from benchmarks import affinity
from benchmarks.lib.client import TurnResult

BEFORE = """\
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 10.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 0.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 100.0
callgate_engine_turns_total{affinity="held",engine="0"} 1.0
"""
AFTER = """\
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 310.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 300.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 500.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 500.0
callgate_engine_turns_total{affinity="held",engine="0"} 3.0
callgate_engine_turns_total{affinity="held",engine="1"} 1.0
callgate_engine_turns_total{affinity="new",engine="1"} 2.0
callgate_engine_turns_total{affinity="released",engine="0"} 0.0
"""


def _turn(index: int, ttft: float, prompt: int, cached: int) -> TurnResult:
    return TurnResult(
        turn_index=index,
        ttft=ttft,
        content_chunks=4,
        usage_output_tokens=4,
        prompt_tokens=prompt,
        cached_tokens=cached,
    )


def test_the_summary_takes_the_hit_rate_over_every_core_and_ttft_by_turn() -> None:
    turns = [
        _turn(1, 0.2, 100, 0),
        _turn(1, 0.4, 100, 0),
        _turn(2, 0.1, 200, 150),
        _turn(3, 0.05, 300, 250),
        TurnResult(turn_index=2, error="http_503"),
    ]
    s = affinity.summarize(turns, 2.0, BEFORE, AFTER)
    assert s["hit_rate"] == pytest.approx(600 / 800)  # deltas, both cores
    assert s["later_cached_share"] == pytest.approx(400 / 500)  # turns 2 and 3 only
    assert s["ttft_by_turn"]["1"]["n"] == 2 and s["ttft_by_turn"]["1"]["p50_ms"] == pytest.approx(
        300.0
    )
    assert s["later_ttft_p50_ms"] == pytest.approx(75.0)
    assert (s["turns"], s["errors"]) == (5, 1)
    assert s["output_tok_s"] == 8.0  # 4 served turns x 4 tokens / 2 s
    assert s["placed"] == {"held": 3.0, "new": 2.0}  # grown during the run, zeros left out


def test_the_report_says_how_much_of_the_gap_affinity_closes() -> None:
    def case(rate: float) -> dict[str, object]:
        s = affinity.summarize([_turn(1, 0.1, 10, 0), _turn(2, 0.1, 20, 10)], 1.0, "", "")
        return {**s, "hit_rate": rate, "realtime": True}

    even = {
        "affinity on (2 cores)": case(0.8),
        "vLLM's balancer (2 cores)": case(0.5),
        "one core": case(0.9),
    }
    assert affinity.gap_closed(even) == pytest.approx(0.75)
    doc = {
        "command": "python -m benchmarks.affinity",
        "machine": {"cpu_cores": 2, "cpu_model": "x", "vllm": "0.32.0", "callgate_git_sha": "s"},
        "date": "2026-12-05",
        "plan": vars(affinity.parse_args([])),
        "realtime": True,
        "even": even,
        "uneven": {},
    }
    text = affinity.markdown(doc)
    assert "affinity closes: 75%" in text
    assert "| affinity on (2 cores) | 80.0% |" in text
