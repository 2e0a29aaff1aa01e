"""The embedded model's conversion (`server/engine/embedded.py`) run by several processes at
once, and after one was killed.

The processes are real (each a `python -c` of its own) and so is the lock; only the conversion
itself is replaced by a slow stand-in that writes a checkpoint-shaped directory, because the
real one takes ~30 s of both cores (tests/models/test_real_model.py runs it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.engine import embedded
from server.engine.embedded import EMBEDDED_NAME, embedded_dir, ensure_embedded

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0  # generous: two Python start-ups on a loaded 2-core machine

# One process: wait until every peer is ready (files in `barrier`), then ensure the model with
# a conversion that records itself in `log` and takes `convert_s`.
CHILD = """
import sys, time
from pathlib import Path
from server.engine import embedded

cache, barrier, log, name, peers, convert_s = sys.argv[1:7]
def convert(gguf_dir, out):
    with open(log, "a") as f:
        f.write(name + "\\n")
    (out / "config.json").write_text("{}")
    time.sleep(float(convert_s))
    (out / "model.safetensors").write_text(name)
embedded._convert = convert
Path(barrier, name).touch()
deadline = time.monotonic() + 60
while len(list(Path(barrier).iterdir())) < int(peers):
    assert time.monotonic() < deadline, "the other process never started"
    time.sleep(0.01)
print(embedded.ensure_embedded(Path(cache)), flush=True)
"""


def _spawn(tmp_path: Path, name: str, peers: int, convert_s: float) -> subprocess.Popen[str]:
    barrier = tmp_path / "barrier"
    barrier.mkdir(exist_ok=True)
    args = [str(tmp_path / "cache"), str(barrier), str(tmp_path / "conversions"), name]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args, str(peers), str(convert_s)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _leftovers(cache: Path) -> list[Path]:
    return sorted(embedded_dir(cache).parent.glob(f".{EMBEDDED_NAME}-*"))


def test_two_first_runs_at_once_convert_once_and_share_the_result(tmp_path: Path) -> None:
    """The second process waits for the first one's lock, then serves what it converted."""
    procs = [_spawn(tmp_path, name, peers=2, convert_s=1.5) for name in ("a", "b")]
    outputs = [p.communicate(timeout=WAIT_S) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    target = embedded_dir(tmp_path / "cache")
    assert {out.strip() for out, _ in outputs} == {str(target)}
    conversions = (tmp_path / "conversions").read_text().split()
    assert len(conversions) == 1, f"converted {len(conversions)} times: {conversions}"
    assert (target / ".complete").is_file()
    assert (target / "model.safetensors").read_text() == conversions[0]
    assert _leftovers(tmp_path / "cache") == []


def test_a_killed_conversion_is_swept_and_does_not_block_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _spawn(tmp_path, "killed", peers=1, convert_s=600)
    cache = tmp_path / "cache"
    deadline = time.monotonic() + WAIT_S
    # Until the conversion is under way: its first file written (the log line comes before it,
    # and a kill between the two, seen on a loaded machine, would leave an empty directory).
    while not any((d / "config.json").is_file() for d in _leftovers(cache)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the conversion never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=WAIT_S)
    (interrupted,) = _leftovers(cache)
    assert (interrupted / "config.json").is_file() and not embedded_dir(cache).exists()

    def convert(gguf_dir: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_convert", convert)
    target = ensure_embedded(cache)  # would block for good if the dead process held the lock
    assert (target / ".complete").is_file() and (target / "config.json").is_file()
    assert _leftovers(cache) == []


def test_a_finished_conversion_is_reused_without_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = embedded_dir(tmp_path)
    target.mkdir(parents=True)
    (target / ".complete").write_text("done\n")

    def convert(gguf_dir: Path, out: Path) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(embedded, "_convert", convert)
    assert ensure_embedded(tmp_path) == target
    assert not (target.parent / f".{EMBEDDED_NAME}.lock").exists()
