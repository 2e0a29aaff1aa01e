"""What the caller hears first (issue 22): `python -m benchmarks.first_words [--only PART]`.

Three measurements on the tiny checkpoint (or `--model`), each server started by this script:

* **warm**: first turns of new calls on aliases whose system prompt is about `--prompt-tokens`
  tokens (then a per-call value), on a server that warms the prompts at start-up
  (`models.warm_prompts`, the default) and on one that does not. Every round sends `c` first
  turns at once to an alias nobody has called yet (a fresh alias per round, so the cold server
  is cold every round), each with its own per-call value; at c=1 and c=16. Reported: TTFT, time
  to first clause (both at the client, on the wire) and the prompt tokens found cached.
* **filler**: `--streams` closed-loop streams saturate an engine of `--saturate-seqs` decoding
  slots (the other turns queue, so their first token is late; a fresh prompt every turn),
  each alternating an alias with a filler after `--filler-after` s and the same alias
  without one; reported: time to the first content byte on the wire (the filler when one was
  said), TTFT of the answer, and how many turns got a filler.
* **cost** (no server): the front end's cost per token of a turn's stream (`Turn.sse()` on a
  scripted engine of `--deltas` one-token deltas, best of `--repeats`), in this tree and, with
  `--before TREE`, in another checkout (e.g. `git archive` of the commit before issue 22),
  interleaved; with a filler configured (not said: the answer comes first) and without.

The load client runs at real-time priority (SCHED_FIFO 10 on its own thread, once the server is
up: `benchmarks/lib/priority.py`). Writes `first_words.json` and `first_words.md` to `--out`
(default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.lib import machine, tiny_checkpoint
from benchmarks.lib.client import auth_headers
from benchmarks.lib.priority import realtime
from benchmarks.lib.servers import REPO, callgate_side, launch
from benchmarks.lib.stats import percentile
from server.text.clauses import FirstClause

AUTH = "sk-first-words-benchmark-0001"
CONFIG = REPO / "tests" / "tiny.yaml"
FILLER = "嗯，"
WORDS = [
    "please", "speak", "slowly", "and", "clearly", "to", "the", "caller", "about", "order",
    "account", "delivery", "weather", "time", "of", "day", "address", "best", "call", "back",
    "thank", "you", "for", "calling", "we", "apologize", "any", "inconvenience", "your",
]  # fmt: skip


# -- the servers' configuration -----------------------------------------------------------------


def long_prompt(seed: int, tokens: int, count: Any) -> str:
    """An agent's instructions of about `tokens` tokens (by `count`), distinct from the start."""
    rnd = random.Random(seed)
    words = [f"Agent {seed} of the shop."]
    while count(" ".join(words)) < tokens:
        words.append(" ".join(rnd.choices(WORDS, k=12)) + ".")
    return " ".join(words) + " The caller is in {{ biz.city }}."


def write_config(path: Path, model: str, args: argparse.Namespace) -> list[str]:
    """tests/tiny.yaml with the benchmark's aliases; the cold/warm aliases, in order."""
    from server.text.tokenizer import ChatTokenizer

    tok = ChatTokenizer.load(model, trust_remote_code=False)
    config = yaml.safe_load(CONFIG.read_text())
    rounds = args.rounds_c1 + args.rounds_c16
    aliases: dict[str, Any] = {"qwen-plus": {"system_prompt": ""}}
    names = [f"agent-{n:02d}" for n in range(rounds)]
    for n, name in enumerate(names):
        prompt = long_prompt(n, args.prompt_tokens, lambda t: len(tok.encode_text(t)))
        aliases[name] = {"system_prompt": prompt}
    short = "You are a phone agent. Answer briefly. The caller is in {{ biz.city }}."
    aliases["filler-on"] = {
        "system_prompt": short,
        "filler_texts": [FILLER],
        "filler_after_s": args.filler_after,
    }
    aliases["filler-off"] = {"system_prompt": short}
    config["models"] = {"default": "qwen-plus", "aliases": aliases}
    config["sampling"]["max_tokens"] = args.output_tokens
    config["deadlines"] = {"first_token_s": 60.0, "turn_s": 120.0}
    config["limits"] = {"max_in_flight": 64, "new_call_max_in_flight": 64}
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return names


# -- one streamed turn, timed on the wire -------------------------------------------------------


@dataclass
class Heard:
    first_byte: float | None = None  # the first content chunk, filler or answer
    ttft: float | None = None  # the answer's first content chunk
    first_clause: float | None = None  # the chunk that completed the answer's first clause
    filler: bool = False
    cached: int | None = None
    prompt: int | None = None
    error: str | None = None
    times: list[float] = field(default_factory=list)


async def heard(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Heard:
    """POST one streamed turn; what the caller hears first, timed at arrival of each chunk."""
    out, clause = Heard(), FirstClause()
    t0 = time.perf_counter()
    payload = json.dumps(body, ensure_ascii=False).encode()
    async with client.stream("POST", url, content=payload, headers=auth_headers(AUTH)) as r:
        if r.status_code != 200:
            out.error = f"http_{r.status_code}"
            return out
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            now = time.perf_counter() - t0
            data = json.loads(line[5:])
            usage = data.get("usage")
            if usage:
                out.prompt = usage["prompt_tokens"]
                out.cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            choices = data.get("choices") or []
            content = choices[0]["delta"].get("content") if choices else None
            if not content:
                continue
            if out.first_byte is None:
                out.first_byte = now
                if content == FILLER and body["model"] == "filler-on":
                    out.filler = True
                    continue
            out.ttft = now if out.ttft is None else out.ttft
            out.times.append(now)
            if out.first_clause is None and clause.feed(content):
                out.first_clause = out.times[clause.end_piece or 0]
    if out.first_clause is None and clause.finish():
        out.first_clause = out.times[clause.end_piece or 0]
    return out


def first_turn(model: str, city: str, tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Hello, is this the shop? I have a question."}],
        "biz_params": {"city": city},
    }


def ms(values: list[float], p: float) -> float | None:
    got = percentile(values, p)
    return None if got is None else round(got * 1000, 1)


def summary(turns: list[Heard]) -> dict[str, Any]:
    ok = [t for t in turns if t.error is None]
    ttft = [t.ttft for t in ok if t.ttft is not None]
    clause = [t.first_clause for t in ok if t.first_clause is not None]
    first = [t.first_byte for t in ok if t.first_byte is not None]
    cached = [t.cached / t.prompt for t in ok if t.cached is not None and t.prompt]
    return {
        "turns": len(turns),
        "errors": len(turns) - len(ok),
        "ttft_p50_ms": ms(ttft, 50),
        "ttft_p99_ms": ms(ttft, 99),
        "first_clause_p50_ms": ms(clause, 50),
        "first_clause_p99_ms": ms(clause, 99),
        "first_byte_p50_ms": ms(first, 50),
        "first_byte_p99_ms": ms(first, 99),
        "fillers": sum(t.filler for t in ok),
        "cached_share_mean": round(sum(cached) / len(cached), 3) if cached else None,
    }


# -- the scenarios --------------------------------------------------------------------------------


async def warm_rounds(url: str, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """First turns to fresh aliases: `rounds_c1` rounds of 1, then `rounds_c16` rounds of 16."""
    async with httpx.AsyncClient(timeout=120.0) as client:
        # The engine's own first-request costs (allocations, the first batch) on an alias
        # without a system prompt, so that they are not counted against the first round.
        for n in range(3):
            await heard(client, url, first_turn("qwen-plus", f"warm-up {n}", 4))
        result = {}
        plan = [(1, names[: args.rounds_c1]), (16, names[args.rounds_c1 :])]
        for c, aliases in plan:
            turns: list[Heard] = []
            for n, alias in enumerate(aliases):
                bodies = [first_turn(alias, f"city {n}-{i}", args.output_tokens) for i in range(c)]
                turns += await asyncio.gather(*(heard(client, url, b) for b in bodies))
            result[f"c={c}"] = summary(turns)
        return result


async def saturated(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """`streams` closed-loop streams for `seconds`, alternating the filler and no-filler alias."""
    by_alias: dict[str, list[Heard]] = {"filler-on": [], "filler-off": []}
    prompt = " ".join(random.Random(7).choices(WORDS, k=args.saturate_words))
    end = time.perf_counter() + args.seconds

    async def stream(n: int, client: httpx.AsyncClient) -> None:
        turn = 0
        while time.perf_counter() < end:
            alias = ("filler-on", "filler-off")[(n + turn) % 2]
            body = first_turn(alias, f"city {n}-{turn}", args.saturate_tokens)
            body["messages"][0]["content"] = f"{n} {turn} {prompt}"  # fresh: nothing cached
            body["ignore_eos"] = True
            by_alias[alias].append(await heard(client, url, body))
            turn += 1

    limits = httpx.Limits(max_connections=args.streams + 4)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        await asyncio.gather(*(stream(n, client) for n in range(args.streams)))
    return {alias: summary(turns) for alias, turns in by_alias.items()}


def serve(model: str, config: Path, env: dict[str, str], logs: Path, scenario: Any) -> Any:
    side = callgate_side(model, config, auth=AUTH, env={"VLLM_CPU_KVCACHE_SPACE": "2", **env})
    with launch(side, logs, timeout_s=600.0) as running, realtime() as rt:
        started = time.perf_counter()
        out = asyncio.run(scenario(running.base_url + "/"))
        return {"realtime": rt, "startup_s": round(running.startup_s, 1), "result": out,
                "run_s": round(time.perf_counter() - started, 1)}  # fmt: skip


# -- the front end's cost per token ---------------------------------------------------------------

COST_SNIPPET = r"""
import asyncio, sys, time
from tests.scripted_engine import ScriptedEngine, scripted_turn
deltas, repeats = int(sys.argv[1]), int(sys.argv[2])
filler, reply = sys.argv[3] == "on", sys.argv[4]
words = ["Sure", ",", " your", " order", " ships", " today", ".", " It", " costs", " 3.5", " $"]
if reply == "unpunctuated":  # the worst case: the first clause is looked for to the end
    words = [w for w in words if w not in (",", ".")]
pieces = [words[i % len(words)] for i in range(deltas)]
extra = {"filler": "嗯，", "filler_after_s": 30.0} if filler else {}
async def once():
    turn = scripted_turn(ScriptedEngine(pieces), **extra)
    t = time.perf_counter()
    async for _ in turn.sse():
        pass
    return (time.perf_counter() - t) / deltas
best = min(asyncio.run(once()) for _ in range(repeats))
print(best * 1e6)
"""


def cost(trees: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """µs per delta of `Turn.sse()`, best of `repeats` per run, runs interleaved across trees
    and settings; the median run of `runs`."""
    samples: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for reply in ("with clauses", "unpunctuated"):
            for name, tree in trees.items():
                for filler in ("off", "on") if name == "this tree" else ("off",):
                    n, repeats = str(args.deltas), str(args.repeats)
                    cmd = [sys.executable, "-c", COST_SNIPPET, n, repeats, filler, reply]
                    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=True)
                    setting = "filler configured" if filler == "on" else "no filler"
                    key = f"{reply} reply: {name}, {setting}"
                    samples.setdefault(key, []).append(float(out.stdout.strip()))
    return {k: round(sorted(v)[len(v) // 2], 3) for k, v in samples.items()} | {"samples": samples}


# -- the report ------------------------------------------------------------------------------------


def report(doc: dict[str, Any]) -> str:
    a = doc["args"]
    lines = [
        "# What the caller hears first: cold against warmed first turns, the filler, the cost",
        "",
        f"`python -m benchmarks.first_words {doc['argv']}` on {_machine(doc['machine'])}; the tiny "
        f"checkpoint; load client at SCHED_FIFO 10: {doc['realtime']}.",
        "",
    ]
    if "warm" in doc:
        lines += [
            f"## First turns, cold and warmed (system prompt about {a['prompt_tokens']} tokens)",
            "",
            f"A fresh alias each round: {a['rounds_c1']} rounds of 1 call, {a['rounds_c16']} "
            f"rounds of 16 calls at once; {a['output_tokens']} output tokens; times at the "
            "client, on the wire.",
            "",
            "| server | calls at once | turns | TTFT p50 / p99 ms | first clause p50 / p99 ms "
            "| cached share |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for side in ("cold", "warmed"):
            for level, s in doc["warm"][side]["result"].items():
                lines.append(
                    f"| {side} | {level[2:]} | {s['turns']} | {s['ttft_p50_ms']} / "
                    f"{s['ttft_p99_ms']} | {s['first_clause_p50_ms']} / "
                    f"{s['first_clause_p99_ms']} | {s['cached_share_mean']} |"
                )
        lines.append("")
    if "filler" in doc:
        lines += [
            f"## The filler at {a['streams']} streams, engine saturated",
            "",
            f"{a['streams']} closed-loop streams for {a['seconds']} s on an engine that decodes "
            f"{a['saturate_seqs']} at a time (the others queue), each turn a fresh prompt "
            f"of about {a['saturate_words']} words and {a['saturate_tokens']} output tokens, "
            f"alternating an alias with the filler {FILLER!r} after {a['filler_after']} s and the "
            "same alias without it.",
            "",
            "| alias | turns | first content byte p50 / p99 ms | answer TTFT p50 / p99 ms "
            "| first clause p50 / p99 ms | turns with a filler |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for alias, s in doc["filler"]["result"].items():
            lines.append(
                f"| {alias} | {s['turns']} | {s['first_byte_p50_ms']} / {s['first_byte_p99_ms']} "
                f"| {s['ttft_p50_ms']} / {s['ttft_p99_ms']} | {s['first_clause_p50_ms']} / "
                f"{s['first_clause_p99_ms']} | {s['fillers']} |"
            )
        lines.append("")
    if "cost" in doc:
        lines += [
            "## The front end's cost per token",
            "",
            f"`Turn.sse()` over a scripted engine of {a['deltas']} one-token deltas, best of "
            f"{a['repeats']} per run, median of {a['runs']} interleaved runs:",
            "",
            "| reply: tree, setting | µs per token |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v} |" for k, v in doc["cost"].items() if k != "samples"]
        lines.append("")
    return "\n".join(lines)


def _machine(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu_model']}, {m['cpu_affinity']} cores, vLLM {m['vllm']}, callgate "
        f"{m['callgate_git_sha']}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser("python -m benchmarks.first_words", description=__doc__)
    ap.add_argument("--model", help="checkpoint dir (default: the tiny test checkpoint)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--only", choices=("warm", "filler", "cost"), action="append")
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    ap.add_argument("--rounds-c1", type=int, default=10)
    ap.add_argument("--rounds-c16", type=int, default=4)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--filler-after", type=float, default=1.0)
    ap.add_argument("--saturate-words", type=int, default=300)
    ap.add_argument("--saturate-tokens", type=int, default=64)
    ap.add_argument(
        "--saturate-seqs",
        type=int,
        default=8,
        help="engine.max_num_seqs of the filler run: fewer than --streams, so that turns queue "
        "for a slot and their first token is late, as on a saturated engine",
    )
    ap.add_argument("--before", type=Path, help="another checkout to measure `cost` in too")
    ap.add_argument("--deltas", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--runs", type=int, default=5)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = set(args.only or ("warm", "filler", "cost"))
    work = Path(tempfile.mkdtemp(prefix="first-words-"))
    model = args.model or str(tiny_checkpoint.build(work / "tiny"))
    config = work / "first_words.yaml"
    names = write_config(config, model, args)
    doc: dict[str, Any] = {
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine.describe(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    rts = []
    if "warm" in only:
        doc["warm"] = {}
        for side, warm in (("cold", "false"), ("warmed", "true")):
            env = {"CALLGATE_MODELS__WARM_PROMPTS": warm}
            run = serve(model, config, env, work / "logs", lambda u: warm_rounds(u, names, args))
            doc["warm"][side] = run
            rts.append(run["realtime"])
    if "filler" in only:
        seqs = {"CALLGATE_ENGINE__MAX_NUM_SEQS": str(args.saturate_seqs)}
        doc["filler"] = serve(model, config, seqs, work / "logs", lambda u: saturated(u, args))
        rts.append(doc["filler"]["realtime"])
    if "cost" in only:
        trees = {"this tree": REPO} | ({"before": args.before} if args.before else {})
        doc["cost"] = cost(trees, args)
    doc["realtime"] = all(rts) if rts else "no server"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "first_words.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    text = report(doc)
    (args.out / "first_words.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
