"""The GPU run's markdown: one table per side, written again after every side finishes."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _frontend(level: dict[str, Any]) -> str:
    cpu = level.get("server_cpu")
    return "-" if not cpu else f"{cpu['frontend_us_per_token']:.0f}"


def side_table(side: dict[str, Any]) -> str:
    """One side's levels: TTFT p50/p99, output tok/s, chunks/s, turns and errors."""
    head = f"### {side['label']}\n\n"
    if side.get("error"):
        return head + f"Did not complete: {side['error']}\n"
    lines = [
        f"Started (ready) in {side['startup_s']:.1f} s. Command: `{' '.join(side['cmd'])}`",
        "",
        "| concurrency | TTFT p50 (ms) | TTFT p99 (ms) | output tok/s | chunks/s "
        "| front-end CPU µs/token | turns | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in side["levels"]:
        errors = ", ".join(f"{k}: {v}" for k, v in lv["errors"].items()) or "0"
        lines.append(
            f"| {lv['concurrency']} | {_ms(lv['ttft_ms']['p50'])} | {_ms(lv['ttft_ms']['p99'])} "
            f"| {lv['output_tokens_per_s']:.0f} | {lv['chunks_per_s']:.0f} "
            f"| {_frontend(lv)} | {lv['turns']} | {errors} |"
        )
    return head + "\n".join(lines) + "\n"


def summary_table(sides: list[dict[str, Any]]) -> str:
    """Every side at every level in one table (the README's GPU table)."""
    done = [s for s in sides if not s.get("error") and s.get("levels")]
    if not done:
        return ""
    lines = [
        "| side | concurrency | TTFT p50 / p99 (ms) | output tok/s | chunks/s "
        "| front-end CPU µs/token |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side in done:
        for lv in side["levels"]:
            t = lv["ttft_ms"]
            lines.append(
                f"| {side['label']} | {lv['concurrency']} | {_ms(t['p50'])} / {_ms(t['p99'])} "
                f"| {lv['output_tokens_per_s']:.0f} | {lv['chunks_per_s']:.0f} "
                f"| {_frontend(lv)} |"
            )
    return "\n".join(lines) + "\n"


def document(result: dict[str, Any]) -> str:
    """The whole markdown file: what ran where, the summary, then each side."""
    m, w = result["machine"], result["workload"]
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    parts = [
        f"# callgate and vLLM's server, 1 and N front-end processes ({result['started_at']})\n",
        f"- machine: {gpus}; {m['cpu_model']}, {m['cpu_cores']} cores; Python {m['python']}",
        f"- {m['vllm']}, {m['torch']}; callgate {m['callgate_git_sha']}",
        f"- checkpoint `{result['model']}` (load_format {result['shape']['load_format']}); "
        f"{w['prompt_tokens']}-token prompts, {w['output_tokens']} output tokens (ignore_eos), "
        f"greedy; closed loop, {result['level_s']:g} s per level",
        f"- command: `{result['command']}`",
        f"- wall time {result['wall_s']:.0f} s; sides not run: "
        f"{', '.join(result['skipped']) or 'none'}",
        "",
        "TTFT is request sent to the first non-empty content chunk, measured by one client "
        "process (httpx, asyncio) on the same host. Front-end CPU is the CPU time of every "
        "process of the server except vLLM's engine core and its workers, per streamed token.",
        "",
        summary_table(result["sides"]),
    ]
    parts += [side_table(s) for s in result["sides"]]
    return "\n".join(parts)
