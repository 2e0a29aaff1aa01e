"""sse-starlette against Starlette's plain StreamingResponse, same server, same bytes.

The project serves streams with sse-starlette unless a side-by-side measurement shows it costs
time to first token or throughput. `server.sse` picks the response class; everything else is
identical. Both servers run at once on the same checkpoint; each level alternates between them
in slices (A B B A ...) so both meet the same background load, and the server's own CPU time
outside the engine per output token is reported beside the latency (the steadier figure on a
noisy machine).

    python -m benchmarks.sse_ab [--model DIR] [--concurrency 1,8,32] [--requests 60,160,320]

Writes `benchmarks/results/sse_ab.json` and `sse_ab.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.load import run_load
from benchmarks.servers import EngineShape, free_port, ours_command, ours_env, run_server
from benchmarks.sidebyside import pool, slices, tiny_checkpoint
from benchmarks.workloads import Level, Workload

VARIANTS = {"sse-starlette": "sse-starlette", "starlette": "starlette"}
RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = Path(__file__).resolve().parent / "sidebyside.yaml"
AUTH = "bench-ab-0123456789"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


async def _measure(urls: dict[str, str], pids: dict[str, Any], args: argparse.Namespace) -> dict:
    workload = Workload(kind="single", prompt_tokens=200, output_tokens=64, ignore_eos=True)
    raw: dict[str, list] = {name: [] for name in urls}
    cpu: dict[str, dict[int, float]] = {name: {} for name in urls}
    tokens: dict[str, dict[int, int]] = {name: {} for name in urls}
    for url in urls.values():  # warm both
        await run_load(url, AUTH, workload, [], warmup=4)
    for conc, n in zip(_ints(args.concurrency), _ints(args.requests), strict=True):
        parts = slices(Level(units=n, concurrency=conc), args.slices)
        for i, part in enumerate(parts):
            order = list(urls) if i % 2 == 0 else list(reversed(urls))
            for name in order:
                before = pids[name].cpu_seconds()
                runs: list = []
                await run_load(urls[name], AUTH, workload, [part], warmup=0, raw=runs)
                after = pids[name].cpu_seconds()
                raw[name] += runs
                if before and after:
                    cpu[name][conc] = cpu[name].get(conc, 0.0) + after[0] - before[0]
                out = sum(r.output_tokens or 0 for r in runs[0][1])
                tokens[name][conc] = tokens[name].get(conc, 0) + out
    result: dict[str, Any] = {}
    for name in urls:
        levels = pool(raw[name])
        for lv in levels:
            c = lv["concurrency"]
            lv["frontend_cpu_us_per_token"] = (
                round(cpu[name][c] / tokens[name][c] * 1e6, 1) if tokens[name].get(c) else None
            )
        result[name] = levels
    return result


def _table(result: dict[str, Any]) -> str:
    a, b = list(result)
    rows = [
        f"| level | TTFT p50 {a} / {b} (ms) | TTFT p99 (ms) | tokens/s | front-end CPU µs/token |",
        "|---:|---:|---:|---:|---:|",
    ]
    for la, lb in zip(result[a], result[b], strict=True):

        def pair(key: str, sub: str | None = None, la: Any = la, lb: Any = lb) -> str:
            va = la[key][sub] if sub else la[key]
            vb = lb[key][sub] if sub else lb[key]
            return f"{va:.1f} / {vb:.1f}" if va is not None and vb is not None else "-"

        rows.append(
            f"| {la['concurrency']} | {pair('ttft_ms', 'p50')} | {pair('ttft_ms', 'p99')} | "
            f"{pair('output_tokens_per_s')} | {pair('frontend_cpu_us_per_token')} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="checkpoint dir (default: build the tiny test checkpoint)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", default="60,160,320")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="callgate-sse-ab-"))
    model = args.model or str(tiny_checkpoint(work / "model"))
    shape = EngineShape()
    started = time.time()
    servers = {}
    import contextlib

    with contextlib.ExitStack() as stack:
        for name, impl in VARIANTS.items():
            port = free_port()
            env = {
                "VLLM_CPU_KVCACHE_SPACE": str(shape.kv_cache_gib),
                **ours_env(AUTH, shape),
                "CALLGATE_SERVER__SSE": impl,
            }
            cmd = ours_command(model, CONFIG, port)
            servers[name] = stack.enter_context(
                run_server(name, cmd, env, port, "/ready", "/v1/chat/completions", work / "logs")
            )
        urls = {name: srv.chat_url for name, srv in servers.items()}
        result = asyncio.run(_measure(urls, servers, args))
    doc = {
        "tool": "benchmarks.sse_ab",
        "machine": machine.describe(),
        "seconds": round(time.time() - started, 1),
        "workload": "single turns, 200-token prompt, 64 output tokens, ignore_eos",
        "levels": result,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "sse_ab.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = (
        "# sse-starlette vs Starlette StreamingResponse (callgate, same bytes)\n\n"
        f"`python -m benchmarks.sse_ab`, {doc['seconds']} s, interleaved slices. "
        "Front-end CPU = the server process's CPU time (HTTP, tokenizer, detokenizer; not the "
        "engine core) per output token.\n\n" + _table(result) + "\n"
    )
    (args.out_dir / "sse_ab.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
