"""The speech filter's per-delta cost: `python -m benchmarks.speech_filter [--out FILE]`.

Streams replies through `server.text.speech.SpeechFilter` in engine-sized deltas (1-6 characters,
as a tokenizer cuts them) and reports the cost per delta against the same loop without the
filter, for plain sentences (nothing to filter), a markdown list with emoji and a URL, and a
Chinese reply; then a hostile reply of marker runs (4096 deltas of 80 `#` at a line start, a
letter, 1024 deltas of 80 `-`: SmolLM2 has single tokens of 80 `#`), its total time and its
slowest delta. The TTFT side of the question is measured on a server with two aliases (filter
on and off) with `benchmarks.load`; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from server.text.speech import SpeechFilter

REPLIES = {
    "plain": (
        "Thank you for calling. Your order was shipped this morning and should arrive on "
        "Thursday. Is there anything else I can help you with today? "
    )
    * 4,
    "markdown": (
        "Here are three options:\n\n1. **Express delivery** arrives tomorrow 🚚\n"
        "2. *Standard* delivery takes `3-5` days.\n3. Pick it up at our store, see "
        "https://example.com/stores for hours.\n\n### Note\n- Prices vary. 😊\n"
    )
    * 3,
    "chinese": (
        "您好！😊 您的订单已经发货，预计周四送达。\n1. **快递**：明天送达\n2. 普通：三到五天\n"
        "详情请访问 www.example.com。还有什么可以帮您？"
    )
    * 3,
}


def deltas_of(text: str, seed: int = 0) -> list[str]:
    """`text` cut into 1-6 character pieces, as an engine's deltas arrive."""
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(text):
        n = rng.randint(1, 6)
        pieces.append(text[at : at + n])
        at += n
    return pieces


def per_delta_ns(deltas: list[str], make: Callable[[], SpeechFilter | None], rounds: int) -> float:
    """Median over rounds of the cost of one delta (ns), the filter made fresh each round."""
    samples = []
    for _ in range(rounds):
        f = make()
        start = time.perf_counter_ns()
        if f is None:
            out = list(deltas)
        else:
            out = [f.feed(d) for d in deltas]
            out.append(f.finish())
        samples.append((time.perf_counter_ns() - start) / len(deltas))
        assert out  # keep the work
    return statistics.median(samples)


def hostile() -> tuple[float, float]:
    """The marker-run reply's total time and slowest delta (seconds)."""
    deltas = ["Intro\n", *["#" * 80] * 4096, "a", *["-" * 80] * 1024, " end"]
    f = SpeechFilter()
    worst, start = 0.0, time.perf_counter()
    for d in deltas:
        t = time.perf_counter()
        f.feed(d)
        worst = max(worst, time.perf_counter() - t)
    f.finish()
    return time.perf_counter() - start, worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speech_filter", description=__doc__)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--out", type=Path, help="write the table (markdown) here too")
    args = p.parse_args(argv)
    head = "| reply | deltas | without filter, ns/delta | with filter, ns/delta | filtered chars |"
    rows = [head]
    rows.append("|---|---|---|---|---|")
    for name, text in REPLIES.items():
        deltas = deltas_of(text)
        bare = per_delta_ns(deltas, lambda: None, args.rounds)
        filtered = per_delta_ns(deltas, SpeechFilter, args.rounds)
        f = SpeechFilter()
        for d in deltas:
            f.feed(d)
        f.finish()
        rows.append(f"| {name} | {len(deltas)} | {bare:.0f} | {filtered:.0f} | {f.filtered} |")
    total, worst = hostile()
    rows.append("")
    rows.append(
        f"Marker runs (5,122 deltas): {total * 1000:.1f} ms, slowest delta {worst * 1000:.2f} ms"
    )
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
