"""The switchboard: admits calls, plans each turn, and accounts for it.

Routes hand it the body of an admitted call; it says no (a `CallgateError`) or returns a `Turn`
ready to be streamed. Every refusal the engine can make is asked for here, before the response
starts: `admit` (alive, the in-flight limit, vLLM's queue limits), then `parse` and `plan`
(prompt, context, vLLM's validation of the sampling values). Admission comes before the parse, so
that an overloaded server answers 503 without paying for the body; a large body or dialog is
parsed or planned in a thread (`_off_loop`), so that one caller does not stall the other
streams. Everything a turn changes on the way out (metrics, the log line, the in-flight count,
the stall clock behind `/ready`) is written in `_finished`, once per turn. Refusals are counted
by the runtime (`Runtime.refused`), which also owns draining.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from server.base.errors import EngineUnavailable, Overloaded, retry_after
from server.base.outcomes import Outcome
from server.base.settings import Settings
from server.engine.api import Engine
from server.serving.admission import Admission
from server.serving.call_bus import CallBus
from server.serving.calls import UNCLASSIFIED, CallClass, OpenTurn, priority, user_turns
from server.serving.hangup import Hangups
from server.serving.metrics import Metrics
from server.serving.placement import Placer, affinity_key, default_slack
from server.serving.progress import Progress
from server.serving.turn import Turn, TurnPlan
from server.serving.turn_log import log_turn
from server.text.prompt import PromptBuilder, alias_prompts, assemble
from server.text.sampling import sampling_kwargs
from server.text.tokenizer import ChatTokenizer
from server.wire.chunks import ChunkRenderer
from server.wire.schemas import ChatRequest, parse_request

_T = TypeVar("_T")

log = logging.getLogger("callgate.calls")

THINK_TOKENS = ("<think>", "</think>")
# Dialogs up to this many characters and messages are planned on the event loop (64 messages
# render in under a millisecond with Qwen2.5's template; tokenizing is cached); larger ones in
# a thread (`Switchboard.plan`).
PLAN_INLINE_CHARS = 16_384
PLAN_INLINE_MESSAGES = 64
# Bodies up to this size are parsed on the event loop: a millisecond at most, even for one
# dense with small objects (about 0.12 ms a KiB); larger ones in a thread (`Switchboard.parse`).
PARSE_INLINE_BYTES = 8_192
# The default level at which first turns are refused, as a share of the total limit: the rest is
# headroom for calls in progress (benchmarks/README.md, "Calls first", has the figures behind it).
NEW_CALL_SHARE = 0.5


class Switchboard:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        tokenizer: ChatTokenizer,
        metrics: Metrics,
        admission: Admission | None = None,
        hangups: Hangups | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self._aliases = settings.models.aliases
        self._prompts = alias_prompts(self._aliases)
        # Calls the model ends are hung up through these (the runtime's, which it closes).
        self.hangups = hangups or Hangups(settings.hangup, metrics.count_hangup)
        self._adapters = {a: adapter.name for a, adapter in engine.adapters.by_alias.items()}
        # Each alias thinks or not (`Settings.thinking`). Off: the template renders the empty
        # think block, and the markers are banned at the sampler as a second guard. On: the
        # reasoning is filtered out of the reply (`server/text/thinking.py`), for checkpoints
        # that have the `</think>` token at all.
        think_ids = tokenizer.token_ids(*THINK_TOKENS)
        can_think = bool(tokenizer.token_ids(THINK_TOKENS[1]))
        self._builders: dict[str, PromptBuilder] = {}
        self._banned: dict[str, tuple[int, ...]] = {}
        self._thinking: dict[str, bool] = {}
        for alias in self._aliases:
            thinking = settings.thinking(alias)
            self._builders[alias] = PromptBuilder(
                tokenizer,
                engine.max_model_len,
                reserve=settings.sampling.max_tokens,
                thinking=thinking,
            )
            self._banned[alias] = () if thinking else think_ids
            self._thinking[alias] = thinking and can_think
        ranks = engine.data_parallel_size  # engine cores; max_num_seqs is each one's
        self.max_in_flight = settings.limits.max_in_flight or engine.max_num_seqs * ranks
        self.new_call_max_in_flight = min(
            self.max_in_flight,
            settings.limits.new_call_max_in_flight
            or max(1, round(self.max_in_flight * NEW_CALL_SHARE)),
        )
        # The admission count is the whole server's (shared by every worker process).
        self.admission = admission or Admission()
        self.admission.limit = self.max_in_flight
        self.admission.new_call_limit = self.new_call_max_in_flight
        # One open turn per call: this process's turns by number, and word from the other
        # workers when one of them admits a newer turn of a call whose turn runs here.
        self.calls = self.admission.calls
        self._numbers = itertools.count(1)
        self._turns: dict[int, Turn] = {}
        self._bus = (
            CallBus(os.path.dirname(admission.lock_path), admission.index, self._superseded)
            if admission is not None and admission.lock_path
            else None
        )
        metrics.new_call_room = self.admission.new_call_room
        # Several engine cores: which one serves each turn (`server/serving/placement.py`).
        self.placer: Placer | None = None
        if ranks > 1:
            es = settings.engine
            slack = es.affinity_slack
            slack = default_slack(engine.max_num_seqs) if slack is None else slack
            self.placer = Placer(
                ranks,
                es.call_affinity,
                slack,
                engine.max_num_seqs,
                self.admission.loads,
                self.calls,
                start=self.admission.index,
            )
            metrics.declare_engines(ranks, es.call_affinity)
        self._retry = retry_after(settings.limits.retry_after_s)  # the headers of its 503s
        self.open_turns: set[Turn] = set()  # this process's turns
        # The stall clock: busy time since the engine last produced a token (/ready, hung exit).
        self.progress = Progress()
        # With turns placed on engine cores, a stall clock per core as well: one hung core of N
        # is a hung server (/ready, the hung exit), though the other cores still make tokens.
        placed = self.placer is not None and self.placer.affinity
        self._core_clocks = [Progress() for _ in range(ranks)] if placed else []
        # One large parse or plan at a time per process: the thread shares the interpreter
        # lock with the event loop, and many such threads would starve it all the same.
        self._lane = asyncio.Semaphore(1)

    # -- decisions ---------------------------------------------------------------------------

    def admit(self) -> None:
        """Refuse at once, before any engine work, when the turn cannot be served well.

        On success a slot is held: `start` turns it into a turn, `unadmit` gives it back."""
        if not self.engine.alive:
            raise EngineUnavailable("the engine is not running", headers=self._retry)
        if not self.admission.try_enter():
            # Before the parse: which kind of turn this is is not known (`unclassified`).
            self.metrics.admissions.labels(UNCLASSIFIED, "refused").inc()
            raise Overloaded(f"more than {self.max_in_flight} turns in flight", headers=self._retry)
        try:
            self.engine.check_admission()
        except Overloaded as e:  # vLLM's own queue limits: the same 503 as ours
            self.admission.leave()
            self.metrics.admissions.labels(UNCLASSIFIED, "refused").inc()
            raise Overloaded(e.message, headers=self._retry) from None
        except BaseException:
            self.admission.leave()
            raise

    def admit_call(self, call: CallClass) -> None:
        """Once the dialog says which kind of turn this is (`calls.classify`): a first turn is
        refused (503 at once) above the new-call level, so that calls in progress keep their
        headroom; a continuing turn stays. The slot stays held either way: the caller gives it
        back (`unadmit`) on a refusal."""
        if not self.admission.admits(call):
            self.metrics.admissions.labels(call, "refused").inc()
            raise Overloaded(
                f"more than {self.new_call_max_in_flight} turns in flight: new calls wait",
                headers=self._retry,
            )
        self.metrics.admissions.labels(call, "admitted").inc()

    def unadmit(self) -> None:
        """Give back the slot of an admitted request that did not become a turn."""
        self.admission.leave()

    async def parse(self, body: bytes) -> ChatRequest:
        """`parse_request`, off the event loop for a large body: validating a 1 MiB body of
        small objects takes a tenth of a second or more (`server/wire/schemas.py` bounds what it
        may hold), which would stall every other stream of this process."""
        if len(body) <= PARSE_INLINE_BYTES:
            return parse_request(body)
        return await self._off_loop(parse_request, body)

    async def plan(
        self, request: ChatRequest, request_id: str, arrival: float, call: CallClass
    ) -> TurnPlan:
        """`plan_now`, off the event loop for a large dialog: rendering and tokenizing
        thousands of messages (several times, when history must be dropped) would otherwise
        stall every other stream of this process. Large is many characters or many messages:
        4096 messages of two characters are 8 kB of text, and 0.05-0.15 s of planning."""
        messages = request.messages
        if (
            len(messages) <= PLAN_INLINE_MESSAGES
            and sum(len(m.text) for m in messages) <= PLAN_INLINE_CHARS
        ):
            return self.plan_now(request, request_id, arrival, call)
        return await self._off_loop(self.plan_now, request, request_id, arrival, call)

    async def _off_loop(self, work: Callable[..., _T], *args: Any) -> _T:
        """`work(*args)` in a thread, one at a time per process. A thread cannot be stopped: if
        the caller is cancelled, the lane stays taken until the work has ended, so cancelled
        callers cannot pile up threads behind the event loop's back."""
        async with self._lane:
            done = asyncio.ensure_future(asyncio.to_thread(work, *args))
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                await asyncio.wait([done])
                raise

    def plan_now(
        self, request: ChatRequest, request_id: str, arrival: float, call: CallClass
    ) -> TurnPlan:
        alias = self.settings.models.alias_for(request.model)
        spoken = self._aliases[alias]
        system = self._prompts.render(alias, request.biz_params)
        dialog = assemble(system, [(m.role, m.text) for m in request.messages])
        prompt = self._builders[alias].build(dialog)
        sampling = self.engine.params(
            sampling_kwargs(
                request,
                self.engine.generation_defaults,
                max_tokens_cap=self.settings.sampling.max_tokens,
                room=self.engine.max_model_len - len(prompt.token_ids),
                banned_token_ids=self._banned[alias],
            )
        )
        return TurnPlan(
            request_id=request_id,
            engine_id=f"{request_id}.{secrets.token_hex(4)}",
            alias=alias,
            request=request,
            token_ids=prompt.token_ids,
            sampling=sampling,
            renderer=ChunkRenderer(
                request.model or alias, f"chatcmpl-{request_id}", int(time.time())
            ),
            fallback_text=spoken.fallback_text,
            first_token_s=self.settings.deadlines.first_token_s,
            turn_s=self.settings.deadlines.turn_s,
            arrival=arrival,
            dropped_turns=prompt.dropped_turns,
            thinking=self._thinking[alias],
            speech_filter=spoken.speech_filter,
            url_phrase=spoken.url_phrase,
            adapter=self._adapters.get(alias),
            end_call=spoken.end_call,
            closing_text=spoken.closing_text,
            filler=_filler(spoken.filler_texts, spoken.filler_after_s, request.stream),
            filler_after_s=spoken.filler_after_s or 0.0,
            call=call,
            priority=priority(call),
        )

    def start(self, plan: TurnPlan) -> Turn:
        """The planned turn, started: the one open turn of its call, superseding the call's
        previous turn if that one is still generating (here or on another worker)."""
        if self.placer is not None:
            request = plan.request
            key = affinity_key(plan.alias, request.session_id, request.messages)
            plan.placement = self.placer.place(key)
            if plan.placement.rank is not None:
                self.metrics.engine_in_flight.labels(plan.placement.engine).inc()
        turn = Turn(plan, self.engine, self.metrics, self._finished, self._clock(plan))
        turn.number = next(self._numbers)
        if plan.end_call:
            turn.on_end_call = self._end_call
        self.open_turns.add(turn)
        self._turns[turn.number] = turn
        self.metrics.in_flight.labels(plan.alias).inc()
        session = plan.request.session_id
        if session:
            previous = self.calls.open_turn(session, self.admission.index, turn.number)
            if previous is not None:
                self._supersede(previous)
        return turn

    def _supersede(self, previous: OpenTurn) -> None:
        if previous.worker == self.admission.index:
            self._superseded(previous.number)
        elif self._bus is not None:
            self._bus.send(previous.worker, previous.number)

    def _superseded(self, number: int) -> None:
        """This process's turn `number` has a newer turn of its call: it ends now."""
        turn = self._turns.get(number)
        if turn is not None:
            turn.interrupt(Outcome.SUPERSEDED)

    def _end_call(self, turn: Turn) -> None:
        """The turn's reply ended the call and has been delivered: hang the call up, once
        across workers (the per-call record's claim)."""
        plan = turn.plan
        self.hangups.request(
            plan.alias, plan.request.session_id, plan.request_id, self.calls.claim_hangup
        )

    # -- accounting --------------------------------------------------------------------------

    def _finished(self, turn: Turn) -> None:
        plan, rec, m = turn.plan, turn.record, self.metrics
        self.open_turns.discard(turn)
        self._turns.pop(turn.number, None)
        self.admission.leave()
        if plan.placement is not None and self.placer is not None:
            self.placer.leave(plan.placement)
            engine, how = plan.placement.engine, plan.placement.affinity
            if plan.placement.rank is not None:
                m.engine_in_flight.labels(engine).dec()
            m.engine_turns.labels(engine, how).inc()
        if plan.request.session_id:
            self.calls.close_turn(plan.request.session_id, self.admission.index, turn.number)
        alias = plan.alias
        e2e = time.perf_counter() - plan.arrival
        m.in_flight.labels(alias).dec()
        m.requests.labels(alias, rec.outcome).inc()
        m.e2e.labels(alias).observe(e2e)
        m.prompt_tokens.labels(alias).inc(len(plan.token_ids))
        m.output_tokens.labels(alias).inc(rec.output_tokens)
        m.cached_tokens.labels(alias).inc(rec.cached_tokens)
        if rec.output_tokens:  # the engine ran it, so its cached count is known
            turn_index = user_turns(plan.request.messages)
            m.observe_cached_share(alias, turn_index, len(plan.token_ids), rec.cached_tokens)
        if rec.gaps:
            itl = m.itl.labels(alias)
            for gap in rec.gaps:
                itl.observe(gap)
        log_turn(turn, e2e, self.settings.server.log_content)

    def close(self) -> None:
        """At shutdown: no more word from the other workers."""
        if self._bus is not None:
            self._bus.close()

    # -- health ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance the stall clock (the runtime's watchdog, every half second)."""
        busy = bool(self.open_turns) and self.engine.num_unfinished() > 0
        if not self._core_clocks:
            self.progress.tick(busy)
            return
        running = {_rank(turn.plan) for turn in self.open_turns}
        self.progress.tick(busy and None in running)
        for rank, clock in enumerate(self._core_clocks):
            clock.tick(busy and rank in running)

    def _clock(self, plan: TurnPlan) -> Progress:
        """The stall clock a turn moves: its engine core's, or the server's."""
        rank = _rank(plan)
        return self.progress if rank is None or not self._core_clocks else self._core_clocks[rank]

    def stalled(self, seconds: float | None = None) -> bool:
        """The engine has had requests and produced nothing for `seconds` of that busy time
        (default `readiness.stall_s`)."""
        limit = self.settings.readiness.stall_s if seconds is None else seconds
        starved = max((c.starved_s for c in self._core_clocks), default=0.0)
        return max(self.progress.starved_s, starved) > limit


def _rank(plan: TurnPlan) -> int | None:
    return None if plan.placement is None else plan.placement.rank


def _filler(texts: list[str], after_s: float | None, stream: bool) -> str | None:
    """One of the alias's filler phrases, varied from turn to turn; None when it has no filler,
    and for `stream: false`, whose caller hears nothing before the whole answer anyway."""
    return random.choice(texts) if texts and after_s is not None and stream else None
