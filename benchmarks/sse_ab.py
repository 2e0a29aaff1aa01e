"""sse-starlette against Starlette's plain StreamingResponse, same server, same bytes.

The project serves streams with sse-starlette unless a side-by-side measurement shows it costs
time to first token or throughput. `server.sse` picks the response class; everything else is
identical. This is `benchmarks.sidebyside`'s run with two callgate sides, sse-starlette as the
baseline and Starlette as the candidate: both servers run at once on the same checkpoint, each
level alternates between them in slices (A B B A ...) so both meet the same background load, and
the server's own CPU time outside the engine per output token is reported beside the latency
(the steadier figure on a noisy machine). Single turns only, no plots, no encoder timing; every
other `sidebyside` option works here too.

    python -m benchmarks.sse_ab [--model DIR] [--concurrency 1,8,32] [--requests 60,160,320]

Writes `benchmarks/results/sse_ab.json` and `sse_ab.md`.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.lib import comparison
from benchmarks.lib.servers import EngineShape, Side, callgate_side

VARIANTS = {"theirs": "sse-starlette", "ours": "starlette"}  # role -> server.sse
OUTPUT = comparison.Output(
    tool="benchmarks.sse_ab",
    stem="sse_ab",
    labels=dict(VARIANTS),
    title="sse-starlette vs Starlette StreamingResponse (callgate, same bytes)",
    plots=False,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = comparison.arg_parser("python -m benchmarks.sse_ab", __doc__)
    p.set_defaults(concurrency="1,8,32", requests="60,160,320", slices=4, no_calls=True)
    p.set_defaults(no_encoder=True, barge_in=0.0)
    return comparison.parse(p, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def sides(model: str, shape: EngineShape, auth: str) -> dict[str, Side]:
        return {
            role: callgate_side(
                model,
                args.config,
                auth=auth,
                shape=shape,
                env={"CALLGATE_SERVER__SSE": impl},
                name=impl,
            )
            for role, impl in VARIANTS.items()
        }

    return comparison.compare(args, sides, OUTPUT)


if __name__ == "__main__":
    sys.exit(main())
