"""One workload's levels against one endpoint: `run_load`, its terminal tables and the workload
options every entry point shares (`add_workload_args`, `workload_from_args`, `build_levels`).

`run_load` runs each level in turn, shows a progress bar and a running TTFT while it works and
returns the result document. It speaks the gateway protocol (raw `Authorization` code, the
seed's body fields), so it measures this server, vLLM's own server or any other Model Address.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.lib import machine
from benchmarks.lib.client import TurnResult
from benchmarks.lib.stats import percentile, summarize
from benchmarks.lib.workloads import Level, PromptMaker, Runner, Workload


def _fmt(value: float | int | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def levels_table(levels: list[dict[str, Any]], title: str) -> Table:
    """The per-level summary as a terminal table (milliseconds, per-second rates)."""
    table = Table(title=f"{title} (times in ms)", title_justify="left")
    for name in ("level", "ok", "cut", "errors", "TTFT p50", "TTFT p90", "TTFT p99"):
        table.add_column(name, justify="right")
    for name in ("ITL p50", "ITL p99", "e2e p50", "turns/s", "tok/s"):
        table.add_column(name, justify="right")
    for lv in levels:
        label = f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g}/s"
        errors = ", ".join(f"{k}:{v}" for k, v in lv["errors"].items()) or "0"
        t, i = lv["ttft_ms"], lv["itl_ms"]
        table.add_row(
            label,
            str(lv["turns_ok"]),
            str(lv["turns_cut"]),
            errors,
            _fmt(t["p50"]),
            _fmt(t["p90"]),
            _fmt(t["p99"]),
            _fmt(i["p50"]),
            _fmt(i["p99"]),
            _fmt(lv["e2e_ms"]["p50"]),
            _fmt(lv["turns_per_s"], 2),
            _fmt(lv["output_tokens_per_s"], 1),
        )
    return table


def turn_table(levels: list[dict[str, Any]], title: str) -> Table:
    """TTFT p50 by turn index per level: the prefix cache's effect on later turns of a call."""
    turns = sorted({int(k) for lv in levels for k in lv["ttft_by_turn_ms"]})
    table = Table(title=title, title_justify="left")
    table.add_column("level", justify="right")
    for t in turns:
        table.add_column(f"turn {t}", justify="right")
    for lv in levels:
        label = f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g}/s"
        cells = [_fmt(lv["ttft_by_turn_ms"].get(str(t), {}).get("p50")) for t in turns]
        table.add_row(label, *cells)
    return table


async def run_load(
    url: str,
    auth: str | None,
    workload: Workload,
    levels: list[Level],
    *,
    tokenizer: str | None = None,
    warmup: int = 2,
    timeout_s: float = 300.0,
    console: Console | None = None,
    raw: list[tuple[Level, list[TurnResult], float]] | None = None,
) -> dict[str, Any]:
    """Run every level against `url` and return the result document .

    With `raw`, each level's turn records and wall time are appended to it, so a caller can pool
    repeated runs before computing percentiles (percentiles of runs cannot be averaged).
    """
    console = console or Console()
    prompts = PromptMaker(tokenizer)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    max_conn = max(((lv.concurrency or 64) for lv in levels), default=1) * 2 + 4
    limits = httpx.Limits(max_connections=max_conn, max_keepalive_connections=max_conn)
    timeout = httpx.Timeout(timeout_s, connect=30.0, pool=None)
    summaries: list[dict[str, Any]] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        if warmup > 0:
            warm = Runner(client, url, auth, _warmup_workload(workload), prompts)
            await warm.run(Level(units=warmup, concurrency=1))
            failed = [r for r in warm.results if not r.ok]
            if len(failed) == len(warm.results):
                first = failed[0]
                raise RuntimeError(f"warm-up failed: {first.error} {first.error_detail or ''}")
        for level in levels:
            results, duration = await _run_level(
                client, url, auth, workload, prompts, level, console
            )
            summaries.append(
                summarize(
                    results,
                    duration,
                    concurrency=level.concurrency,
                    rate=level.rate,
                    units=level.units,
                )
            )
            if raw is not None:
                raw.append((level, results, duration))
    return {
        "tool": "benchmarks.load",
        "schema": 1,
        "started_at": started,
        "target": {"url": url, "model": workload.model},
        "workload": _workload_record(workload, tokenizer),
        "machine": machine.describe(),
        "levels": summaries,
    }


def _warmup_workload(w: Workload) -> Workload:
    """Short single turns: wake the engine and open connections without skewing the levels."""
    return Workload(
        kind="single",
        model=w.model,
        prompt_tokens=min(w.prompt_tokens, 32),
        output_tokens=8,
        ignore_eos=w.ignore_eos,
        include_usage=w.include_usage,
        sampling=w.sampling,
        extra_body=w.extra_body,
        seed=w.seed + 7919,
    )


async def _run_level(
    client: httpx.AsyncClient,
    url: str,
    auth: str | None,
    workload: Workload,
    prompts: PromptMaker,
    level: Level,
    console: Console,
) -> tuple[list[TurnResult], float]:
    total = level.units * (workload.turns if workload.kind == "calls" else 1)
    ttfts: list[float] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(level.label, total=total, status="")

        def on_turn(result: TurnResult) -> None:
            if result.ttft is not None:
                ttfts.append(result.ttft * 1000)
            p50 = percentile(ttfts, 50)
            status = f"TTFT p50 {_fmt(p50)} ms" + (f"  last error {result.error}" * (not result.ok))
            progress.update(task, advance=1, status=status)

        runner = Runner(client, url, auth, workload, prompts, on_turn)
        duration = await runner.run(level)
        progress.update(task, completed=total)
    return runner.results, duration


def _workload_record(w: Workload, tokenizer: str | None) -> dict[str, Any]:
    record = dict(w.__dict__)
    record["tokenizer"] = tokenizer
    return record


def ints(text: str) -> list[int]:
    """`"1,8,32"` as `[1, 8, 32]`."""
    return [int(x) for x in text.split(",") if x.strip()]


def floats(text: str) -> list[float]:
    """`"0.5,2"` as `[0.5, 2.0]`."""
    return [float(x) for x in text.split(",") if x.strip()]


def build_levels(
    concurrency: list[int], rates: list[float] | None, requests: list[int]
) -> list[Level]:
    """Closed-loop levels from `concurrency`, or Poisson levels from `rates` (capped by the
    single concurrency value if one was given). `requests` is one count or one per level."""
    if rates:
        cap = concurrency[0] if len(concurrency) == 1 else None
        keys: list[Any] = rates
    else:
        keys = concurrency
    if len(requests) not in (1, len(keys)):
        raise SystemExit("--requests takes one number or one per level")
    counts = requests * len(keys) if len(requests) == 1 else requests
    if rates:
        return [Level(units=n, rate=r, concurrency=cap) for r, n in zip(rates, counts, strict=True)]
    return [Level(units=n, concurrency=c) for c, n in zip(concurrency, counts, strict=True)]


def add_workload_args(parser: argparse.ArgumentParser, model_flag: str = "--model") -> None:
    """Workload options, shared by the entry points (in `benchmarks.sidebyside` `--model` is a
    checkpoint, so the served name is `--served-model-name` there)."""
    g = parser.add_argument_group("workload")
    g.add_argument("--workload", choices=["single", "calls"], default="single")
    g.add_argument(
        model_flag, dest="request_model", default="qwen-plus", help="`model` sent in requests."
    )
    g.add_argument("--prompt-tokens", type=int, default=200, help="single: user prompt length.")
    g.add_argument("--output-tokens", type=int, default=64, help="max_tokens of every turn.")
    g.add_argument("--user-tokens", type=int, default=24, help="calls: length of a caller turn.")
    g.add_argument("--turns", type=int, default=4, help="calls: turns per call.")
    g.add_argument("--think-time", type=float, default=1.0, help="calls: mean pause (s).")
    g.add_argument("--barge-in", type=float, default=0.0, help="calls: fraction of turns cut.")
    g.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Send ignore_eos so every turn produces --output-tokens (vLLM extension).",
    )
    g.add_argument("--min-tokens", type=int, default=None, help="Also send min_tokens.")
    g.add_argument(
        "--usage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Ask for stream_options.include_usage (exact token counts).",
    )
    g.add_argument(
        "--sampling",
        default='{"temperature": 0.1, "top_p": 0.1, "top_k": 1}',
        help="JSON object merged into every body (default: the seed's example values).",
    )
    g.add_argument("--extra-body", default="{}", help="JSON object merged into every body.")
    g.add_argument("--tokenizer", default=None, help="Tokenizer dir/id for exact prompt lengths.")
    g.add_argument("--seed", type=int, default=0)


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The `Workload` the options of `add_workload_args` describe."""
    return Workload(
        kind=args.workload,
        model=args.request_model,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        user_tokens=args.user_tokens,
        turns=args.turns,
        think_time_s=args.think_time,
        barge_in=args.barge_in,
        ignore_eos=args.ignore_eos,
        min_tokens=args.min_tokens,
        include_usage=args.usage,
        sampling=json.loads(args.sampling),
        extra_body=json.loads(args.extra_body),
        seed=args.seed,
    )


def make_console() -> Console:
    """A wide console when piped (logs, `make bench`), so the tables are not truncated."""
    return Console() if sys.stdout.isatty() else Console(width=140)
