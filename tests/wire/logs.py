"""What a server process says about itself: its turn log lines, how soon it aborted a turn whose
caller hung up, and its child processes (vLLM's engine core) and that they are gone.

The abort promise (README, "Callers who leave" in SECURITY.md) is that the engine request of a
caller who hangs up is aborted within two seconds. It is measured as the server reports it, not
by polling `/metrics`: a turn's log line is written when its response has ended, once the hang-up
was noticed and the turn's body cancelled (which sends the abort), stamped with the wall clock to
the millisecond; the test records the wall clock when it let go (same machine, same clock).
Polling would add the scrape's own delay, seconds on a loaded two-core machine, and make the
promise untestable. That the engine then really lets go is checked by the idle wait
(`wait_idle`), with its generous window.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psutil

from tests.wire.metrics import IDLE_WITHIN_S

if TYPE_CHECKING:
    from tests.conftest import ServerHandle

# The promise: a hang-up's engine request is aborted within two seconds.
ABORT_WITHIN_S = 2.0
# How long the engine's own processes may take to go once the server has exited.
ENGINE_EXIT_S = 30.0


# -- the log -------------------------------------------------------------------------------


def log_since(handle: ServerHandle, offset: int) -> str:
    """The server log from byte `offset` on (take `len(handle.log_text())` as a mark)."""
    return handle.log_text()[offset:]


def turn_lines(log: str) -> list[dict[str, Any]]:
    """The JSON turn lines (`"event": "turn"`) of a log, in order."""
    return [
        json.loads(line)
        for line in log.splitlines()
        if line.startswith("{") and '"event": "turn"' in line
    ]


def logged_at(fields: Mapping[str, Any]) -> float:
    """When a JSON log line was written, in seconds since the epoch."""
    return datetime.fromisoformat(str(fields["time"]).replace("Z", "+00:00")).timestamp()


def abort_delays(
    handle: ServerHandle, hung_up: Mapping[str, float], within_s: float = IDLE_WITHIN_S
) -> dict[str, float]:
    """Seconds from each hang-up in `hung_up` (request id -> the client's wall clock when it let
    go) to the end of that turn as the server logged it, once every turn has its line (waits up
    to `within_s` for them)."""
    assert hung_up, "no hang-up was recorded"
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + within_s
    while True:
        for fields in turn_lines(handle.log_text()):
            if fields.get("request_id") in hung_up:
                found[fields["request_id"]] = fields
        if len(found) == len(hung_up) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = sorted(set(hung_up) - set(found))
    assert not missing, f"no turn line for {len(missing)} hang-ups, e.g. {missing[:3]}"
    return {rid: logged_at(fields) - hung_up[rid] for rid, fields in found.items()}


def assert_aborted_in_time(handle: ServerHandle, hung_up: Mapping[str, float]) -> None:
    """Every recorded hang-up's turn ended, its engine request aborted, within ABORT_WITHIN_S."""
    delays = abort_delays(handle, hung_up)
    late = {rid: round(delay, 3) for rid, delay in delays.items() if delay >= ABORT_WITHIN_S}
    assert not late, f"turns aborted more than {ABORT_WITHIN_S} s after the hang-up: {late}"


# -- processes -----------------------------------------------------------------------------


def descendants(handle: ServerHandle) -> list[psutil.Process]:
    """The server's child processes, all generations (take them while it runs)."""
    children: list[psutil.Process] = psutil.Process(handle.proc.pid).children(recursive=True)
    return children


def engine_core(handle: ServerHandle) -> psutil.Process:
    """vLLM's engine core: the server's child process named `VLLM::EngineCore`."""
    cores = [p for p in descendants(handle) if "EngineCore" in _name(p)]
    assert len(cores) == 1, [(p.pid, _name(p)) for p in descendants(handle)]
    return cores[0]


def _name(proc: psutil.Process) -> str:
    try:
        return f"{proc.name()} {' '.join(proc.cmdline()[:1])}"
    except psutil.Error:
        return ""


def assert_processes_gone(family: list[psutil.Process], within_s: float = ENGINE_EXIT_S) -> None:
    """The server's child processes (taken with `descendants` while it ran) all exit within
    `within_s` once it has; any left are killed, whatever the assertion says."""
    _, alive = psutil.wait_procs(family, timeout=within_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not alive, f"processes outlived the server: {alive}"
