"""How long one huge dialog pauses the other streams of a server process.

`python -m benchmarks.large_dialog [--model DIR] [--runs 5] [--messages 3000]`

A caller with a code may send a dialog of thousands of messages (up to the 1 MiB body limit).
Rendering the chat template and tokenizing it costs most of a second when none of it is
cached, and a dialog too long for the context is rendered several times while its oldest turns
are dropped. callgate plans such a dialog in a thread (`Switchboard.plan`); this measures what
another caller hears meanwhile: a long stream runs, the huge dialog is sent, and the longest
gap between the stream's chunks while the huge dialog waits for its answer is recorded, next to
the longest gap of the same stream in a window of the same length without it.

Starts its own callgate server on the tiny test checkpoint (or `--model`), and writes
`benchmarks/results/large_dialog.{json,md}`. `tests/security/test_security_large_dialog.py` runs the
same scenario once with a bound.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import secrets
import string
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lib.priority import realtime
from benchmarks.lib.servers import REPO, callgate_side, launch

RESULTS = REPO / "benchmarks" / "results"


def huge_dialog(seed: int, messages: int = 3000, words: int = 40) -> list[dict[str, str]]:
    """`messages` turns of `words` random words each: about 0.9 MB of JSON for 3000 x 40,
    none of it in any tokenizer cache (a fresh seed gives fresh text)."""
    rnd = random.Random(seed)
    vocab = ["".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(2, 9))) for _ in range(5000)]
    return [
        {"role": "user" if i % 2 else "assistant", "content": " ".join(rnd.choices(vocab, k=words))}
        for i in range(messages + 1)
    ]


@dataclass
class Pause:
    pause_s: float  # longest gap of the long stream while the huge dialog waited
    answer_s: float  # the huge dialog's time to its whole (2-token) answer
    baseline_s: float  # longest gap of the long stream in as long a window without it
    status: int


def _longest_gap(arrivals: list[float], start: float, end: float) -> float:
    window = [start, *(t for t in arrivals if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(window))


async def measure_pause(url: str, auth: str, seed: int, messages: int = 3000) -> Pause:
    """One run: a long stream (1000 tokens), then the huge dialog once 20 chunks are in."""
    body = {"model": "qwen-plus", "stream": True, "max_tokens": 1000, "messages": [
        {"role": "user", "content": "Tell me everything."}]}  # fmt: skip
    huge = {**body, "max_tokens": 2, "messages": huge_dialog(seed, messages)}
    headers = {"Authorization": auth}
    arrivals: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:

        async def long_stream() -> None:
            async with client.stream("POST", "/", json=body, headers=headers) as r:
                r.raise_for_status()
                async for _ in r.aiter_raw():
                    arrivals.append(time.monotonic())

        streaming = asyncio.create_task(long_stream())
        while len(arrivals) < 20 and not streaming.done():
            await asyncio.sleep(0.01)
        sent = time.monotonic()
        response = await client.post("/", json=huge, headers=headers)
        answered = time.monotonic()
        await streaming
    if arrivals[-1] <= answered:
        raise RuntimeError("the long stream ended before the huge dialog was answered")
    after = [t for t in arrivals if t > answered]
    baseline_end = min(after[-1], answered + (answered - sent))
    return Pause(
        pause_s=_longest_gap(arrivals, sent, answered),
        answer_s=answered - sent,
        baseline_s=_longest_gap(arrivals, answered, baseline_end),
        status=response.status_code,
    )


def _markdown(runs: list[Pause], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        "# One huge dialog vs the other streams of a process",
        "",
        f"`python -m benchmarks.large_dialog --runs {len(runs)} --messages {meta['messages']}` "
        f"on {meta['date']}: {m['cpu_model']}, {m['cpu_affinity']} cores, vLLM {m['vllm']}, "
        f"callgate {m['callgate_git_sha']}; model `{meta['model']}`.",
        "",
        "| run | longest pause while planned (ms) | same stream without it (ms) | "
        "huge dialog answered in (ms) | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r.pause_s * 1000:.0f} | {r.baseline_s * 1000:.0f} | "
            f"{r.answer_s * 1000:.0f} | {r.status} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="checkpoint dir (default: build the tiny test checkpoint)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--out", default="large_dialog", help="results file stem in benchmarks/results")
    args = p.parse_args(argv)
    model = args.model
    if model is None:
        from benchmarks.lib.tiny_checkpoint import build

        model = str(build(Path(tempfile.mkdtemp(prefix="callgate-tiny-"))))
    auth = "sk-" + secrets.token_urlsafe(24)
    env = {"CALLGATE_SAMPLING__MAX_TOKENS": "1000", "VLLM_CPU_KVCACHE_SPACE": "1"}
    side = callgate_side(model, REPO / "tests" / "tiny.yaml", auth=auth, env=env)
    runs: list[Pause] = []
    with launch(side, Path(tempfile.mkdtemp())) as srv, realtime():
        for i in range(args.runs):
            run = asyncio.run(measure_pause(srv.base_url, auth, time.time_ns() + i, args.messages))
            print(json.dumps(asdict(run)))
            runs.append(run)
    from benchmarks.lib.machine import describe

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe(),
        "model": "tiny" if args.model is None else args.model,
        "messages": args.messages,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=2) + "\n"
    )
    (RESULTS / f"{args.out}.md").write_text(_markdown(runs, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
