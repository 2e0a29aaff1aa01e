"""PNG plots of a side-by-side result: TTFT percentiles and throughput against concurrency, and
TTFT by turn index of a call. Pure functions of the result document (no servers, no network),
drawn with matplotlib's non-interactive Agg backend so they work on a headless box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen before pyplot is imported
from matplotlib.ticker import MaxNLocator

from benchmarks.lib import report

COLORS = {"ours": "tab:blue", "theirs": "tab:orange"}


def _closed_levels(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not doc:
        return []
    return [lv for lv in doc["levels"] if lv["rate"] is None and lv["concurrency"] is not None]


def ttft_vs_concurrency(result: dict[str, Any], path: Path) -> Path:
    """TTFT p50/p90/p99 against concurrency for both servers (single-turn workload)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side, label in report.labels(result).items():
        levels = _closed_levels(result["runs"].get(side, {}).get("single"))
        if not levels:
            continue
        xs = [lv["concurrency"] for lv in levels]
        for p, style in (("p50", "-o"), ("p90", "--s"), ("p99", ":^")):
            ys = [lv["ttft_ms"][p] for lv in levels]
            ax.plot(xs, ys, style, color=COLORS[side], label=f"{label} {p}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")  # TTFT spans tens of ms to seconds
    ax.set_xlabel("concurrent turns")
    ax.set_ylabel("TTFT, ms (first non-empty content)")
    ax.set_title("Time to first token vs concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def throughput_vs_concurrency(result: dict[str, Any], path: Path) -> Path:
    """Output tokens/s against concurrency for both servers (single-turn workload)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side, label in report.labels(result).items():
        levels = _closed_levels(result["runs"].get(side, {}).get("single"))
        if not levels:
            continue
        xs = [lv["concurrency"] for lv in levels]
        ys = [lv["output_tokens_per_s"] for lv in levels]
        ax.plot(xs, ys, "-o", color=COLORS[side], label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent turns")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def ttft_by_turn(result: dict[str, Any], path: Path) -> Path:
    """TTFT p50 (bars to p90) by turn index of a call, per server and calls level."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-o", "--s", ":^", "-.d"]
    series = 0
    for side, label in report.labels(result).items():
        doc = result["runs"].get(side, {}).get("calls")
        if not doc:
            continue
        for i, lv in enumerate(doc["levels"]):
            turns = sorted(int(k) for k in lv["ttft_by_turn_ms"])
            p50 = [lv["ttft_by_turn_ms"][str(t)]["p50"] for t in turns]
            p90 = [lv["ttft_by_turn_ms"][str(t)]["p90"] for t in turns]
            err = [[0.0] * len(turns), [b - a for a, b in zip(p50, p90, strict=True)]]
            level = f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g}/s"
            shift = 0.06 * series - 0.09  # side by side, not on top of each other
            series += 1
            ax.errorbar(
                [t + shift for t in turns],
                p50,
                yerr=err,
                fmt=styles[i % len(styles)],
                color=COLORS[side],
                capsize=3,
                label=f"{label} {level}",
            )
    ax.set_xlabel("turn index within the call")
    ax.set_ylabel("TTFT p50 (bar to p90), ms")
    ax.set_yscale("log")
    ax.set_title("TTFT by turn index (history grows each turn)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(result: dict[str, Any], out_dir: Path) -> list[Path]:
    return [
        ttft_vs_concurrency(result, out_dir / "ttft_vs_concurrency.png"),
        throughput_vs_concurrency(result, out_dir / "throughput_vs_concurrency.png"),
        ttft_by_turn(result, out_dir / "ttft_by_turn.png"),
    ]
