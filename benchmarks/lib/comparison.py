"""Two servers side by side: the engine of `python -m benchmarks.sidebyside` (callgate against
vLLM's server) and of `python -m benchmarks.sse_ab` (callgate against callgate with another
setting). A side is a value (`benchmarks.lib.servers.Side`); the run measures two of them, in the
roles `theirs` (the baseline) and `ours`, and reports ours/theirs ratios.

Two ways to schedule the servers, because a shared machine's background load drifts:
- `--mode interleaved` (default): both servers are started (one after the other) and stay up;
  each level is split into `--slices` parts run alternately against each server (A B B A ...).
  Only one server is under load at any moment (an idle server uses no CPU), and both meet the
  same background load. Needs memory for two engines: fine on CPU, not on one GPU.
- `--mode sequential`: one server at a time, started and stopped, for `--rounds` rounds in
  alternating order (theirs, ours, ours, theirs, ...). The mode for a GPU host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.lib import chunk_timing, machine, plots, report, tiny_checkpoint
from benchmarks.lib.client import TurnResult
from benchmarks.lib.loadgen import (
    add_workload_args,
    ints,
    levels_table,
    make_console,
    run_load,
    turn_table,
    workload_from_args,
)
from benchmarks.lib.machine import busy_cpu_seconds
from benchmarks.lib.priority import realtime
from benchmarks.lib.servers import EngineShape, Running, Side, launch
from benchmarks.lib.stats import summarize
from benchmarks.lib.workloads import Level, Workload

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "sidebyside.yaml"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
SIDES = ("theirs", "ours")
KINDS = ("single", "calls")
RawRuns = list[tuple[Level, list[TurnResult], float]]
# level, front-end CPU s, engine CPU s, CPU s of every other process (background), wall s
CpuRuns = list[tuple[Level, float, float, float, float]]


def _workloads(args: argparse.Namespace, seed_offset: int) -> dict[str, Workload]:
    base = workload_from_args(args)
    single = replace(base, kind="single", seed=base.seed + seed_offset)
    out = {"single": single}
    if not args.no_calls:
        out["calls"] = replace(single, kind="calls", output_tokens=args.calls_output_tokens)
    return out


def _levels(args: argparse.Namespace, kind: str) -> list[Level]:
    if kind == "single":
        pairs = zip(ints(args.concurrency), ints(args.requests), strict=True)
    else:
        pairs = zip(ints(args.calls_concurrency), ints(args.calls), strict=True)
    return [Level(units=n, concurrency=c) for c, n in pairs]


def slices(level: Level, parts: int) -> list[Level]:
    """`level` cut into `parts` consecutive unit ranges (same requests, in pieces)."""
    parts = max(1, min(parts, level.units))
    sizes = [level.units // parts + (1 if i < level.units % parts else 0) for i in range(parts)]
    out, first = [], level.first_unit
    for size in sizes:
        out.append(replace(level, units=size, first_unit=first))
        first += size
    return out


def plan(order: str, only: str | None, rounds: int) -> list[tuple[int, str]]:
    """(round, side) in run order. Rounds alternate the order (AB BA AB ...) so that a drift in
    the machine's background load hits both sides alike instead of always the second one."""
    first = ["theirs", "ours"] if order == "theirs-first" else ["ours", "theirs"]
    if only:
        first = [only]
    return [(r, side) for r in range(rounds) for side in (first if r % 2 == 0 else first[::-1])]


def pool(runs: RawRuns) -> list[dict[str, Any]]:
    """One summary per level over every round or slice: turns concatenated, wall times added."""
    merged: dict[tuple[int | None, float | None], tuple[Level, list[TurnResult], float, int]] = {}
    for level, results, duration in runs:
        key = (level.concurrency, level.rate)
        if key in merged:
            lv, acc, total, units = merged[key]
            merged[key] = (lv, acc + results, total + duration, units + level.units)
        else:
            merged[key] = (level, list(results), duration, level.units)
    return [
        summarize(results, duration, concurrency=lv.concurrency, rate=lv.rate, units=units)
        for lv, results, duration, units in merged.values()
    ]


def _own_cpu() -> float:
    """CPU seconds of this process (the load generator) and its finished children."""
    t = os.times()
    return t.user + t.system


def add_cpu(levels: list[dict[str, Any]], cpu: CpuRuns) -> None:
    """Attach CPU figures per level: the server's seconds and µs per output token, and the
    background load (other processes' CPU, in cores) the level ran against."""
    totals: dict[tuple[int | None, float | None], list[float]] = {}
    for level, frontend, engine, background, wall in cpu:
        acc = totals.setdefault((level.concurrency, level.rate), [0.0, 0.0, 0.0, 0.0])
        acc[0] += frontend
        acc[1] += engine
        acc[2] += background
        acc[3] += wall
    for lv in levels:
        found = totals.get((lv["concurrency"], lv["rate"]))
        if found is None:
            continue
        frontend, engine, background, wall = found
        tokens = max(lv["output_tokens"], 1)
        lv["server_cpu"] = {
            "frontend_s": round(frontend, 3),
            "engine_s": round(engine, 3),
            "frontend_us_per_token": round(frontend / tokens * 1e6, 1),
            "engine_us_per_token": round(engine / tokens * 1e6, 1),
            "background_cores": round(background / max(wall, 1e-9), 2),
        }


@dataclass
class Collector:
    """Everything measured, per side and workload, until the pooled report is written."""

    raw: dict[str, dict[str, RawRuns]] = field(
        default_factory=lambda: {side: {kind: [] for kind in KINDS} for side in SIDES}
    )
    parts: dict[str, dict[str, list[list[dict[str, Any]]]]] = field(
        default_factory=lambda: {side: {kind: [] for kind in KINDS} for side in SIDES}
    )
    cpu: dict[str, dict[str, CpuRuns]] = field(
        default_factory=lambda: {side: {kind: [] for kind in KINDS} for side in SIDES}
    )
    docs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_avg: list[dict[str, Any]] = field(default_factory=list)
    discarded: list[dict[str, Any]] = field(default_factory=list)

    def add(self, side: str, kind: str, doc: dict[str, Any], raw: RawRuns, cpu: CpuRuns) -> None:
        self.raw[side][kind] += raw
        self.cpu[side][kind] += cpu
        self.parts[side][kind].append(doc["levels"])
        self.docs.setdefault(side, {}).setdefault(kind, doc)

    def server(self, side: str, srv: Running, env: dict[str, str]) -> None:
        entry = self.server_entry(side, srv, env)
        entry["startup_s"].append(round(srv.startup_s, 1))

    def server_entry(self, side: str, srv: Running, env: dict[str, str]) -> dict[str, Any]:
        return self.servers.setdefault(
            side,
            {
                "cmd": [Path(srv.cmd[0]).name, *srv.cmd[1:]],
                "env": {k: v for k, v in env.items() if k != "CALLGATE_AUTH_CODES"},
                "startup_s": [],
            },
        )

    def note_load(self, label: str, side: str) -> None:
        self.load_avg.append({"at": label, "side": side, "load": round(os.getloadavg()[0], 2)})


@dataclass
class Setup:
    """What a run needs: its options, the two sides by role, the auth code, where logs go."""

    args: argparse.Namespace
    sides: dict[str, Side]
    auth: str
    log_dir: Path
    console: Console

    def server(self, role: str) -> contextlib.AbstractContextManager[Running]:
        side = self.sides[role]
        self.console.rule(f"starting {role} ({side.name}): {' '.join(side.cmd[1:4])}")
        return launch(side, self.log_dir)

    def env_of(self, role: str) -> dict[str, str]:
        return dict(self.sides[role].env)

    async def load(
        self, srv: Running, workload: Workload, levels: list[Level], warmup: int
    ) -> tuple[dict[str, Any], RawRuns, CpuRuns]:
        """Warm up, then run each level on its own, with the server's CPU time around it."""

        async def run(lv: list[Level], warm: int, raw: RawRuns | None) -> dict[str, Any]:
            return await run_load(
                srv.chat_url,
                self.auth,
                workload,
                lv,
                tokenizer=self.args.tokenizer,
                warmup=warm,
                timeout_s=self.args.timeout,
                console=self.console,
                raw=raw,
            )

        if warmup:
            await run([], warmup, None)
        raw: RawRuns = []
        cpu: CpuRuns = []
        doc: dict[str, Any] = {}
        for level in levels:
            before, busy0, me0, t0 = srv.cpu_seconds(), busy_cpu_seconds(), _own_cpu(), time.time()
            part = await run([level], 0, raw)
            after, busy1, me1, t1 = srv.cpu_seconds(), busy_cpu_seconds(), _own_cpu(), time.time()
            if before and after and busy0 is not None and busy1 is not None:
                frontend, engine = after[0] - before[0], after[1] - before[1]
                background = (busy1 - busy0) - frontend - engine - (me1 - me0)
                cpu.append((level, frontend, engine, max(background, 0.0), t1 - t0))
            if doc:
                doc["levels"] += part["levels"]
            else:
                doc = part
        return doc, raw, cpu


def run_sequential(setup: Setup, out: Collector) -> None:
    """One server at a time, `--rounds` rounds in alternating order, fresh prompts per round."""
    args = setup.args
    for rnd, side in plan(args.order, args.only, args.rounds):
        workloads = _workloads(args, seed_offset=rnd)
        with setup.server(side) as srv:
            setup.console.print(f"ready in {srv.startup_s:.1f} s (log {srv.log_path})")
            out.server(side, srv, setup.env_of(side))
            out.note_load(f"round {rnd + 1}", side)
            for i, (kind, workload) in enumerate(workloads.items()):
                with realtime():  # the load client at SCHED_FIFO 10, the servers not
                    doc, raw, cpu = asyncio.run(
                        setup.load(srv, workload, _levels(args, kind), args.warmup * (i == 0))
                    )
                out.add(side, kind, doc, raw, cpu)
                setup.console.print(levels_table(doc["levels"], f"{side}, {kind}"))


def run_interleaved(setup: Setup, out: Collector) -> None:
    """Both servers up; every level alternates between them slice by slice (A B B A ...)."""
    args = setup.args
    workloads = _workloads(args, seed_offset=0)
    first = ["theirs", "ours"] if args.order == "theirs-first" else ["ours", "theirs"]
    with setup.server(first[0]) as a, setup.server(first[1]) as b:
        running = {first[0]: a, first[1]: b}
        for side, srv in running.items():
            setup.console.print(f"{side} ready in {srv.startup_s:.1f} s (log {srv.log_path})")
            out.server(side, srv, setup.env_of(side))

        warm: dict[str, int] = {}

        async def measure() -> None:
            warm.update(dict.fromkeys(SIDES, args.warmup))
            for kind, workload in workloads.items():
                for level in _levels(args, kind):
                    for i, part in enumerate(slices(level, args.slices)):
                        for side in first if i % 2 == 0 else first[::-1]:
                            label = f"{kind} c={level.concurrency} part {i + 1}"
                            await measure_part(side, kind, workload, part, label)
                            warm[side] = 0

        async def measure_part(
            side: str, kind: str, workload: Workload, part: Level, label: str
        ) -> None:
            """Run one part; if other processes took more than --max-background cores
            meanwhile, discard it and run it again with fresh prompts (up to --retries)."""
            for attempt in range(args.retries + 1):
                out.note_load(label, side)
                # Fresh unit numbers on a retry: the same prompts would hit the prefix cache.
                run = replace(part, first_unit=part.first_unit + 1_000_000 * attempt)
                doc, raw, cpu = await setup.load(running[side], workload, [run], warm[side])
                busy = cpu[0][3] / max(cpu[0][4], 1e-9) if cpu else 0.0
                if busy <= args.max_background or attempt == args.retries:
                    out.add(side, kind, doc, raw, cpu)
                    return
                out.discarded.append({"part": label, "side": side, "background_cores": busy})
                setup.console.print(
                    f"[yellow]{side} {label}: {busy:.2f} cores of background load, rerunning"
                )

        with realtime():  # the load client at SCHED_FIFO 10, the servers not
            asyncio.run(measure())


def arg_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """Every knob of a run: the checkpoint, the schedule, the levels, the engine shape both
    sides get, the workload. An entry point adds its own and changes defaults."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None, help="Checkpoint dir (default: build the tiny one).")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="callgate settings file.")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--mode", choices=["interleaved", "sequential"], default="interleaved")
    p.add_argument("--slices", type=int, default=2, help="interleaved: parts per level and side.")
    p.add_argument("--rounds", type=int, default=2, help="sequential: rounds (AB BA ...).")
    p.add_argument(
        "--max-background",
        type=float,
        default=0.5,
        help="interleaved: rerun a part during which other processes used more cores than this.",
    )
    p.add_argument("--retries", type=int, default=2, help="interleaved: reruns per part at most.")
    p.add_argument("--order", choices=["theirs-first", "ours-first"], default="theirs-first")
    p.add_argument("--only", choices=SIDES, default=None, help="sequential: one side only.")
    p.add_argument("--concurrency", default="1,8,32,64", help="single: closed-loop levels.")
    p.add_argument("--requests", default="48,160,320,512", help="single: turns per level.")
    p.add_argument("--calls-concurrency", default="4,16", help="calls: concurrent calls.")
    p.add_argument("--calls", default="24,64", help="calls: calls per level.")
    p.add_argument("--calls-output-tokens", type=int, default=32, help="calls: max_tokens.")
    p.add_argument("--no-calls", action="store_true", help="Skip the calls workload.")
    p.add_argument("--no-encoder", action="store_true", help="Skip the chunk encoder timing.")
    p.add_argument("--warmup", type=int, default=4, help="Short turns per server before measuring.")
    p.add_argument("--timeout", type=float, default=300.0, help="Per-turn read timeout (s).")
    e = p.add_argument_group("engine (passed identically to both servers)")
    e.add_argument("--max-model-len", type=int, default=2048)
    e.add_argument("--max-num-seqs", type=int, default=128, help="vLLM's CPU API-server default.")
    e.add_argument("--max-num-batched-tokens", type=int, default=2048, help="Likewise.")
    e.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    e.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE (CPU only).")
    add_workload_args(p, model_flag="--served-model-name")
    p.set_defaults(barge_in=0.2, think_time=0.5, output_tokens=64, turns=4)
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the combinations a run cannot honour."""
    args = p.parse_args(argv)
    if args.only and args.mode == "interleaved":
        p.error("--only needs --mode sequential")
    return args


@dataclass(frozen=True)
class Output:
    """How a run names itself and its files: `STEM.json`, `STEM.md`, and plots if asked."""

    tool: str
    stem: str
    labels: dict[str, str]  # role -> the side's name in tables and plots
    title: str
    plots: bool = True


SidesFor = Callable[[str, EngineShape, str], dict[str, Side]]


def compare(args: argparse.Namespace, sides_for: SidesFor, output: Output) -> int:
    """Run the comparison `args` describe between the sides `sides_for(model, shape, auth)`
    returns (keys `theirs` and `ours`) and write the report; 2 if a server failed to start."""
    console = make_console()
    t_start = time.monotonic()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="callgate-bench-"))
    built_tiny = args.model is None
    if built_tiny:
        console.print(f"building the tiny checkpoint in {work / 'model'}")
        args.model = str(tiny_checkpoint.build(work / "model"))
    if args.tokenizer is None and Path(args.model).is_dir():
        args.tokenizer = args.model  # exact prompt lengths in tokens
    shape = EngineShape(
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enforce_eager=args.enforce_eager,
        kv_cache_gib=args.kv_cache_gib,
    )
    auth = "sk-bench-" + secrets.token_hex(8)
    setup = Setup(args, sides_for(args.model, shape, auth), auth, work / "logs", console)
    out = Collector()
    try:
        (run_interleaved if args.mode == "interleaved" else run_sequential)(setup, out)
    except RuntimeError as exc:
        console.print(f"[red]{exc}")
        return 2
    result = assemble(args, out, shape, started, built_tiny)
    result |= {"tool": output.tool, "labels": output.labels, "title": output.title}
    result["plots"] = output.plots
    for side, kinds in result["runs"].items():
        for kind, doc in kinds.items():
            console.print(levels_table(doc["levels"], f"{side}, {kind}, pooled"))
            if kind == "calls":
                console.print(turn_table(doc["levels"], f"{side}: TTFT p50 (ms) by turn index"))
    if not args.no_encoder:
        console.rule("chunk encoder micro-benchmark")
        encoder = chunk_timing.run(number=50_000, repeat=5)
        encoder.pop("machine")
        result["encoder"] = encoder
    result["duration_s"] = round(time.monotonic() - t_start, 1)
    write(result, args.out_dir, output, console)
    return 0


def assemble(
    args: argparse.Namespace,
    out: Collector,
    shape: EngineShape,
    started: str,
    built_tiny: bool,
) -> dict[str, Any]:
    """The result document: pooled levels per side and workload, ratios, per-part ratios."""
    runs: dict[str, dict[str, Any]] = {}
    for side, kinds in out.docs.items():
        for kind, doc in kinds.items():
            pooled = dict(doc)
            pooled["levels"] = pool(out.raw[side][kind])
            add_cpu(pooled["levels"], out.cpu[side][kind])
            pooled["levels_by_part"] = out.parts[side][kind]
            runs.setdefault(side, {})[kind] = pooled
    if "ours" in out.servers:
        out.servers["ours"]["config"] = args.config.read_text(encoding="utf-8")
    ours, theirs = runs.get("ours", {}), runs.get("theirs", {})
    by_part = {}
    for kind in KINDS:
        o_parts, t_parts = out.parts["ours"][kind], out.parts["theirs"][kind]
        by_part[kind] = [
            report.ratios({"levels": o}, {"levels": t})
            for o, t in zip(o_parts, t_parts, strict=False)
        ]
    return {
        "tool": "benchmarks.sidebyside",
        "schema": 1,
        "started_at": started,
        "mode": args.mode,
        "slices": args.slices if args.mode == "interleaved" else None,
        "rounds": args.rounds if args.mode == "sequential" else None,
        "order": args.order,
        "machine": machine.describe(),
        "checkpoint": {"path": args.model, "tiny": built_tiny},
        "engine_shape": shape.__dict__,
        "servers": out.servers,
        "load_avg": out.load_avg,
        "discarded_parts": out.discarded,
        "max_background": args.max_background if args.mode == "interleaved" else None,
        "runs": runs,
        "ratios": {kind: report.ratios(ours.get(kind), theirs.get(kind)) for kind in KINDS},
        "ratios_by_part": by_part,
    }


def write(result: dict[str, Any], out_dir: Path, output: Output, console: Console) -> None:
    """`STEM.json`, `STEM.md` and (if asked) the plots in `out_dir`; the markdown printed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{output.stem}.json", out_dir / f"{output.stem}.md"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(report.markdown(result))
    written = plots.draw_all(result, out_dir) if output.plots else []
    console.print(report.markdown(result), markup=False, highlight=False)
    console.print(f"wrote {json_path}, {md_path}" + "".join(f", {p.name}" for p in written))
