"""One prepared command for a GPU host: `python -m benchmarks.gpu --model DIR --out DIR`.

Serves one checkpoint (by default with `load_format: dummy`: random weights of the real shapes,
so a 7B-shaped config needs no 15 GB of weights) and runs the same closed-loop single-turn load
at each concurrency level against each side, one server at a time (one GPU holds one engine):

1. `vllm`: vLLM's OpenAI server (`vllm serve`, one API process);
2. `callgate-N`: callgate with `server.workers: N`;
3. `callgate-1`: callgate with one front-end process;
4. `vllm-N`: vLLM's server with `--api-server-count N`.

A host gives one command about 10 minutes, so levels are time-bounded (`--level-s`), a side is
only started when the time it is expected to need fits in what is left of `--budget-s`, and
`gpu.json` and `gpu.md` in `--out` are written again after every side, with its table printed at
once: a run cut short still reports what it measured. `--sides` picks and orders the sides, so a
second run can measure what the first had no time for.

On a CPU (`--cpu`: eager mode, a small KV cache, the tiny checkpoint's length) the same code is
the test suite's dry run (tests/tools/test_benchmarks_gpu.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gpu.tables import document, side_table
from benchmarks.lib import machine
from benchmarks.lib.priority import realtime
from benchmarks.lib.servers import EngineShape, Running, Side, callgate_side, launch, vllm_side
from benchmarks.lib.stats import summarize
from benchmarks.lib.workloads import Level, PromptMaker, Runner, Workload

CONFIG = Path(__file__).resolve().parent.parent / "sidebyside.yaml"
FIRST_START_GUESS_S = 150.0  # the first CUDA-graph start of a 7B shape took about 110 s
STOP_S = 15.0  # a server's shutdown, counted against the budget
SERVED = "qwen-plus"


def make_sides(
    names: list[str],
    model: str,
    shape: EngineShape,
    workers: int,
    auth: str,
    extra: dict[str, str],
) -> list[Side]:
    out: list[Side] = []
    for name in names:
        if name == "vllm":
            label = "vLLM server, 1 API process"
            out.append(vllm_side(model, SERVED, shape, api_servers=1, name=name, label=label))
        elif name == "vllm-N":
            label = f"vLLM server, --api-server-count {workers}"
            name_n = f"vllm-{workers}"
            out.append(
                vllm_side(model, SERVED, shape, api_servers=workers, name=name_n, label=label)
            )
        elif name == "callgate-1":
            env = {**extra, "CALLGATE_SERVER__WORKERS": "1"}
            label = "callgate, 1 front-end process"
            out.append(
                callgate_side(
                    model, CONFIG, auth=auth, shape=shape, env=env, name=name, label=label
                )
            )
        elif name == "callgate-N":
            env = {**extra, "CALLGATE_SERVER__WORKERS": str(workers)}
            label = f"callgate, {workers} front-end processes"
            name_n = f"callgate-{workers}"
            out.append(
                callgate_side(
                    model, CONFIG, auth=auth, shape=shape, env=env, name=name_n, label=label
                )
            )
        else:
            raise SystemExit(f"unknown side {name!r}")
    return out


async def _warm(
    client: httpx.AsyncClient, url: str, auth: str, w: Workload, prompts: PromptMaker
) -> None:
    """A few short turns: the first requests after start-up pay one-off costs."""
    short = replace(w, prompt_tokens=min(w.prompt_tokens, 32), output_tokens=8, seed=w.seed + 1)
    runner = Runner(client, url, auth, short, prompts)
    await runner.run(Level(units=4, concurrency=2))
    failed = [r for r in runner.results if not r.ok]
    if len(failed) == len(runner.results):
        raise RuntimeError(f"warm-up failed: {failed[0].error} {failed[0].error_detail or ''}")


async def measure(
    srv: Running,
    auth: str,
    workload: Workload,
    prompts: PromptMaker,
    levels: list[int],
    level_s: float,
) -> list[dict[str, Any]]:
    """Every level against one running server; fresh prompts per level (no cross-level cache)."""
    conns = max(levels) * 2 + 4
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    timeout = httpx.Timeout(300.0, connect=30.0, pool=None)
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await _warm(client, srv.chat_url, auth, workload, prompts)
        first_unit = 0
        for c in levels:
            # Units are a ceiling: the level ends when `level_s` has passed.
            level = Level(units=100_000, concurrency=c, first_unit=first_unit, duration_s=level_s)
            runner = Runner(client, srv.chat_url, auth, workload, prompts)
            cpu_before = srv.cpu_seconds()
            wall = await runner.run(level)
            cpu_after = srv.cpu_seconds()
            first_unit += 100_000
            summary = summarize(runner.results, wall, concurrency=c, rate=None, units=c)
            summary.pop("ttft_by_turn_ms", None)
            summary["server_cpu"] = _cpu_per_token(cpu_before, cpu_after, summary["output_tokens"])
            out.append(summary)
            t = summary["ttft_ms"]
            print(
                f"  c={c}: {summary['turns']} turns, TTFT p50 {t['p50']} ms p99 {t['p99']} ms, "
                f"{summary['output_tokens_per_s']:.0f} tok/s, errors {summary['errors'] or 0}",
                flush=True,
            )
    return out


def _cpu_per_token(
    before: tuple[float, float] | None, after: tuple[float, float] | None, tokens: int
) -> dict[str, float] | None:
    """Front-end and engine CPU µs per streamed token over one level (all their processes)."""
    if before is None or after is None or tokens <= 0:
        return None
    frontend, engine = after[0] - before[0], after[1] - before[1]
    return {
        "frontend_us_per_token": round(frontend / tokens * 1e6, 1),
        "engine_us_per_token": round(engine / tokens * 1e6, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default=None, help="Checkpoint dir (default: build the tiny test checkpoint)."
    )
    p.add_argument("--out", type=Path, required=True, help="Folder for gpu.json and gpu.md.")
    p.add_argument(
        "--sides",
        default="vllm,callgate-N,callgate-1,vllm-N",
        help="Sides in run order (vllm, callgate-N, callgate-1, vllm-N).",
    )
    p.add_argument(
        "--workers", type=int, default=4, help="N of callgate-N and vllm-N (gpu.yaml's 4)."
    )
    p.add_argument("--levels", default="1,16,64,128", help="Closed-loop concurrency levels.")
    p.add_argument("--level-s", type=float, default=15.0, help="Seconds of load per level.")
    p.add_argument("--budget-s", type=float, default=500.0, help="Start no side past this.")
    p.add_argument("--prompt-tokens", type=int, default=500)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--load-format", default="dummy", help="'auto' to load real weights.")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--cpu", action="store_true", help="CPU dry run: eager, 1 GiB KV cache.")
    p.add_argument(
        "--callgate-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra setting for the callgate sides, e.g. CALLGATE_ENGINE__STREAM_INTERVAL=2.",
    )
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.model is None:
        with tempfile.TemporaryDirectory(prefix="callgate-tiny-") as tmp:
            from benchmarks.lib.tiny_checkpoint import build

            args.model = str(build(Path(tmp)))
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    shape = EngineShape(
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enforce_eager=args.cpu,
        load_format=None if args.load_format == "auto" else args.load_format,
        gpu_memory_utilization=None if args.cpu else args.gpu_memory_utilization,
    )
    workload = Workload(
        kind="single",
        model=SERVED,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        sampling={"temperature": 0.0},
    )
    names = [s.strip() for s in args.sides.split(",") if s.strip()]
    skipped: list[str] = []
    auth = secrets.token_urlsafe(16)
    prompts = PromptMaker(args.model)  # exact prompt lengths in the checkpoint's tokens
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "tool": "benchmarks.gpu",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.gpu", *sys.argv[1:]]),
        "model": args.model,
        "shape": asdict(shape),
        "workload": asdict(workload),
        "level_s": args.level_s,
        "levels": levels,
        "machine": machine.describe(),
        "sides": [],
        "skipped": skipped,
        "wall_s": 0.0,
    }
    start_guess = FIRST_START_GUESS_S
    side_guess = len(levels) * (args.level_s + 5.0) + 10.0 + STOP_S
    with tempfile.TemporaryDirectory(prefix="callgate-gpu-") as logs:
        extra = dict(kv.split("=", 1) for kv in args.callgate_env)
        sides = make_sides(names, args.model, shape, args.workers, auth, extra)
        for side in sides:
            left = args.budget_s - (time.monotonic() - t_start)
            if start_guess + side_guess > left:
                print(f"== {side.name}: skipped, {left:.0f} s left of the budget", flush=True)
                result["skipped"].append(f"{side.name} (out of time)")
                continue
            entry = run_side(side, args, auth, workload, prompts, levels, Path(logs))
            result["sides"].append(entry)
            if entry.get("startup_s"):
                start_guess = entry["startup_s"] + 10.0
            result["wall_s"] = time.monotonic() - t_start
            write(result, args.out)
            print(side_table(entry), flush=True)
    result["wall_s"] = time.monotonic() - t_start
    write(result, args.out)
    return result


def run_side(
    side: Side,
    args: argparse.Namespace,
    auth: str,
    workload: Workload,
    prompts: PromptMaker,
    levels: list[int],
    log_dir: Path,
) -> dict[str, Any]:
    print(f"== {side.name}: {shlex.join(side.cmd[1:])}", flush=True)
    entry: dict[str, Any] = {
        "name": side.name,
        "label": side.label,
        "cmd": ["python", *side.cmd[1:]],
        "env": {k: v for k, v in side.env.items() if k != "CALLGATE_AUTH_CODES"},
    }
    log_path: Path | None = None
    try:
        with launch(side, log_dir) as srv:
            log_path = srv.log_path
            entry["startup_s"] = round(srv.startup_s, 1)
            print(f"   ready in {srv.startup_s:.1f} s", flush=True)
            with realtime():  # the load client at SCHED_FIFO 10, the server not
                entry["levels"] = asyncio.run(
                    measure(srv, auth, workload, prompts, levels, args.level_s)
                )
    except Exception as e:  # a side that fails must not stop the sides after it
        entry["error"] = f"{type(e).__name__}: {e}"[:2000]
        print(f"   failed: {entry['error']}", flush=True)
    if log_path is not None and log_path.exists():
        entry["log_tail"] = log_path.read_text(errors="replace").splitlines()[-30:]
    return entry


def write(result: dict[str, Any], out: Path) -> None:
    (out / "gpu.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "gpu.md").write_text(document(result))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    failed = [s["name"] for s in result["sides"] if s.get("error")]
    errors = sum(sum(lv["errors"].values()) for s in result["sides"] for lv in s.get("levels", []))
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}", flush=True)
    return 1 if failed or errors or not result["sides"] else 0


if __name__ == "__main__":
    sys.exit(main())
