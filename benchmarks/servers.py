"""Start and stop the two servers the side-by-side run compares, as subprocesses.

Both run from this interpreter (same vLLM build, same torch) on the same checkpoint, with the
engine settings that matter for speed given explicitly to both, so the only difference left is
the HTTP layer and the request handling in front of the engine.

Each server runs in its own process group, so the engine core it spawns is killed with it even
when the server has to be killed, but in the load generator's session: Linux's autogroup
scheduler shares CPU per session, and with client and server in separate sessions on this 2-core
box the server's chunks reached the client in bursts (TTFT ~150 ms instead of ~15 ms at
concurrency 1, for vLLM's server and callgate alike). A real gateway is remote; sharing the
session is the closer stand-in.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 40.0


@dataclass(frozen=True)
class EngineShape:
    """The engine settings passed identically to both servers."""

    max_model_len: int = 2048
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enforce_eager: bool = True
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE; ignored by the CUDA build
    load_format: str | None = None  # "dummy": random weights of the checkpoint's real shapes
    gpu_memory_utilization: float | None = None  # None: each server's default


@dataclass
class Running:
    name: str
    base_url: str
    chat_url: str
    cmd: list[str]
    log_path: Path
    startup_s: float
    pid: int

    def cpu_seconds(self) -> tuple[float, float] | None:
        """CPU time used so far by the server's front end (the server process and its API
        processes: HTTP, tokenizer, detokenizer) and by vLLM's engine (the processes vLLM titles
        `VLLM::EngineCore`, `VLLM::Worker...`, `VLLM::DPCoordinator`). Unlike wall time, CPU
        time barely moves with the machine's background load, so it compares servers on a
        noisy box; with several front-end processes it is their sum."""
        try:
            import psutil

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
        except Exception:  # psutil missing or the process is gone: no CPU figures
            return None


def _is_engine(title: str) -> bool:
    return title.startswith("VLLM::") and not title.startswith("VLLM::APIServer")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


def vllm_command(model: str, served_name: str, port: int, shape: EngineShape) -> list[str]:
    """vLLM's OpenAI server, one API process."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        *_vllm_server_flags(served_name, port, shape),
    ]


def vllm_serve_command(
    model: str, served_name: str, port: int, shape: EngineShape, api_servers: int
) -> list[str]:
    """vLLM's server through its CLI (`vllm serve`), the only way to get `--api-server-count`:
    `api_servers` HTTP processes on one engine core (benchmarks/vllm_serve.py)."""
    return [
        sys.executable,
        "-m",
        "benchmarks.vllm_serve",
        model,
        "--api-server-count",
        str(api_servers),
        *_vllm_server_flags(served_name, port, shape),
    ]


def _vllm_server_flags(served_name: str, port: int, shape: EngineShape) -> list[str]:
    flags = [
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(shape.max_model_len),
        "--max-num-seqs",
        str(shape.max_num_seqs),
        "--max-num-batched-tokens",
        str(shape.max_num_batched_tokens),
        "--enable-prompt-tokens-details",  # cached-token counts, as callgate reports them
    ]
    return flags + _vllm_shape_flags(shape)


def _vllm_shape_flags(shape: EngineShape) -> list[str]:
    flags = ["--enforce-eager"] if shape.enforce_eager else []
    if shape.load_format:
        flags += ["--load-format", shape.load_format]
    if shape.gpu_memory_utilization is not None:
        flags += ["--gpu-memory-utilization", str(shape.gpu_memory_utilization)]
    return flags


def ours_command(model: str, config: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "server",
        "--config",
        str(config),
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def ours_env(auth: str, shape: EngineShape) -> dict[str, str]:
    env = {
        "CALLGATE_AUTH_CODES": auth,
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


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "<no log>"


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (both servers drain or shut down on it), wait, then SIGKILL the whole process
    group, so the engine core a server spawned goes too even if the server had to be killed.
    Also used by the test suite's server fixtures."""
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


@contextlib.contextmanager
def run_server(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    ready_path: str,
    chat_path: str,
    log_dir: Path,
    timeout_s: float = 600.0,
) -> Iterator[Running]:
    """Start `cmd`, wait until GET `ready_path` answers 200, yield, then stop it for sure."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**_base_env(), **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,  # a group for killpg, not a session (see the module docstring)
        )
    try:
        with httpx.Client(timeout=5.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}; log {log_path}:\n{_tail(log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(base + ready_path).status_code == 200:
                        break
                if time.monotonic() - t0 > timeout_s:
                    raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s; see {log_path}")
                time.sleep(0.5)
        yield Running(name, base, base + chat_path, cmd, log_path, time.monotonic() - t0, proc.pid)
    finally:
        stop_server(proc)
