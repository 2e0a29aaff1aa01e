"""How many turns to decode at once: `python -m benchmarks.limits_sweep [--max-num-seqs 32,64,128]`.

For each `engine.max_num_seqs` value it starts callgate with a shipped config (`configs/cpu.yaml`
by default, the tiny checkpoint unless `--model`), then runs closed-loop single turns at each
concurrency level for `--level-s` seconds and records TTFT p50/p99, total output tokens/s and
the per-stream token rate (1 / TPOT p50): what a caller hears first, what the operator gets,
and whether each stream still outruns speech. A phone reply needs only 5-10 tokens/s per stream
to stay ahead of the voice, so a turn admitted into the batch at once usually beats one that
waits for a slot. The admission limit is set high (`--max-in-flight`) so that queueing in the
engine shows as TTFT rather than as refusals. Writes `limits_sweep.json` and `limits_sweep.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lib import machine
from benchmarks.lib.priority import realtime
from benchmarks.lib.servers import REPO, callgate_side, launch
from benchmarks.lib.stats import summarize
from benchmarks.lib.workloads import Level, PromptMaker, Runner, Workload

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


async def _levels(
    url: str, auth: str, workload: Workload, prompts: PromptMaker, levels: list[int], level_s: float
) -> list[dict[str, Any]]:
    conns = max(levels) * 2 + 4
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    out = []
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, pool=None)) as client:
        warm = Runner(client, url, auth, Workload(prompt_tokens=16, output_tokens=4), prompts)
        await warm.run(Level(units=4, concurrency=2))
        for i, c in enumerate(levels):
            runner = Runner(client, url, auth, workload, prompts)
            level = Level(units=100_000, concurrency=c, first_unit=i * 100_000, duration_s=level_s)
            wall = await runner.run(level)
            s = summarize(runner.results, wall, concurrency=c, rate=None, units=c)
            tpot = s["tpot_ms"]["p50"]
            s["stream_tokens_per_s"] = round(1000.0 / tpot, 1) if tpot else None
            s.pop("ttft_by_turn_ms", None)
            print(
                f"  c={c}: TTFT p50 {s['ttft_ms']['p50']} p99 {s['ttft_ms']['p99']} ms, "
                f"{s['output_tokens_per_s']:.0f} tok/s, {s['stream_tokens_per_s']} tok/s/stream, "
                f"errors {s['errors'] or 0}",
                flush=True,
            )
            out.append(s)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"# TTFT and throughput by max_num_seqs ({result['started_at']})",
        "",
        f"`{result['command']}`; config `{result['config']}`, checkpoint {result['model']}; "
        f"{result['workload']['prompt_tokens']}-token prompts, "
        f"{result['workload']['output_tokens']} output tokens; {result['level_s']:g} s per level; "
        f"{result['machine']['cpu_model']}, {result['machine']['cpu_cores']} cores, "
        f"{result['machine']['vllm']}.",
        "",
        "| max_num_seqs | concurrency | TTFT p50 (ms) | TTFT p99 (ms) | tok/s | tok/s per stream "
        "| errors |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in result["runs"]:
        for lv in run["levels"]:
            t = lv["ttft_ms"]
            errors = ", ".join(f"{k}: {v}" for k, v in lv["errors"].items()) or "0"
            lines.append(
                f"| {run['max_num_seqs']} | {lv['concurrency']} | {t['p50']:.1f} | {t['p99']:.1f} "
                f"| {lv['output_tokens_per_s']:.0f} | {lv['stream_tokens_per_s']} | {errors} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.limits_sweep", description=__doc__)
    p.add_argument("--model", default=None, help="Checkpoint dir (default: the tiny one).")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "cpu.yaml")
    p.add_argument("--max-num-seqs", default="32,64,128", help="Values to compare.")
    p.add_argument("--max-in-flight", type=int, default=512, help="Admission limit (high).")
    p.add_argument("--levels", default="1,8,32,64,128", help="Closed-loop concurrency levels.")
    p.add_argument("--level-s", type=float, default=15.0)
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    workload = Workload(prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens)
    auth = secrets.token_urlsafe(16)
    result: dict[str, Any] = {
        "tool": "benchmarks.limits_sweep",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.limits_sweep " + " ".join(sys.argv[1:]),
        "config": str(args.config.relative_to(REPO) if args.config.is_absolute() else args.config),
        "workload": workload.__dict__,
        "level_s": args.level_s,
        "machine": machine.describe(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="callgate-sweep-") as tmp:
        model = args.model
        if model is None:
            from benchmarks.lib.tiny_checkpoint import build

            model = str(build(Path(tmp) / "tiny"))
        result["model"] = args.model or "the tiny test checkpoint"
        prompts = PromptMaker(model)  # exact prompt lengths in the checkpoint's tokens
        for seqs in [int(x) for x in args.max_num_seqs.split(",")]:
            env = {
                "CALLGATE_ENGINE__MAX_NUM_SEQS": str(seqs),
                "CALLGATE_LIMITS__MAX_IN_FLIGHT": str(args.max_in_flight),
                "CALLGATE_DEADLINES__FIRST_TOKEN_S": "600",
                "VLLM_CPU_KVCACHE_SPACE": "1",
            }
            side = callgate_side(model, args.config, auth=auth, env=env, name=f"seqs{seqs}")
            print(f"== max_num_seqs {seqs}", flush=True)
            with launch(side, Path(tmp)) as srv, realtime():  # the client at SCHED_FIFO 10
                runs = asyncio.run(
                    _levels(srv.chat_url, auth, workload, prompts, levels, args.level_s)
                )
            result["runs"].append({"max_num_seqs": seqs, "levels": runs})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "limits_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "limits_sweep.md").write_text(table(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
