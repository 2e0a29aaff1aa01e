"""vLLM's own benchmark client (`vllm bench serve --backend openai-chat`) works unchanged
against callgate: it sends `max_completion_tokens`, `Bearer` auth, `stream_options`,
`ignore_eos` and an `x-request-id` header, and counts a turn as failed unless it streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, ServerHandle


def test_vllm_bench_serve_completes_every_request(server: ServerHandle, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.vllm_bench",
        "--backend", "openai-chat",
        "--base-url", server.url,
        "--endpoint", "/v1/chat/completions",
        "--model", str(server.model_dir),
        "--served-model-name", "qwen-plus",
        "--dataset-name", "random",
        "--random-input-len", "32",
        "--random-output-len", "8",
        "--ignore-eos",
        "--num-prompts", "8",
        "--max-concurrency", "4",
        "--temperature", "0",
        "--disable-tqdm",
        "--save-result",
        "--result-dir", str(tmp_path),
        "--result-filename", "result.json",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": server.auth, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["completed"] == 8 and result["failed"] == 0, result
    assert result["total_output_tokens"] == 8 * 8
