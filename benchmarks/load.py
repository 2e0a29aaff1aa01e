"""Load generator: `python -m benchmarks.load --url URL --auth CODE --concurrency 1,16,64 ...`.

Runs one workload (single turns or calls) at each load level in turn against one endpoint,
shows a progress bar and a running TTFT while it works, prints a table of percentiles and
throughput per level, and writes everything to JSON. It speaks the gateway protocol (raw
`Authorization` code, the seed's body fields), so the same command measures this server, vLLM's
own server or any other Model Address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from benchmarks.lib.loadgen import (
    add_workload_args,
    build_levels,
    floats,
    ints,
    levels_table,
    make_console,
    run_load,
    turn_table,
    workload_from_args,
)
from benchmarks.lib.priority import realtime


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    p.add_argument("--url", required=True, help="The Model Address, POSTed to as is.")
    p.add_argument(
        "--auth",
        default=os.environ.get("CALLGATE_BENCH_AUTH"),
        help="Authorization code, sent raw (env CALLGATE_BENCH_AUTH).",
    )
    p.add_argument("--concurrency", default="1,16,64", help="Closed-loop levels, e.g. 1,16,64.")
    p.add_argument("--rate", default=None, help="Poisson arrivals instead: units/s per level.")
    p.add_argument(
        "--requests",
        default="64",
        help="Units per level (turns for single, calls for calls): one number or one per level.",
    )
    p.add_argument("--warmup", type=int, default=2, help="Short turns sent before measuring.")
    p.add_argument("--timeout", type=float, default=300.0, help="Per-turn read timeout (s).")
    p.add_argument("--out", type=Path, default=None, help="Write the result JSON here.")
    add_workload_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = workload_from_args(args)
    rates = floats(args.rate) if args.rate else None
    levels = build_levels(ints(args.concurrency), rates, ints(args.requests))
    console = make_console()
    try:
        with realtime():  # this client at SCHED_FIFO 10 (on a 2-core box beside a CPU engine)
            result = asyncio.run(
                run_load(
                    args.url,
                    args.auth,
                    workload,
                    levels,
                    tokenizer=args.tokenizer,
                    warmup=args.warmup,
                    timeout_s=args.timeout,
                    console=console,
                )
            )
    except RuntimeError as exc:
        console.print(f"[red]{exc}")
        return 2
    console.print(levels_table(result["levels"], f"{workload.kind} turns against {args.url}"))
    if workload.kind == "calls":
        console.print(turn_table(result["levels"], "TTFT p50 (ms) by turn index"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {args.out}")
    failed = sum(sum(lv["errors"].values()) for lv in result["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
