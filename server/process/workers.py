"""Several front-end processes on one engine core (`server.workers` > 1).

One Python process can stream only so many tokens a second (ZMQ decoding, detokenizing, the
turn loop and the SSE writes all share one core), and on a large GPU that, not the GPU, is the
ceiling. So the supervisor (this process) binds the HTTP port once per worker with
`SO_REUSEPORT`, launches the engine core, and starts N workers that each run the whole
single-process server (`server.app.routes`) as a client of that core (`SharedCore` in the engine
adapter; the mechanism of `vllm serve --api-server-count`). The kernel spreads new connections
evenly over the workers' sockets.

What stays one thing to the outside:
- admission: one count shared by every worker (`server.serving.admission`), one limit; a worker that
  dies gives its turns back at once;
- `/metrics`: prometheus-client's multiprocess files, summed by whichever worker answers (on
  the admin port too, when there is one: each worker listens on both);
- SIGTERM (or Ctrl-C) to the supervisor: one SIGTERM to each worker, which drains as a single
  process does; the supervisor exits 0 once they have all gone;
- engine death: the supervisor sees it (the core is its child) and tells every worker
  (`ENGINE_LOST`), which ends its open turns with the fallback ending and exits 3; so does the
  supervisor;
- a worker that dies otherwise takes the server down: the others drain, and the supervisor
  exits 5 (6 when the worker stopped because the engine hung), so the process supervisor
  (Docker, k8s) restarts the whole server. A restarted
  worker would need a new engine-core client slot, which vLLM does not offer; a port with a
  dead worker behind it must never stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing import connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import multiprocess as prometheus_multiprocess

from server.base.exits import EXIT_ENGINE_DEAD, EXIT_ENGINE_HUNG, EXIT_LOAD_FAILED, EXIT_WORKER_DIED
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.process.serve import listeners
from server.serving.admission import Admission, SharedSlots

if TYPE_CHECKING:
    from server.engine.vllm_adapter import Engine

log = logging.getLogger("callgate")

# Once the engine core is up, every worker has connected within seconds. Seen here on a loaded
# 2-core machine (vLLM 0.32, two workers, one start in three to one in two under load): a
# worker's client never received the core's first message, and the server stayed "loading" for
# good, every process idle. The cause was ours (the supervisor let vLLM unlink the engine's IPC
# sockets before the core had connected to them; `SharedCore` now holds them), and the
# watchdog stays as the last line: it starts everything again rather than hang.
CONNECT_GRACE_S = 60.0
START_ATTEMPTS = 3
_STALLED = -1  # watch(): the workers did not connect in time
# Supervisor -> worker: the engine core died. Its clients cannot see that themselves (the core
# is the supervisor's child), and without it their open turns would wait forever.
ENGINE_LOST = signal.SIGUSR1
STOP_MARGIN_S = 10.0  # beyond drain_s, before a worker that has not gone is killed
ENGINE_DEATH_GRACE_S = 15.0  # for workers to flush their fallback endings after engine death


@dataclass
class WorkerPayload:
    """What each worker process is started with (pickled by `spawn`)."""

    settings: Settings
    codes: list[str]
    adapters: Adapters
    slots: SharedSlots  # the admission count, one per worker
    # Per worker, 1 once its engine client is up (the start-up watchdog). One flag each, each
    # written by its own worker: no lock that a worker dying at the wrong moment could hold.
    connected: SynchronizedArray[int]
    # 1 once worker 0 has warmed the shared engine's prefix cache (`server.serving.warming`): the
    # others say ready only then. Written by worker 0 alone.
    warmed: SynchronizedArray[int]


async def _connect(
    client: dict[str, Any],
    connected: SynchronizedArray[int],
    settings: Settings,
    adapters: Adapters,
) -> Engine:
    from server.engine.vllm_adapter import Engine

    engine = await Engine.connect(settings.engine, adapters, client)
    connected[int(client["client_index"])] = 1
    return engine


def worker_main(
    listen_address: str,
    sockets: list[list[socket.socket]],
    payload: WorkerPayload,
    client: dict[str, Any],
) -> None:
    """One worker: the single-process server on its own socket, a client of the shared core."""
    from server.app.routes import create_app
    from server.base.logs import setup_logging
    from server.process.serve import serve

    index = int(client["client_index"])
    for i, group in enumerate(sockets):
        if i != index:
            for sock in group:
                sock.close()  # only the worker that accepts on a socket may hold it open
    settings = payload.settings
    setup_logging(settings.server.log_format, settings.server.log_level)
    log.info("front-end worker %d (pid %d) serving %s", index, os.getpid(), listen_address)
    app = create_app(
        settings,
        payload.codes,
        engine_factory=partial(_connect, client, payload.connected),
        admission=Admission(payload.slots, index),
        peers_ready=lambda: (
            sum(payload.connected[:]) >= payload.settings.server.workers and payload.warmed[0] == 1
        ),
        adapters=payload.adapters,
        warms=index == 0,  # the engine core is shared: one warming for all
        on_warmed=partial(payload.warmed.__setitem__, 0, 1),
    )
    runtime = app.state.runtime

    def engine_lost(sig: int, frame: FrameType | None) -> None:
        asyncio.get_event_loop().call_soon_threadsafe(runtime.engine_lost)

    signal.signal(ENGINE_LOST, engine_lost)
    code = serve(app, settings, sockets[index])
    # Everything is closed (the engine client too). Leave now: the interpreter's teardown in a
    # spawned process runs vLLM's and multiprocessing's exit hooks, during which a worker was
    # seen to die by SIGTERM after a clean drain, and it would wait for stuck loader threads.
    logging.shutdown()
    os._exit(code)


class EngineCore(Protocol):
    """What the supervisor watches of the shared engine core (`SharedCore`)."""

    @property
    def engine_processes(self) -> list[BaseProcess]: ...

    def engine_alive(self) -> bool: ...


METRICS_PREFIX = "callgate-metrics-"


def sweep_metrics_dirs(root: str) -> list[str]:
    """Remove the metrics directories that supervisors now gone left in `root`.

    A supervisor removes its own on the way out, but one killed with SIGKILL (an OOM kill, a
    `docker kill`) cannot, and its files would pile up in /tmp start after start. A directory
    is stale when the pid in its name is no running process, or is this one (a previous
    container run, in a pid namespace that gave this supervisor the same pid).
    """
    swept = []
    for entry in os.scandir(root):
        pid = entry.name.removeprefix(METRICS_PREFIX).split("-", 1)[0]
        if not entry.name.startswith(METRICS_PREFIX) or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _running(int(pid)):
            continue
        try:
            shutil.rmtree(entry.path)
        except OSError as e:
            log.warning("could not remove the stale metrics directory %s: %s", entry.path, e)
            continue
        swept.append(entry.name)
    if swept:
        log.info("removed %d stale metrics directories: %s", len(swept), ", ".join(swept))
    return swept


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Supervisor:
    """Starts the core and the workers, forwards stop signals, decides the exit code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[BaseProcess] = []
        self.stopping = False
        self.code: int | None = None
        self._deadline: float | None = None
        self._reaped: set[int] = set()
        self.slots: SharedSlots | None = None  # the workers' admission counts, once started

    def reset(self) -> None:
        """Before starting again after a stalled start."""
        self.workers, self.code, self._deadline, self._reaped = [], None, None, set()
        self.slots = None

    # -- signals -----------------------------------------------------------------------------

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        first = not self.stopping
        self.stopping = True
        if first:
            log.info("received %s: draining every worker", signal.Signals(sig).name)
            self._until(self.settings.shutdown.drain_s + STOP_MARGIN_S)
        self._signal_workers(signal.SIGTERM)  # a second signal: the workers stop at once

    def started(self, workers: list[BaseProcess]) -> None:
        self.workers = workers
        if self.stopping:  # a signal came while they were being started
            self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, sig: int) -> None:
        for proc in self.workers:
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    def _until(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)

    # -- watching ----------------------------------------------------------------------------

    def watch(self, core: EngineCore, connected: SynchronizedArray[int]) -> int:
        """Until every worker has gone; the server's exit code (`_STALLED`: start again)."""
        connect_by = time.monotonic() + CONNECT_GRACE_S
        while any(p.exitcode is None for p in self.workers):
            if connect_by and sum(connected[:]) >= len(self.workers):
                connect_by = 0.0
                log.info("all %d workers are connected to the engine core", len(self.workers))
            elif connect_by and time.monotonic() > connect_by and not self.stopping:
                self._signal_workers(signal.SIGKILL)
                for proc in self.workers:
                    proc.join(timeout=10.0)
                return _STALLED
            waitables = [p.sentinel for p in self.workers if p.exitcode is None]
            waitables += [p.sentinel for p in core.engine_processes if p.exitcode is None]
            connection.wait(waitables, timeout=0.5)
            for index, proc in enumerate(self.workers):
                if proc.exitcode is not None and proc.pid not in self._reaped:
                    self._reaped.add(proc.pid or 0)
                    prometheus_multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                    self._free_slots(index, proc)
                    self._worker_exited(proc)
            if self.code is None and not core.engine_alive():
                log.error("the engine core died; workers end their open turns; exiting")
                self.code = EXIT_ENGINE_DEAD
                self._until(ENGINE_DEATH_GRACE_S)
                self._signal_workers(ENGINE_LOST)
            if self._deadline is not None and time.monotonic() > self._deadline:
                left = [p for p in self.workers if p.exitcode is None]
                if left:
                    log.warning("%d workers did not stop in time: killing them", len(left))
                    self._signal_workers(signal.SIGKILL)
                    self._deadline = None
        return self.code or 0

    def _free_slots(self, index: int, proc: BaseProcess) -> None:
        """A worker has gone: the turns it had admitted are over, so their slots are free
        for the others at once (they would otherwise count against the limit until exit)."""
        if self.slots is None:
            return
        freed = self.slots.release(index)
        if freed:
            log.warning("front-end worker %s had %d turns in flight: freed", proc.name, freed)

    def _worker_exited(self, proc: BaseProcess) -> None:
        code = proc.exitcode
        if self.stopping and code in (0, -signal.SIGTERM):  # it was told to stop
            return
        if code == EXIT_ENGINE_DEAD:
            self.code = self.code or EXIT_ENGINE_DEAD
            self._until(ENGINE_DEATH_GRACE_S)
            return
        if code == EXIT_LOAD_FAILED:
            self.code = self.code or EXIT_LOAD_FAILED
        elif code == EXIT_ENGINE_HUNG:  # the core is shared: hung for every worker
            log.error(
                "front-end worker %s (pid %s) found the engine hung: stopping the server (exit %d)",
                proc.name,
                proc.pid,
                EXIT_ENGINE_HUNG,
            )
            self.code = self.code or EXIT_ENGINE_HUNG
        else:
            how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
            log.error(
                "front-end worker %s (pid %s) exited with %s: stopping the server (exit %d) "
                "so that its supervisor restarts it",
                proc.name,
                proc.pid,
                how,
                EXIT_WORKER_DIED,
            )
            self.code = self.code or EXIT_WORKER_DIED
        if not self.stopping:
            self.stopping = True
            self._until(self.settings.shutdown.drain_s + STOP_MARGIN_S)
            self._signal_workers(signal.SIGTERM)


def supervise(settings: Settings, codes: list[str], adapters: Adapters) -> int:
    """Run the server as a supervisor, one engine core and `server.workers` workers."""
    host, port = settings.server.host, settings.server.port
    # Every worker writes its metrics here; whichever answers /metrics sums them all. The name
    # carries the supervisor's pid, so a later start can sweep what a killed one left.
    sweep_metrics_dirs(tempfile.gettempdir())
    metrics_dir = tempfile.TemporaryDirectory(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    sup = Supervisor(settings)
    signal.signal(signal.SIGTERM, sup.on_signal)
    signal.signal(signal.SIGINT, sup.on_signal)
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            code = _run_once(settings, codes, adapters, sup, host, port)
            if code != _STALLED:
                break
            log.warning(
                "the workers did not connect to the engine core within %.0f s of its start: "
                "starting the engine core and the workers again (attempt %d of %d)",
                CONNECT_GRACE_S,
                attempt + 1,
                START_ATTEMPTS,
            )
            for name in os.listdir(metrics_dir.name):  # a fresh start counts from zero
                if name.endswith(".db"):
                    os.unlink(os.path.join(metrics_dir.name, name))
            sup.reset()
        else:
            log.error("the workers never connected to the engine core; exiting")
            code = EXIT_LOAD_FAILED
    finally:
        metrics_dir.cleanup()
    log.info("exiting with code %d", code)
    return code


def _run_once(
    settings: Settings, codes: list[str], adapters: Adapters, sup: Supervisor, host: str, port: int
) -> int:
    n = settings.server.workers
    socks = listeners(settings.server, n)
    port = socks[0][0].getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    connected: SynchronizedArray[int] = ctx.Array("i", n, lock=False)  # type: ignore[assignment]
    warmed: SynchronizedArray[int] = ctx.Array("i", 1, lock=False)  # type: ignore[assignment]
    slots = SharedSlots.create(ctx, n, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    sup.slots = slots
    payload = WorkerPayload(settings, codes, adapters, slots, connected, warmed)
    log.info("starting the engine core and %d front-end workers on %s:%d", n, host, port)
    try:
        from server.engine.shared_core import SharedCore

        core = SharedCore.launch(
            settings.engine,
            adapters,
            n,
            worker_main,
            f"http://{host}:{port}",
            socks,
            payload,
            on_started=sup.started,
        )
    except Exception as e:
        log.error("the engine failed to start: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
        sup._signal_workers(signal.SIGKILL)
        return 0 if sup.stopping else EXIT_LOAD_FAILED
    finally:
        for sock in (s for group in socks for s in group):
            sock.close()  # each worker holds its own; none may outlive its worker here
    try:
        return sup.watch(core, connected)
    finally:
        core.shutdown(timeout=5.0)
