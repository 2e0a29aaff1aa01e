"""Calls first under overload: `python -m benchmarks.calls_first [--model DIR] [--out DIR]`.

A call-shaped scenario (issue 21). A steady population of calls in progress (`--population`
calls, each a series of turns with a think time between them) runs on the server; in a calm
phase nothing else happens, in the burst phase `--burst-factor` x max_num_seqs new calls arrive
within half a second, each wanting a call of `--new-call-turns` turns. Every turn streams
`--output-tokens` tokens (`ignore_eos`), so the load is the same on every server.

Each server is started once and runs both phases; they are: callgate with calls first at each
`--shares` value of the new-call level (`limits.new_call_max_in_flight` = share x max_in_flight,
`engine.scheduling_policy: priority`), callgate with the classes off (one limit, FCFS), and
vLLM's own OpenAI server (no admission limit: everything queues). Per phase and kind of turn
(a call's first turn, a turn of a call in progress), it reports attempts, refusals (503),
other failures, and TTFT p50/p99 of the turns served.

The goal: no continuing turn refused or aborted while new calls are refused, and the continuing
turns' TTFT p99 in the burst within 1.5x of the calm phase's.

The load client runs at real-time priority (SCHED_FIFO 10, set on its own thread once the
servers have started, so the servers keep the normal policy): on a 2-core machine vLLM's CPU
engine busy-waits on both cores and starves an ordinary client for seconds. Needs root (or
CAP_SYS_NICE); without it the run says so and goes on at normal priority.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lib import machine, tiny_checkpoint
from benchmarks.lib.client import TurnResult, stream_turn
from benchmarks.lib.priority import realtime
from benchmarks.lib.servers import EngineShape, Side, callgate_side, launch, vllm_side
from benchmarks.lib.stats import percentile
from benchmarks.lib.workloads import OPENING, PromptMaker

AUTH = "sk-calls-first-benchmark-0001"
REQUEST_MODEL = "qwen-plus"
CONFIG = Path(__file__).with_name("sidebyside.yaml")
KINDS = ("first", "continuing")


@dataclass
class Plan:
    population: int
    burst: int
    new_call_turns: int
    output_tokens: int
    user_tokens: int
    think_s: float
    phase_s: float
    seed: int
    burst_at_s: float = 5.0  # into the phase
    auth: str = AUTH


@dataclass
class Tally:
    """The turns of one phase on one server, by kind."""

    results: dict[str, list[TurnResult]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def add(self, kind: str, result: TurnResult) -> None:
        self.results[kind].append(result)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, results in self.results.items():
            ttfts = [r.ttft * 1000 for r in results if r.ok and r.ttft is not None]
            errors: dict[str, int] = {}
            for r in results:
                if r.error and r.error != "http_503":
                    errors[r.error] = errors.get(r.error, 0) + 1
            out[kind] = {
                "attempts": len(results),
                "served": sum(1 for r in results if r.ok),
                "refused": sum(1 for r in results if r.error == "http_503"),
                "failed": errors,
                "ttft_p50_ms": percentile(ttfts, 50),
                "ttft_p99_ms": percentile(ttfts, 99),
            }
        return out


class Call:
    """One call against a server: its dialog so far, its words from its own seeded generator."""

    def __init__(self, client: httpx.AsyncClient, url: str, plan: Plan, name: str) -> None:
        self.client, self.url, self.plan, self.name = client, url, plan, name
        self.rng = random.Random(f"{plan.seed}-{name}")
        self.messages: list[dict[str, str]] = [{"role": "assistant", "content": OPENING}]
        self.turns = 0

    async def turn(self, tally: Tally | None) -> bool:
        """The caller speaks, the bot answers; counted in `tally` (None: not measured). False
        when the turn was not served (a refused new call gives up, as a dialer would)."""
        self.turns += 1
        user = PROMPTS.make(self.plan.user_tokens, self.rng)
        self.messages.append({"role": "user", "content": user})
        body = {
            "model": REQUEST_MODEL,
            "stream": True,
            "messages": self.messages,
            "max_tokens": self.plan.output_tokens,
            "ignore_eos": True,
            "session_id": self.name,
        }
        result = await stream_turn(self.client, self.url, body, self.plan.auth)
        if tally is not None:
            tally.add("first" if self.turns == 1 else "continuing", result)
        if not result.ok:
            return False
        self.messages.append({"role": "assistant", "content": result.text})
        return True

    async def think(self) -> None:
        await asyncio.sleep(self.plan.think_s * self.rng.uniform(0.5, 1.5))


PROMPTS = PromptMaker()


async def _phase(client: httpx.AsyncClient, url: str, plan: Plan, burst: bool, label: str) -> Tally:
    """The population's calls (their first turns before the phase, not measured), then
    `phase_s` of their continuing turns, with the burst of new calls 5 s in."""
    tally = Tally()
    started = asyncio.Event()
    stop_at = [0.0]

    async def member(i: int) -> None:
        call = Call(client, url, plan, f"{label}-pop-{i}")
        await call.turn(None)  # the call's first turn: before the measurement
        await started.wait()
        while time.monotonic() < stop_at[0]:
            await call.think()
            if not await call.turn(tally):
                return

    async def new_call(i: int) -> None:
        call = Call(client, url, plan, f"{label}-new-{i}")
        for _ in range(plan.new_call_turns):
            if not await call.turn(tally):
                return
            await call.think()

    members = [asyncio.create_task(member(i)) for i in range(plan.population)]
    await asyncio.sleep(plan.think_s * 2)  # every member has had its first turn
    stop_at[0] = time.monotonic() + plan.phase_s
    started.set()
    news: list[asyncio.Task[None]] = []
    if burst:
        await asyncio.sleep(plan.burst_at_s)
        for i in range(plan.burst):
            news.append(asyncio.create_task(new_call(i)))
            await asyncio.sleep(0.5 / plan.burst)
    await asyncio.gather(*members, *news)
    return tally


async def _measure(url: str, plan: Plan) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600.0, limits=limits) as client:
        calm = await _phase(client, url, plan, burst=False, label="calm")
        burst = await _phase(client, url, plan, burst=True, label="burst")
    return {"calm": calm.summary(), "burst": burst.summary()}


def _sides(args: argparse.Namespace, model: str, shape: EngineShape) -> dict[str, Side]:
    total = shape.max_num_seqs
    base = {"CALLGATE_LIMITS__MAX_IN_FLIGHT": str(total)}
    sides: dict[str, Side] = {}
    for share in args.shares:
        level = max(1, round(total * share))
        env = base | {
            "CALLGATE_LIMITS__NEW_CALL_MAX_IN_FLIGHT": str(level),
            "CALLGATE_ENGINE__SCHEDULING_POLICY": "priority",
        }
        name = f"callgate, calls first at {level}/{total}"
        sides[name] = callgate_side(model, CONFIG, auth=AUTH, shape=shape, env=env, name="on")
    off = base | {
        "CALLGATE_LIMITS__NEW_CALL_MAX_IN_FLIGHT": str(total),
        "CALLGATE_ENGINE__SCHEDULING_POLICY": "fcfs",
    }
    sides[f"callgate, classes off ({total}, FCFS)"] = callgate_side(
        model, CONFIG, auth=AUTH, shape=shape, env=off, name="off"
    )
    if not args.no_vllm:
        sides["vLLM's server"] = vllm_side(model, REQUEST_MODEL, shape, name="vllm")
    return sides


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def markdown(doc: dict[str, Any]) -> str:
    p, m = doc["plan"], doc["machine"]
    lines = [
        "# Calls first under overload",
        "",
        f"`{doc['command']}` on {m['cpu_cores']} cores ({m['cpu_model']}), vLLM {m['vllm']}, "
        f"callgate {m['callgate_git_sha']}, {doc['date']}.",
        "",
        f"Engine: max_num_seqs {doc['shape']['max_num_seqs']} (= callgate's max_in_flight). "
        f"{p['population']} calls in progress (think time {p['think_s']} s x 0.5-1.5), for "
        f"{p['phase_s']} s per phase; the burst: {p['burst']} new calls in 0.5 s, 5 s into the "
        f"phase, each of up to {p['new_call_turns']} turns. Every turn: {p['output_tokens']} "
        f"tokens. Load client at SCHED_FIFO 10: {doc['realtime']}.",
        "",
        "| server | phase | kind | attempts | served | refused | failed | TTFT p50 ms | "
        "TTFT p99 ms |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for side, phases in doc["results"].items():
        for phase in ("calm", "burst"):
            for kind in KINDS:
                s = phases[phase][kind]
                if not s["attempts"]:
                    continue
                failed = ", ".join(f"{k}: {v}" for k, v in s["failed"].items()) or "0"
                lines.append(
                    f"| {side} | {phase} | {kind} | {s['attempts']} | {s['served']} | "
                    f"{s['refused']} | {failed} | {_fmt(s['ttft_p50_ms'])} | "
                    f"{_fmt(s['ttft_p99_ms'])} |"
                )
    lines += ["", "Continuing turns' TTFT p99, burst / calm (the goal: at most 1.5):", ""]
    for side, phases in doc["results"].items():
        calm = phases["calm"]["continuing"]["ttft_p99_ms"]
        burst = phases["burst"]["continuing"]["ttft_p99_ms"]
        ratio = "-" if not calm or burst is None else f"{burst / calm:.2f}"
        lines.append(f"- {side}: {ratio}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser("python -m benchmarks.calls_first", description=__doc__)
    ap.add_argument("--model", help="checkpoint dir (default: build the tiny one)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--shares", type=lambda s: [float(x) for x in s.split(",")], default=[0.75])
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=4096, help="calls grow over a phase")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--burst-factor", type=float, default=2.0)
    ap.add_argument("--new-call-turns", type=int, default=3)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--user-tokens", type=int, default=16)
    ap.add_argument("--think-s", type=float, default=1.5)
    ap.add_argument("--phase-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--no-vllm", action="store_true", help="leave vLLM's server out")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="calls_first-"))  # the tiny checkpoint, server logs
    model = args.model or str(tiny_checkpoint.build(work / "model"))
    shape = EngineShape(max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs)
    plan = Plan(
        population=args.population,
        burst=round(args.burst_factor * args.max_num_seqs),
        new_call_turns=args.new_call_turns,
        output_tokens=args.output_tokens,
        user_tokens=args.user_tokens,
        think_s=args.think_s,
        phase_s=args.phase_s,
        seed=args.seed,
    )
    results: dict[str, Any] = {}
    realtimes = []
    for name, side in _sides(args, model, shape).items():
        print(f"== {name}", file=sys.stderr)
        with launch(side, work / "logs") as running, realtime() as rt:
            realtimes.append(rt)
            results[name] = asyncio.run(_measure(running.chat_url, plan))
        print(json.dumps(results[name]), file=sys.stderr)
    doc = {
        "command": "python -m benchmarks.calls_first " + " ".join(argv or sys.argv[1:]),
        "machine": machine.describe(),
        "date": time.strftime("%Y-%m-%d"),
        "shape": {"max_num_seqs": shape.max_num_seqs, "max_model_len": shape.max_model_len},
        "plan": plan.__dict__,
        "realtime": all(realtimes),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calls_first.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "calls_first.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
