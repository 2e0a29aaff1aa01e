"""Chunk encoder micro-benchmark: `python -m benchmarks.encoder_bench [--json FILE]`.

Times callgate's chunk renderer (`server.wire.chunks.ChunkRenderer`: a pre-built byte template plus
one JSON string escape) against building the same chunk as a pydantic model and as a dict
through `json.dumps`, per chunk, on this machine. Target: under 2 µs per content chunk. The
timing itself is `benchmarks.lib.chunk_timing`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.lib.chunk_timing import TARGET_US, TEXTS, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encoder_bench", description=__doc__)
    p.add_argument("--number", type=int, default=50_000, help="Calls per timing run.")
    p.add_argument("--repeat", type=int, default=5, help="Timing runs; the best is reported.")
    p.add_argument("--json", type=Path, default=None, help="Write the result here.")
    args = p.parse_args(argv)
    result = run(args.number, args.repeat)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title="µs per content chunk (best of runs)", title_justify="left")
    table.add_column("encoder")
    for label in TEXTS:
        table.add_column(label, justify="right")
    table.add_column("same chunk", justify="center")
    for name, cells in result["us_per_chunk"].items():
        same = "yes" if result["same_chunk_as_pydantic"][name] else "[red]NO"
        table.add_row(name, *[f"{v:.2f}" for v in cells.values()], same)
    console.print(table)
    worst = max(next(iter(result["us_per_chunk"].values())).values())
    verdict = "meets" if worst < TARGET_US else "MISSES"
    console.print(f"renderer worst case {worst:.2f} µs: {verdict} the {TARGET_US} µs target")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0 if all(result["same_chunk_as_pydantic"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
