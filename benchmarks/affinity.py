"""Call affinity on several engine cores: `python -m benchmarks.affinity [--model DIR] [--out DIR]`.

Issue 23's measurement. Every turn of a call re-sends the whole dialog; the engine core that
served the call's last turn has it in its prefix cache. A multi-turn call workload (`--calls`
calls of `--turns` turns, `--concurrency` at once, each turn's prompt the whole dialog so far,
`ignore_eos` so every server does the same work) runs against callgate with
`engine.data_parallel_size: 2` and call affinity on, the same with it off (vLLM's own balancer
places every turn), and one engine core. Then, with core 0 artificially slowed (its engine core
and model worker processes stopped for `--duty` of every 100 ms, SIGSTOP/SIGCONT), the same on
two cores with affinity on (the default release threshold), affinity with no slack limit
(`affinity_slack` 10000: a call moves only off a full core) and vLLM's balancer, with more calls
at once (`--uneven-calls`, `--uneven-concurrency`), so that the release is exercised.

Reported per case: vLLM's prefix-cache hit rate over the run (`vllm:prefix_cache_hits` /
`vllm:prefix_cache_queries`, all cores), the cached share of later turns' prompts (from the
usage chunk), TTFT p50/p99 by turn index and for all later turns, throughput, and how callgate
placed the turns (`callgate_engine_turns_total`). The goal: affinity closes at least 60% of the
hit-rate gap between vLLM's balancer and one core, with no worse p99 under the uneven load.

The load client runs at real-time priority (SCHED_FIFO 10 on its own thread, once the server
has started, so the server keeps the normal policy): on a 2-core machine vLLM's CPU engine
busy-waits on both cores and would starve an ordinary client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.lib import machine, tiny_checkpoint
from benchmarks.lib.client import TurnResult
from benchmarks.lib.priority import realtime
from benchmarks.lib.servers import EngineShape, Running, callgate_side, launch
from benchmarks.lib.stats import percentile
from benchmarks.lib.workloads import Level, PromptMaker, Runner, Workload

AUTH = "sk-affinity-benchmark-000001"
CONFIG = Path(__file__).with_name("sidebyside.yaml")
STICKY = 10_000  # an affinity_slack no load reaches: a call moves only off a full core


# Admission out of the way (no 503s for any case, the one core included): placement is measured.
OPEN = {"CALLGATE_LIMITS__MAX_IN_FLIGHT": "1000", "CALLGATE_LIMITS__NEW_CALL_MAX_IN_FLIGHT": "1000"}


def _cases(uneven: bool, slacks: tuple[int, ...] = ()) -> dict[str, dict[str, str]]:
    dp2 = OPEN | {"CALLGATE_ENGINE__DATA_PARALLEL_SIZE": "2"}
    on = dp2 | {"CALLGATE_ENGINE__CALL_AFFINITY": "true"}
    off = dp2 | {"CALLGATE_ENGINE__CALL_AFFINITY": "false"}
    if uneven:
        sticky = on | {"CALLGATE_ENGINE__AFFINITY_SLACK": str(STICKY)}
        tried = {
            f"affinity, affinity_slack {n}, core 0 slowed": on
            | {"CALLGATE_ENGINE__AFFINITY_SLACK": str(n)}
            for n in slacks
        }
        return {
            "affinity on, core 0 slowed": on,
            **tried,
            "affinity, released only from a full core, core 0 slowed": sticky,
            "vLLM's balancer, core 0 slowed": off,
        }
    return {
        "affinity on (2 cores)": on,
        "vLLM's balancer (2 cores)": off,
        "one core": OPEN | {"CALLGATE_ENGINE__DATA_PARALLEL_SIZE": "1"},
    }


def _sum(text: str, name: str) -> float:
    """A metric's samples summed over their labels (every engine core)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _placements(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("callgate_engine_turns_total{"):
            labels, value = line.rsplit(" ", 1)
            how = labels.split('affinity="', 1)[1].split('"', 1)[0]
            out[how] = out.get(how, 0.0) + float(value)
    return {k: v for k, v in out.items() if v}


def _rank_processes(server_pid: int, rank: int) -> list[psutil.Process]:
    """The engine core and model worker of data-parallel rank `rank` (vLLM's process titles)."""
    found = []
    for proc in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if f"_DP{rank}" in " ".join(proc.cmdline()[:1]):
                found.append(proc)
    return found


@contextlib.contextmanager
def slowed(procs: list[psutil.Process], duty: float, period_s: float = 0.1) -> Iterator[None]:
    """`procs` stopped for `duty` of every `period_s` while inside (a slow or loaded core)."""
    done = threading.Event()

    def toggle() -> None:
        with realtime(quiet=True):
            while not done.is_set():
                for p in procs:
                    p.send_signal(signal.SIGSTOP)
                time.sleep(period_s * duty)
                for p in procs:
                    p.send_signal(signal.SIGCONT)
                time.sleep(period_s * (1 - duty))

    thread = threading.Thread(target=toggle, name="slow-core", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGCONT)


async def _run(url: str, workload: Workload, level: Level) -> tuple[list[TurnResult], float]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600.0, limits=limits) as client:
        runner = Runner(client, url, AUTH, workload, PromptMaker())
        wall = await runner.run(level)
    return runner.results, wall


def _ms(values: list[float], p: float) -> float | None:
    v = percentile(values, p)
    return None if v is None else v * 1000.0


def summarize(results: list[TurnResult], wall: float, before: str, after: str) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    by_turn: dict[int, list[float]] = {}
    for r in ok:
        if r.ttft is not None:
            by_turn.setdefault(r.turn_index, []).append(r.ttft)
    later = [r for r in ok if r.turn_index > 1]
    later_ttft = [r.ttft for r in later if r.ttft is not None]
    prompt = sum(r.prompt_tokens or 0 for r in later)
    cached = sum(r.cached_tokens or 0 for r in later)
    hits = _sum(after, "vllm:prefix_cache_hits_total") - _sum(
        before, "vllm:prefix_cache_hits_total"
    )
    queries = _sum(after, "vllm:prefix_cache_queries_total") - _sum(
        before, "vllm:prefix_cache_queries_total"
    )
    before_placed, after_placed = _placements(before), _placements(after)
    return {
        "turns": len(results),
        "errors": len(results) - len(ok),
        "later_prompt_tokens_mean": prompt / len(later) if later else None,
        "hit_rate": hits / queries if queries else None,
        "later_cached_share": cached / prompt if prompt else None,
        "later_ttft_p50_ms": _ms(later_ttft, 50),
        "later_ttft_p99_ms": _ms(later_ttft, 99),
        "ttft_by_turn": {
            str(k): {"n": len(v), "p50_ms": _ms(v, 50), "p99_ms": _ms(v, 99)}
            for k, v in sorted(by_turn.items())
        },
        "output_tok_s": sum(r.output_tokens for r in ok) / wall,
        "turns_s": len(ok) / wall,
        "wall_s": wall,
        "placed": {k: v - before_placed.get(k, 0.0) for k, v in after_placed.items()},
    }


def _scrape(running: Running) -> str:
    return httpx.get(f"{running.base_url}/metrics", timeout=30.0).text


def measure(args: argparse.Namespace, model: str, work: Path, uneven: bool) -> dict[str, Any]:
    shape = EngineShape(max_num_seqs=args.max_num_seqs)
    workload = Workload(
        kind="calls",
        turns=args.turns,
        user_tokens=args.user_tokens,
        output_tokens=args.output_tokens,
        think_time_s=args.think_s,
        seed=args.seed,
    )
    level = Level(units=args.calls, concurrency=args.concurrency)
    if uneven:  # enough calls at once for a slowed core's turns to pile up past the slack
        level = Level(units=args.uneven_calls, concurrency=args.uneven_concurrency)
    # The reply cap at the workload's answer: the prompt builder keeps sampling.max_tokens of
    # room (sidebyside.yaml's 4096 would leave none in 2048 and drop every earlier turn).
    cap = {"CALLGATE_SAMPLING__MAX_TOKENS": str(args.output_tokens)}
    results: dict[str, Any] = {}
    for name, env in _cases(uneven, tuple(args.uneven_slacks)).items():
        print(f"== {name}", file=sys.stderr)
        side = callgate_side(model, CONFIG, auth=AUTH, shape=shape, env=env | cap, name="affinity")
        with launch(side, work / "logs") as running, realtime() as rt:
            slow = _rank_processes(running.pid, 0) if uneven else []
            if uneven and not slow:
                raise RuntimeError("no process of data-parallel rank 0 to slow down")
            before = _scrape(running)
            with slowed(slow, args.duty) if slow else contextlib.nullcontext():
                turns, wall = asyncio.run(_run(running.chat_url, workload, level))
            results[name] = summarize(turns, wall, before, _scrape(running))
            results[name]["realtime"] = rt
        print(json.dumps(results[name]), file=sys.stderr)
    return results


def _f(v: float | None, pattern: str = "{:.0f}") -> str:
    return "-" if v is None else pattern.format(v)


def table(results: dict[str, Any], turns: int) -> list[str]:
    shown = sorted({t for t in (1, 2, 3, 5, turns) if t <= turns})
    head = " | ".join(f"turn {t} p50/p99 ms" for t in shown)
    lines = [
        f"| case | hit rate | later turns cached | later TTFT p50/p99 ms | {head} | tok/s | "
        "placed |",
        "|---|---:|---:|---:|" + "---:|" * len(shown) + "---:|---|",
    ]
    for name, s in results.items():
        cells = []
        for t in shown:
            by = s["ttft_by_turn"].get(str(t), {})
            cells.append(f"{_f(by.get('p50_ms'))}/{_f(by.get('p99_ms'))}")
        placed = ", ".join(f"{k} {v:.0f}" for k, v in sorted(s["placed"].items())) or "-"
        errors = f" ({s['errors']} errors)" if s["errors"] else ""
        lines.append(
            f"| {name}{errors} | {_f(s['hit_rate'], '{:.1%}')} | "
            f"{_f(s['later_cached_share'], '{:.1%}')} | "
            f"{_f(s['later_ttft_p50_ms'])}/{_f(s['later_ttft_p99_ms'])} | "
            + " | ".join(cells)
            + f" | {s['output_tok_s']:.0f} | {placed} |"
        )
    return lines


def gap_closed(results: dict[str, Any]) -> float | None:
    """The share of the hit-rate gap between vLLM's balancer and one core that affinity closes."""
    on = results.get("affinity on (2 cores)", {}).get("hit_rate")
    off = results.get("vLLM's balancer (2 cores)", {}).get("hit_rate")
    one = results.get("one core", {}).get("hit_rate")
    if None in (on, off, one) or one == off:
        return None
    return float((on - off) / (one - off))


def markdown(doc: dict[str, Any]) -> str:
    p, m = doc["plan"], doc["machine"]
    lines = [
        "# Call affinity on two engine cores",
        "",
        f"`{doc['command']}` on {m['cpu_cores']} cores ({m['cpu_model']}), vLLM {m['vllm']}, "
        f"callgate {m['callgate_git_sha']}, {doc['date']}.",
        "",
        f"{p['calls']} calls of {p['turns']} turns, {p['concurrency']} at once; each turn's "
        f"prompt the whole dialog so far (the caller's words {p['user_tokens']} tokens a turn, "
        f"the answer {p['output_tokens']}, think time {p['think_s']} s x 0.5-1.5); "
        f"max_num_seqs {p['max_num_seqs']} per core; load client at SCHED_FIFO 10: "
        f"{doc['realtime']}. Hit rate: vLLM's prefix_cache_hits / queries over the run.",
        "",
        *table(doc["even"], p["turns"]),
        "",
        f"Share of the hit-rate gap (vLLM's balancer to one core) that affinity closes: "
        f"{_f(gap_closed(doc['even']), '{:.0%}')}.",
    ]
    if doc.get("uneven"):
        lines += [
            "",
            f"Core 0 slowed: its engine core and model worker stopped {p['duty']:.0%} of every "
            f"100 ms; {p['uneven_calls']} calls, {p['uneven_concurrency']} at once.",
            "",
            *table(doc["uneven"], p["turns"]),
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser("python -m benchmarks.affinity", description=__doc__)
    ap.add_argument("--model", help="checkpoint dir (default: build the tiny one)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--user-tokens", type=int, default=40)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--think-s", type=float, default=0.5)
    ap.add_argument("--max-num-seqs", type=int, default=8, help="per engine core")
    ap.add_argument("--duty", type=float, default=0.5, help="share of time core 0 is stopped")
    ap.add_argument("--uneven-calls", type=int, default=48, help="calls in the slowed-core run")
    ap.add_argument("--uneven-concurrency", type=int, default=24, help="... at once")
    ap.add_argument(
        "--uneven-slacks",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="further affinity_slack values to try in the slowed-core run (e.g. 4,8)",
    )
    ap.add_argument("--no-uneven", action="store_true", help="skip the slowed-core run")
    ap.add_argument("--only-uneven", action="store_true", help="only the slowed-core run")
    ap.add_argument("--seed", type=int, default=23)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="affinity-"))  # the tiny checkpoint, server logs
    model = args.model or str(tiny_checkpoint.build(work / "model"))
    even = {} if args.only_uneven else measure(args, model, work, uneven=False)
    uneven = {} if args.no_uneven else measure(args, model, work, uneven=True)
    doc = {
        "command": "python -m benchmarks.affinity " + " ".join(argv or sys.argv[1:]),
        "machine": machine.describe(),
        "date": time.strftime("%Y-%m-%d"),
        "plan": {k: v for k, v in vars(args).items() if k not in ("model", "out")},
        "realtime": all(s["realtime"] for s in (*even.values(), *uneven.values())),
        "even": even,
        "uneven": uneven,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "affinity_uneven" if args.only_uneven else "affinity"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
