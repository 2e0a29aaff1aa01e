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

from benchmarks.gpu.__main__ import make_sides
from benchmarks.lib.servers import EngineShape
from tests.conftest import REPO_ROOT

# Three servers of its own: `vllm serve` with one API process and with two (vLLM runs them on
# different paths: in-process, or API processes beside an engine-core manager) and callgate with
# two workers. The fourth side, callgate on one worker, is what every other compat test runs;
# its command line is checked below without a start. Only on the GPU host's release
# (`make test-compat`): it is that host's script.

# Within the suite's 600 s cap per test: past it, the script is stopped as Ctrl-C stops it (it
# then stops its server), not left running with its server when pytest-timeout ends the test.
SCRIPT_S, STOP_S = 520.0, 60.0


@pytest.mark.slow
@pytest.mark.compat
@pytest.mark.compat_only
def test_gpu_script_dry_run_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "benchmarks.gpu", "--cpu",
        "--model", str(tiny_model_dir), "--out", str(out),
        "--levels", "1,4", "--level-s", "2", "--prompt-tokens", "48", "--output-tokens", "12",
        "--max-num-seqs", "8", "--max-num-batched-tokens", "2048", "--budget-s", "900",
        "--workers", "2", "--sides", "vllm,callgate-N,vllm-N",
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
    assert names == ["vllm", "callgate-2", "vllm-2"]
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


def test_every_side_the_script_knows_starts_its_own_command() -> None:
    """The four sides' command lines and settings, without starting them: the dry run above
    starts three, and callgate on one worker differs from callgate-N only in its worker count."""
    shape = EngineShape(max_num_seqs=8)
    names = ["vllm", "callgate-N", "callgate-1", "vllm-N"]
    sides = {s.name: s for s in make_sides(names, "/m", shape, 3, "code", {"CALLGATE_X": "1"})}
    assert list(sides) == ["vllm", "callgate-3", "callgate-1", "vllm-3"]
    for name, count in (("vllm", "1"), ("vllm-3", "3")):
        cmd = sides[name].command(8000)
        assert cmd[1:6] == ["-m", "benchmarks.vllm_serve", "/m", "--api-server-count", count]
        assert cmd[cmd.index("--port") + 1] == "8000"
        assert cmd[cmd.index("--max-num-seqs") + 1] == "8"
        assert "--enforce-eager" in cmd
    for name, workers in (("callgate-1", "1"), ("callgate-3", "3")):
        side = sides[name]
        assert side.command(8000)[1:3] == ["-m", "server"]
        assert side.env["CALLGATE_SERVER__WORKERS"] == workers
        assert side.env["CALLGATE_ENGINE__MAX_NUM_SEQS"] == "8"
        assert side.env["CALLGATE_X"] == "1" and side.env["CALLGATE_AUTH_CODES"] == "code"
    with pytest.raises(SystemExit, match="unknown side"):
        make_sides(["sglang"], "/m", shape, 3, "code", {})
