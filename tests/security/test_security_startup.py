"""Start-up refusals (issue 12, findings 4 and 6, and 12's non-ASCII codes): the server will not
guard itself with a code that is a shipped placeholder, short, or not printable ASCII, and will
not listen beyond loopback without a code. Each ends the process with exit code 2 and one line
on stderr, before any engine work, without echoing the code.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from benchmarks.lib.servers import run_to_exit
from tests.conftest import REPO_ROOT, server_side

PLACEHOLDERS = {
    ".env.example": "sk-REPLACE-WITH-A-LONG-RANDOM-CODE",
}


def _run(
    tiny_model_dir, codes: str | None, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    side = server_side(tiny_model_dir, extra_args=["--host", host])
    env = {k: v for k, v in side.env.items() if k != "CALLGATE_AUTH_CODES"}
    if codes is not None:
        env["CALLGATE_AUTH_CODES"] = codes
    return run_to_exit(replace(side, env=env))


def _shipped_placeholders() -> list[str]:
    found = []
    for name in (".env.example", "deploy/k8s/secret.example.yaml"):
        for line in (REPO_ROOT / name).read_text().splitlines():
            if "CALLGATE_AUTH_CODES" in line and not line.lstrip().startswith("#"):
                value = line.split("=", 1)[-1] if "=" in line else line.split(":", 1)[1]
                found.append(value.strip().strip("'\""))
    return found


@pytest.mark.parametrize(
    ("codes", "why"),
    [
        ("good-code-0123456789,short-code", "auth code 2 of 2 is shorter than 16 characters"),
        ("sk-ünïcödé-0123456789abcdef", "auth code 1 of 1 has a character that is not printable"),
        ("sk-with space-0123456789", "auth code 1 of 1 has a character that is not printable"),
    ],
    ids=["short", "non-ascii", "space"],
)
def test_a_weak_code_refuses_to_start(tiny_model_dir, codes, why):
    run = _run(tiny_model_dir, codes)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr[-2000:]
    assert lines[0].startswith("callgate: refusing to start: ") and why in lines[0]
    for code in codes.split(","):
        assert code not in run.stderr


def test_every_shipped_placeholder_refuses_to_start(tiny_model_dir):
    placeholders = _shipped_placeholders()
    assert len(placeholders) == 2, placeholders  # .env.example and the k8s secret example
    for code in set(placeholders):
        run = _run(tiny_model_dir, code)
        assert run.returncode == 2, run.stderr[-2000:]
        assert "is the shipped placeholder" in run.stderr
        assert code not in run.stderr


def test_no_code_beyond_loopback_refuses_to_start(tiny_model_dir):
    run = _run(tiny_model_dir, None, host="0.0.0.0")
    assert run.returncode == 2, run.stderr[-2000:]
    assert "no auth code configured" in run.stderr and "CALLGATE_AUTH_CODES" in run.stderr
    assert "accepts:" not in run.stderr  # nothing generated, nothing printed
