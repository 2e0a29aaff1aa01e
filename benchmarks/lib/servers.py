"""The one server harness: start a server process on a free port, wait until it is ready, stop it
for sure. The benchmarks and the test suite both use it.

A server to start is a `Side`, a value: its command (with `PORT` where the port goes), its
environment and the path that answers 200 once it serves. `callgate_side` and `vllm_side` build
the two kinds; a comparison is a list of sides, so callgate against vLLM's server and callgate
against callgate with another setting are the same run.

Each server runs in its own process group, so the engine core it spawns is killed with it even
when the server has to be killed, but in the caller's session: Linux's autogroup scheduler shares
CPU per session, and with client and server in separate sessions on this 2-core box the server's
chunks reached the client in bursts (TTFT ~150 ms instead of ~15 ms at concurrency 1, for vLLM's
server and callgate alike). A real gateway is remote; sharing the session is the closer stand-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 40.0
READY_TIMEOUT_S = 600.0
PORT = "{port}"  # placeholder in a side's command, replaced by the port it is started on
CHAT_PATH = "/v1/chat/completions"


class ServerFailed(RuntimeError):
    """A server exited before it was ready, or was not ready in time; the message has its log."""


@dataclass(frozen=True)
class EngineShape:
    """The engine settings passed identically to every side of a comparison."""

    max_model_len: int = 2048
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enforce_eager: bool = True
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE; ignored by the CUDA build
    load_format: str | None = None  # "dummy": random weights of the checkpoint's real shapes
    gpu_memory_utilization: float | None = None  # None: each server's default


@dataclass(frozen=True)
class Side:
    """One server to start: a value, so that any two can be compared."""

    name: str
    cmd: tuple[str, ...]  # `PORT` stands for the port
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/ready"
    label: str = ""

    def command(self, port: int) -> list[str]:
        """The command line with the port filled in."""
        return [str(port) if arg == PORT else arg for arg in self.cmd]

    def full_env(self) -> dict[str, str]:
        """The environment the process gets: this process's, minus any CALLGATE_* setting, with
        the model hub off, plus the side's own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        return env


@dataclass
class Running:
    """A started server: where it listens, its log, and its CPU time."""

    name: str
    base_url: str
    chat_url: str
    cmd: list[str]
    log_path: Path
    startup_s: float
    pid: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def cpu_seconds(self) -> tuple[float, float] | None:
        """CPU time used so far by the server's front end (the server process and its API
        processes: HTTP, tokenizer, detokenizer) and by vLLM's engine (the processes vLLM titles
        `VLLM::EngineCore`, `VLLM::Worker...`, `VLLM::DPCoordinator`). Unlike wall time, CPU
        time barely moves with the machine's background load, so it compares servers on a
        noisy box; with several front-end processes it is their sum."""
        try:
            proc = psutil.Process(self.pid)
            frontend = sum(proc.cpu_times()[:2])
            engine = 0.0
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    used = sum(child.cpu_times()[:2])
                    if _is_engine(" ".join(child.cmdline()) or child.name()):
                        engine += used
                    else:
                        frontend += used
            return frontend, engine
        except psutil.Error:  # the process is gone: no CPU figures
            return None


def _is_engine(title: str) -> bool:
    return title.startswith("VLLM::") and not title.startswith("VLLM::APIServer")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def callgate_side(
    model: str | Path | None,
    config: str | Path,
    *,
    auth: str,
    shape: EngineShape | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "callgate",
    label: str = "",
    extra_args: tuple[str, ...] = (),
) -> Side:
    """`python -m server` on `config` (and `model`, else the config's own), with `shape`'s
    engine settings as `CALLGATE_ENGINE__*` variables and `env` on top."""
    cmd = (sys.executable, "-m", "server", "--config", str(config))
    cmd += ("--model", str(model)) if model is not None else ()
    cmd += ("--host", "127.0.0.1", "--port", PORT, *extra_args)
    full = {"CALLGATE_AUTH_CODES": auth}
    if shape is not None:
        full |= _callgate_engine_env(shape)
    return Side(name, cmd, full | dict(env or {}), "/ready", label)


def _callgate_engine_env(shape: EngineShape) -> dict[str, str]:
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(shape.kv_cache_gib),
        "CALLGATE_ENGINE__MAX_MODEL_LEN": str(shape.max_model_len),
        "CALLGATE_ENGINE__MAX_NUM_SEQS": str(shape.max_num_seqs),
        "CALLGATE_ENGINE__MAX_NUM_BATCHED_TOKENS": str(shape.max_num_batched_tokens),
        "CALLGATE_ENGINE__ENFORCE_EAGER": "true" if shape.enforce_eager else "false",
    }
    if shape.load_format:
        env["CALLGATE_ENGINE__EXTRA"] = json.dumps({"load_format": shape.load_format})
    if shape.gpu_memory_utilization is not None:
        env["CALLGATE_ENGINE__GPU_MEMORY_UTILIZATION"] = str(shape.gpu_memory_utilization)
    return env


def vllm_side(
    model: str,
    served_name: str,
    shape: EngineShape,
    *,
    api_servers: int | None = None,
    name: str = "vllm",
    label: str = "",
) -> Side:
    """vLLM's OpenAI server on the same engine settings. Without `api_servers`, its API server
    module (one process); with it, `vllm serve --api-server-count N` (benchmarks/vllm_serve.py,
    the only way to get several API processes on one engine core)."""
    if api_servers is None:
        head: tuple[str, ...] = ("-m", "vllm.entrypoints.openai.api_server", "--model", model)
    else:
        head = ("-m", "benchmarks.vllm_serve", model, "--api-server-count", str(api_servers))
    flags = (
        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", PORT,
        "--max-model-len", str(shape.max_model_len),
        "--max-num-seqs", str(shape.max_num_seqs),
        "--max-num-batched-tokens", str(shape.max_num_batched_tokens),
        "--enable-prompt-tokens-details",  # cached-token counts, as callgate reports them
    )  # fmt: skip
    flags += ("--enforce-eager",) if shape.enforce_eager else ()
    if shape.load_format:
        flags += ("--load-format", shape.load_format)
    if shape.gpu_memory_utilization is not None:
        flags += ("--gpu-memory-utilization", str(shape.gpu_memory_utilization))
    env = {"VLLM_CPU_KVCACHE_SPACE": str(shape.kv_cache_gib)}
    return Side(name, (sys.executable, *head, *flags), env, "/health", label)


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a server log."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "<no log>"


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (both servers drain or shut down on it), wait, then SIGKILL the whole process
    group, so the engine core a server spawned goes too even if the server had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(running: Running, ready_path: str, timeout_s: float) -> None:
    """Poll GET `ready_path` until it answers 200; `ServerFailed` with the log tail if the
    process exits first or the time runs out."""
    assert running.proc is not None
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = running.proc.poll()
            if code is not None:
                raise ServerFailed(
                    f"{running.name} exited with code {code} before it was ready; "
                    f"log {running.log_path}:\n{tail(running.log_path, 80)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(running.base_url + ready_path).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{running.name} not ready after {timeout_s:.0f} s; "
                    f"log {running.log_path}:\n{tail(running.log_path, 80)}"
                )
            time.sleep(0.5)


@contextlib.contextmanager
def launch(
    side: Side,
    log_dir: Path,
    *,
    ready: bool = True,
    timeout_s: float = READY_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Iterator[Running]:
    """Start `side` on a free port, wait until it is ready (unless `ready=False`), yield, then
    stop it for sure. Its stdout and stderr go to `log_dir/NAME-PORT.log`."""
    port = free_port()
    cmd = side.command(port)
    env = side.full_env()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{side.name}-{port}.log"
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,  # a group for killpg, not a session (see the module docstring)
        )
    running = Running(side.name, base, base + CHAT_PATH, cmd, log_path, 0.0, proc.pid, proc, env)
    try:
        if ready:
            wait_ready(running, side.ready_path, timeout_s)
        running.startup_s = time.monotonic() - t0
        yield running
    finally:
        stop_server(proc, stop_timeout_s)


def run_to_exit(side: Side, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run `side` on a free port until it exits by itself (a refusal to start) and return its
    exit code and output."""
    return subprocess.run(
        side.command(free_port()),
        cwd=REPO,
        env=side.full_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
