"""The server's life: load the engine in the background, watch it, drain on shutdown.

The HTTP server answers from the first second so that `/ready` can say 503 while the engine
loads (about 30 s on a CPU, minutes for a large checkpoint on a GPU). The watchdog turns an
engine death into what a supervisor understands: `/health` 503 and a non-zero exit. A shutdown
signal first drains: `/ready` and new turns say 503 at once, turns in flight get `drain_s` to
finish, the rest end with the fallback sentence, then the process exits 0.

The runtime's `state` is the one record of loading, ready, draining and dead: `admit` reads it
before the switchboard is asked, and `refused` is the one place a refused request is counted
and logged, whether or not the engine has loaded. The engine comes from `engine_factory`
(`python -m server` hands in vLLM's, `server.engine.vllm_adapter.start_engine`; tests pass
a scripted engine, `tests/scripted_engine.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from server import __version__
from server.base.errors import CallgateError, Draining, EngineUnavailable, retry_after
from server.base.exits import EXIT_ENGINE_DEAD, EXIT_ENGINE_HUNG, EXIT_INTERNAL, EXIT_LOAD_FAILED
from server.base.logs import one_line
from server.base.outcomes import Outcome
from server.base.settings import Settings
from server.engine.adapters import Adapters
from server.engine.api import Engine
from server.serving.admission import Admission
from server.serving.calls import PRIORITY_WARM, CallClass
from server.serving.hangup import Hangups
from server.serving.metrics import Metrics
from server.serving.switchboard import Switchboard
from server.serving.turn_log import log_refusal
from server.serving.warming import warm
from server.text.tokenizer import ChatTokenizer

log = logging.getLogger("callgate")

EngineFactory = Callable[[Settings, Adapters], Awaitable[Engine]]
WATCH_INTERVAL_S = 0.5
HANGUP_GRACE_S = 3.0  # at shutdown, for hang-ups still waiting on Alibaba's answer
# Start-up warming's bound: a few prefills, milliseconds on a GPU, a second or so on a CPU. An
# engine that takes longer is left to serve (and to its watchdog) rather than never be ready.
WARM_TIMEOUT_S = 60.0


class Runtime:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine_factory: EngineFactory,
        admission: Admission | None = None,
        peers_ready: Callable[[], bool] | None = None,
        adapters: Adapters | None = None,
        warms: bool = True,
        on_warmed: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.adapters = adapters or Adapters()
        # Whether this process warms the engine's prefix cache before it is ready (with several
        # workers only one does: they share the engine), and whom to tell when it has.
        self._warms = warms
        self._on_warmed = on_warmed
        self._admission = admission
        # With several workers: whether every worker has its engine (/ready is server-wide).
        self._peers_ready = peers_ready
        self.metrics = metrics
        self.switchboard: Switchboard | None = None
        self.state = "loading"  # loading -> ready -> draining | dead
        self.exit_code = 0
        self._engine_factory = engine_factory
        # Set by the process runner: how to make the HTTP server stop.
        self.request_exit: Callable[[], None] = lambda: None
        self._tasks: set[asyncio.Task[None]] = set()
        # Calls the model ends, hung up in the background after their replies (`close_hangups`).
        self.hangups = Hangups(settings.hangup, metrics.count_hangup)

    # -- start -------------------------------------------------------------------------------

    def begin(self) -> None:
        self._spawn(self._load())

    async def _load(self) -> None:
        s = self.settings
        try:
            tokenizer = ChatTokenizer.load(
                s.engine.model, trust_remote_code=s.engine.trust_remote_code
            )
            engine = await self._engine_factory(s, self.adapters)
            board = Switchboard(
                s, engine, tokenizer, self.metrics, self._admission, hangups=self.hangups
            )
            self.switchboard = board
        except Exception as e:
            # One line says why; the traceback is for the debug log (`server.log_level: debug`).
            log.error("engine failed to start: %s", one_line(e))
            log.debug("engine failed to start", exc_info=True)
            self._exit(EXIT_LOAD_FAILED)
            return
        if self._warms:
            await self._warm(tokenizer, engine)
        if self.state == "loading":
            self.state = "ready"
        self.metrics.engine_up.set(1)
        self.metrics.info.labels(__version__, engine.version, str(s.server.workers)).set(1)
        log.info(
            "engine ready: %s, max_model_len %d, max_num_seqs %d, admission limit %d, "
            "LoRA adapters: %s",
            s.engine.model,
            engine.max_model_len,
            engine.max_num_seqs,
            board.max_in_flight,
            self.adapters.describe(),
        )
        await self._watch(engine)

    async def _warm(self, tokenizer: ChatTokenizer, engine: Engine) -> None:
        """Each alias's fixed system prompt into the prefix cache before the server says ready
        (`server.serving.warming`). Never fatal: a failure is logged and the server serves."""
        s = self.settings
        try:
            if s.models.warm_prompts and s.engine.enable_prefix_caching:
                async with asyncio.timeout(WARM_TIMEOUT_S):
                    await warm(s, tokenizer, engine, PRIORITY_WARM)
        except Exception as e:
            log.warning("warming the system prompts failed (%s); serving without", one_line(e))
        finally:
            if self._on_warmed is not None:
                self._on_warmed()

    async def _watch(self, engine: Engine) -> None:
        readiness = self.settings.readiness
        hung_s = readiness.stall_s * readiness.hung_exit_after
        while engine.alive:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self.switchboard is None:
                continue
            self.switchboard.tick()
            if hung_s and self.switchboard.stalled(hung_s):
                if self.state in ("stopped", "dead"):
                    return
                if not engine.alive:
                    break  # it died rather than hung: exit 3, below
                log.error(
                    "the engine has produced nothing for %.0f s with requests unfinished: it "
                    "is hung; open turns end with the fallback sentence; exiting",
                    hung_s,
                )
                await self._die(EXIT_ENGINE_HUNG)
                return
        if self.state == "stopped":
            return
        log.error("the engine died; open turns end with the fallback sentence; exiting")
        await self._die(EXIT_ENGINE_DEAD)

    async def _die(self, code: int) -> None:
        self.state = "dead"
        self.metrics.engine_up.set(0)
        if code == EXIT_ENGINE_HUNG and self.switchboard is not None:
            for turn in list(self.switchboard.open_turns):
                turn.interrupt(Outcome.ERROR)
        await self._wait_turns(2.0)  # let open turns flush their fallback endings
        self._exit(code)

    def engine_lost(self) -> None:
        """The supervisor saw the shared engine core die: fail this worker's client of it."""
        if self.switchboard is not None:
            log.error("the supervisor reports that the engine core died")
            self.switchboard.engine.core_lost()

    # -- admission ----------------------------------------------------------------------------

    def admit(self) -> Switchboard:
        """The switchboard, with a slot held for this request; or the reason for a 503."""
        retry = retry_after(self.settings.limits.retry_after_s)
        if self.state == "draining":
            raise Draining("the server is shutting down", headers=retry)
        board = self.switchboard
        if board is None or self.state == "loading":  # loading, or warming its prompts
            raise EngineUnavailable("the engine is still loading", headers=retry)
        if self.state in ("dead", "stopped"):
            raise EngineUnavailable("the engine is not running", headers=retry)
        board.admit()
        return board

    def refused(
        self,
        err: CallgateError,
        request_id: str,
        model: str,
        arrival: float,
        session: str | None,
        call: CallClass | None = None,
    ) -> None:
        """Count and log a request refused before it became a turn (`call`: its kind, once
        its body was parsed)."""
        alias = self.settings.models.alias_for(model)
        self.metrics.requests.labels(alias, err.outcome).inc()
        total_s = time.perf_counter() - arrival
        log_refusal(err, request_id, session, model, alias, total_s, call)

    # -- health ------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.switchboard is not None and self.switchboard.engine.alive

    def readiness(self) -> tuple[bool, str]:
        if self.state != "ready" or self.switchboard is None:
            return False, self.state
        if self._peers_ready is not None and not self._peers_ready():
            return False, "loading"
        if not self.switchboard.engine.alive:
            return False, "dead"
        if self.switchboard.stalled():
            return False, "stalled"
        return True, "ready"

    # -- stop --------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        if self.state in ("draining", "dead", "stopped"):
            return
        self.state = "draining"
        log.info("draining: up to %.1f s for turns in flight", self.settings.shutdown.drain_s)
        self._spawn(self._drain())

    async def _drain(self) -> None:
        end = time.monotonic() + self.settings.shutdown.drain_s
        await self._wait_turns(self.settings.shutdown.drain_s)
        if self.switchboard is not None and self.switchboard.open_turns:
            log.warning("drain time over: %d turns end early", len(self.switchboard.open_turns))
            for turn in list(self.switchboard.open_turns):
                turn.interrupt(Outcome.DRAINING)
            await self._wait_turns(2.0)
        # With several workers, one without turns keeps its socket (answering 503) while the
        # others drain: a worker that left early would have its queued connections reset.
        await self._wait(self._server_busy, end + 2.0 - time.monotonic())
        self._exit(0)

    async def _wait_turns(self, seconds: float) -> None:
        await self._wait(self._has_open_turns, seconds)

    def _has_open_turns(self) -> bool:
        return self.switchboard is not None and bool(self.switchboard.open_turns)

    def _server_busy(self) -> bool:
        """Turns in flight anywhere in the server (every worker's, with several)."""
        return self.switchboard is not None and self.switchboard.admission.in_flight > 0

    @staticmethod
    async def _wait(busy: Callable[[], bool], seconds: float) -> None:
        end = time.monotonic() + seconds
        while busy() and time.monotonic() < end:
            await asyncio.sleep(0.05)

    async def close_hangups(self) -> None:
        """Lifespan shutdown, before `close`: hang-ups still in flight get a few seconds,
        then are cancelled (and counted)."""
        await self.hangups.close(HANGUP_GRACE_S)

    def close(self) -> None:
        """Stop the engine (lifespan shutdown)."""
        prior = self.state
        self.state = "stopped"
        for task in self._tasks:
            task.cancel()
        if self.switchboard is not None:
            self.metrics.engine_up.set(0)
            self.switchboard.close()
            try:
                self.switchboard.engine.stop()
            except Exception:
                log.exception("engine shutdown failed (state was %s)", prior)

    def _exit(self, code: int) -> None:
        self.exit_code = self.exit_code or code
        self.request_exit()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # The loader and the watchdog must not die quietly: a server whose engine nobody
        # watches would answer with the fallback forever. Exit so the supervisor restarts it.
        log.critical("internal error; exiting", exc_info=task.exception())
        self.state = "dead"
        self._exit(EXIT_INTERNAL)
