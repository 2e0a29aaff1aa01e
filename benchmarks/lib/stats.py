"""Turn records in, one JSON-ready summary per load level out.

Percentiles use linear interpolation between closest ranks (numpy's default), so figures are
comparable with `vllm bench serve`, which computes them with numpy. Times are reported in ms.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.lib.client import TurnResult

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def distribution_ms(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, mean and p50/p90/p99 of values given in seconds, reported in milliseconds."""
    ms = [v * 1000.0 for v in values]
    out: dict[str, float | int | None] = {
        "n": len(ms),
        "mean": (sum(ms) / len(ms)) if ms else None,
    }
    for p in PERCENTILES:
        value = percentile(ms, p)
        out[f"p{p}"] = None if value is None else round(value, 3)
    if out["mean"] is not None:
        out["mean"] = round(float(out["mean"]), 3)
    return out


def summarize(
    results: Sequence[TurnResult],
    duration_s: float,
    *,
    concurrency: int | None,
    rate: float | None,
    units: int,
) -> dict[str, Any]:
    """Summarise one level: latency distributions, throughput, errors by kind, TTFT by turn.

    Throughput counts complete turns only for turns/s (a cut turn is not a finished answer) and
    every output token received for tokens/s (a cut turn's tokens were still generated and sent).
    Cut turns contribute their TTFT and inter-token gaps but no end-to-end time.
    """
    ok = [r for r in results if r.ok]
    complete = [r for r in ok if not r.cut]
    errors = Counter(r.error for r in results if r.error)
    tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = [r.prompt_tokens for r in complete if r.prompt_tokens is not None]
    cached = [r.cached_tokens for r in complete if r.cached_tokens is not None]
    by_turn: dict[int, list[float]] = defaultdict(list)
    for r in ok:
        if r.ttft is not None:
            by_turn[r.turn_index].append(r.ttft)
    duration_s = max(duration_s, 1e-9)
    return {
        "concurrency": concurrency,
        "rate": rate,
        "units": units,
        "turns": len(results),
        "turns_ok": len(complete),
        "turns_cut": sum(1 for r in ok if r.cut),
        "errors": dict(sorted(errors.items())),
        "error_samples": _error_samples(results),
        "duration_s": round(duration_s, 3),
        "turns_per_s": round(len(complete) / duration_s, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / duration_s, 2),
        "chunks_per_s": round(sum(r.content_chunks for r in ok) / duration_s, 2),
        "prompt_tokens_mean": (sum(prompt_tokens) / len(prompt_tokens)) if prompt_tokens else None,
        "cached_prompt_tokens_total": sum(cached) if cached else None,
        "ttft_ms": distribution_ms(r.ttft for r in ok if r.ttft is not None),
        "itl_ms": distribution_ms(gap for r in ok for gap in r.itl),
        "tpot_ms": distribution_ms(t for r in complete if (t := r.tpot) is not None),
        "e2e_ms": distribution_ms(r.e2e for r in complete if r.e2e is not None),
        "ttft_by_turn_ms": {str(k): distribution_ms(v) for k, v in sorted(by_turn.items())},
    }


def _error_samples(results: Sequence[TurnResult], per_kind: int = 2) -> dict[str, list[str]]:
    """A couple of raw error details per kind, so a failed run says why without a rerun."""
    samples: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r.error and len(samples[r.error]) < per_kind and r.error_detail:
            samples[r.error].append(r.error_detail)
    return dict(samples)
