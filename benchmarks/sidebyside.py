"""Side by side with vLLM's own server: `python -m benchmarks.sidebyside [--model DIR] ...`.

Runs the single-turn and the calls workloads against vLLM's OpenAI server (`python -m
vllm.entrypoints.openai.api_server`) and against callgate (`python -m server`), on the same
checkpoint with the same engine settings, and reports callgate/vLLM ratios. Writes
`sidebyside.json` (every figure, the machine and versions), `sidebyside.md` (the tables the
README quotes) and three PNG plots to the output directory.

Two ways to schedule the servers, because a shared machine's background load drifts:
- `--mode interleaved` (default): both servers are started (one after the other) and stay up;
  each level is split into `--slices` parts run alternately against each server (A B B A ...).
  Only one server is under load at any moment (an idle server uses no CPU), and both meet the
  same background load. Needs memory for two engines: fine on CPU, not on one GPU.
- `--mode sequential`: one server at a time, started and stopped, for `--rounds` rounds in
  alternating order (vLLM, callgate, callgate, vLLM, ...). The mode for a GPU host.

Without `--model` it builds the test suite's tiny random-weight checkpoint, so `make bench` needs
no model download. The run itself is `benchmarks.lib.comparison`.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.lib import comparison
from benchmarks.lib.servers import EngineShape, Side, callgate_side, vllm_side

OUTPUT = comparison.Output(
    tool="benchmarks.sidebyside",
    stem="sidebyside",
    labels={"ours": "callgate", "theirs": "vLLM server"},
    title="callgate vs vLLM's OpenAI server, side by side",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return comparison.parse(comparison.arg_parser("python -m benchmarks.sidebyside", __doc__), argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def sides(model: str, shape: EngineShape, auth: str) -> dict[str, Side]:
        return {
            "theirs": vllm_side(model, args.request_model, shape, name="theirs"),
            "ours": callgate_side(model, args.config, auth=auth, shape=shape, name="ours"),
        }

    return comparison.compare(args, sides, OUTPUT)


if __name__ == "__main__":
    sys.exit(main())
