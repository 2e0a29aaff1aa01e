"""Cost of turning a call's dialog into prompt token ids (`server.text.prompt`), per turn.

Every turn of a call resends the whole history; `server.text.tokenizer` caches encodings so a turn
tokenizes only what is new. This measures a long call (121 messages) three ways: cold (nothing
cached), a typical turn (history cached, the caller's newest line new) and fully cached.

    python -m benchmarks.prompt_bench [--model CHECKPOINT_DIR] [--turns 60]

Without --model it builds the test suite's tiny checkpoint (its tokenizer is small, so real
Qwen tokenizers cost somewhat more per token).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from server.text.prompt import PromptBuilder
from server.text.tokenizer import ChatTokenizer


def dialog(turns: int, tag: str = "") -> list[tuple[str, str]]:
    out = [("system", "You are a friendly phone agent. " * 20)]
    for i in range(turns):
        out.append(("user", f"This is what the caller said in turn {i}, a sentence of speech."))
        out.append(("assistant", f"And this is the agent's answer number {i}, a short reply."))
    out.append(("user", f"The newest thing the caller said{tag}."))
    return out


def timed(fn: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="checkpoint dir (default: build the tiny test checkpoint)")
    p.add_argument("--turns", type=int, default=60)
    p.add_argument("-n", type=int, default=50)
    args = p.parse_args()
    model = args.model
    if model is None:
        from benchmarks.lib.tiny_checkpoint import build

        model = str(build(Path(tempfile.mkdtemp(prefix="callgate-tiny-"))))

    def fresh() -> PromptBuilder:
        tok = ChatTokenizer.load(model, trust_remote_code=False)
        return PromptBuilder(tok, max_model_len=32768, reserve=256, thinking=False)

    builder = fresh()
    history = dialog(args.turns)
    tokens = len(builder.build(history).token_ids)
    cold_builders = [fresh() for _ in range(10)]
    cold = timed(lambda: cold_builders.pop().build(history), 10)
    counter = iter(range(10**9))
    typical = timed(lambda: builder.build(dialog(args.turns, f" #{next(counter)}")), args.n)
    cached = timed(lambda: builder.build(history), args.n)
    print(f"dialog: {len(history)} messages, {tokens} prompt tokens ({model})")
    print(f"cold (nothing cached):          {cold:7.2f} ms")
    print(f"typical turn (one new message): {typical:7.2f} ms")
    print(f"fully cached:                   {cached:7.2f} ms")


if __name__ == "__main__":
    main()
