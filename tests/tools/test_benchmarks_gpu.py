"""The GPU host's one command (`python -m benchmarks.gpu`), dry run on this CPU with the tiny
checkpoint: every side starts, serves every level without errors, and the JSON and markdown
report what ran, so the script a GPU session sends cannot rot between GPU runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# Four servers of its own (vLLM's and callgate's, one and two front ends); the GPU host runs the
# script on its release, so it runs there too.
# Only on the GPU host's release (`make test-compat`): it is that host's script.
pytestmark = [pytest.mark.slow, pytest.mark.compat, pytest.mark.compat_only]

# Within the suite's 600 s cap per test: past it, the script is stopped as Ctrl-C stops it (it
# then stops its server), not left running with its server when pytest-timeout ends the test.
SCRIPT_S, STOP_S = 520.0, 60.0


def test_gpu_script_dry_run_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "benchmarks.gpu", "--cpu",
        "--model", str(tiny_model_dir), "--out", str(out),
        "--levels", "1,4", "--level-s", "2", "--prompt-tokens", "48", "--output-tokens", "12",
        "--max-num-seqs", "8", "--max-num-batched-tokens", "2048", "--budget-s", "900",
        "--workers", "2",
    ]  # fmt: skip
    with subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=SCRIPT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=STOP_S)
            pytest.fail(f"still running after {SCRIPT_S:.0f} s:\n{stdout[-3000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    names = [s["name"] for s in result["sides"]]
    assert names == ["vllm", "callgate-2", "callgate-1", "vllm-2"]
    for side in result["sides"]:
        assert "error" not in side, side
        assert side["startup_s"] > 0
        assert [lv["concurrency"] for lv in side["levels"]] == [1, 4]
        for lv in side["levels"]:
            assert lv["turns_ok"] >= 1 and lv["errors"] == {}
            assert lv["output_tokens"] == lv["turns_ok"] * 12  # ignore_eos: exact lengths
            assert lv["ttft_ms"]["p50"] > 0 and lv["chunks_per_s"] > 0
    assert result["machine"]["vllm"] and result["shape"]["load_format"] == "dummy"
    md = (out / "gpu.md").read_text()
    for side in result["sides"]:
        assert f"### {side['label']}" in md
    assert "| concurrency | TTFT p50 (ms) |" in md
