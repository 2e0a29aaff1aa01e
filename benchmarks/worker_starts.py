"""Many 2-worker starts in a row: how often the start-up watchdog had to start everything again.

A worker whose engine-core client never receives the core's first message leaves the server
"loading" for good; the supervisor's watchdog (`server.process.workers.CONNECT_GRACE_S`) kills the
workers and starts again, logging "did not connect to the engine core". This script starts
`python -m server` with `server.workers: 2` on the tiny checkpoint `--starts` times, waits for
`/ready`, stops it, and counts those restarts in each log. `--burn N` keeps N busy-looping
processes running meanwhile (a loaded machine, as CI's is while the suite runs). `--checkout DIR`
runs another checkout's `server` package (e.g. a `git worktree` of an older commit) with this
environment, to compare before and after a change in one run.

    python -m benchmarks.worker_starts --starts 10 --burn 1 --out benchmarks/results/worker-starts
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.lib.servers import REPO, callgate_side, free_port, stop_server, tail
from benchmarks.lib.tiny_checkpoint import build

RESTART_LINE = "did not connect to the engine core"
CONFIG = REPO / "tests" / "tiny.yaml"


def _burn() -> None:
    while True:
        pass


def one_start(model: Path, checkout: Path, log: Path, timeout_s: float) -> dict[str, object]:
    """Start, wait for /ready (or the timeout), stop; what the log says about restarts."""
    import httpx

    side = callgate_side(
        model,
        CONFIG,
        auth="bench-code-0123456789",
        env={"VLLM_CPU_KVCACHE_SPACE": "1", "CALLGATE_SERVER__WORKERS": "2"},
    )
    port = free_port()
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            side.command(port),
            cwd=checkout,
            env=side.full_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    ready_s: float | None = None
    try:
        with httpx.Client(timeout=5.0) as client:
            while proc.poll() is None and time.monotonic() - t0 < timeout_s:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                        ready_s = time.monotonic() - t0
                        break
                time.sleep(0.5)
    finally:
        stop_server(proc)
    text = log.read_text(errors="replace")
    return {
        "ready_s": None if ready_s is None else round(ready_s, 1),
        "restarts": text.count(RESTART_LINE),
        "exit_code": proc.returncode,
        "log": str(log),
        "tail": None if ready_s is not None else tail(log, 20),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--burn", type=int, default=0, help="busy-looping processes meanwhile")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the checkout to run")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per start, to /ready")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/worker-starts")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(Path(tempfile.mkdtemp(prefix="callgate-tiny-")) / "tiny")
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burn)]
    for b in burners:
        b.start()
    results = []
    try:
        for i in range(args.starts):
            r = one_start(
                model, args.checkout.resolve(), args.out / f"start-{i}.log", args.timeout_s
            )
            results.append(r)
            print(
                json.dumps({"start": i, **{k: r[k] for k in ("ready_s", "restarts")}}), flush=True
            )
    finally:
        for b in burners:
            b.kill()
    summary = {
        "checkout": str(args.checkout.resolve()),
        "starts": len(results),
        "burn": args.burn,
        "starts_with_a_restart": sum(1 for r in results if r["restarts"]),
        "never_ready": sum(1 for r in results if r["ready_s"] is None),
        "ready_s": [r["ready_s"] for r in results],
        "results": results,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
