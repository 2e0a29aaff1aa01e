"""One caller turn, from admission to the last byte: engine deltas in, reply bytes out.

The promise is that a turn always ends audibly and well-formed. Whatever happens after the
response has started (no first token by the deadline, an engine error, a shutdown that cannot
wait any longer), the caller hears the alias's fallback sentence, then a final chunk with a
`finish_reason`, then `[DONE]`. Only a caller who has gone gets nothing, because nobody is
listening; then the engine request is aborted in a `finally`, wherever the turn was.

With Qwen3 thinking on (`TurnPlan.thinking`), the engine's deltas pass through a
`ThinkingFilter` first: the reasoning is never spoken, its tokens still count as output tokens
(the engine produced them) and still move the stall clock, and the first-token deadline is about
the first *spoken* text, so it must allow for the reasoning. A reply that ends before `</think>`
(out of tokens while reasoning) says the fallback sentence, with the engine's finish reason.

With the alias's `speech_filter` on (`TurnPlan.speech_filter`), the text then passes through a
`SpeechFilter` (`server/text/speech.py`), which removes what a voice cannot say; what it holds back
(a possibly split marker) is released with the engine's last delta. Filters change text only:
counts, the stall clock and finish reasons are the engine's.

With the alias's `end_call` on (`TurnPlan.end_call`), an `EndCallFilter` between the two takes
the model's end-of-call marker out of the text (`server/text/end_call.py`); a reply that is only
the marker says the alias's closing sentence. Once such a reply has ended well and its last byte
is out (`delivered`), the switchboard asks for the call's hang-up (`server/serving/hangup.py`).

The turn owns its outcome and its ending, for streams and `stream: false` alike. Its deadline
(`turn_s` after arrival) and a shutdown that cannot wait take the same path, `interrupt`: the
engine request is aborted, the engine's stream ends, and the reply ends with what was said so
far, the fallback sentence and the true token counts. The response classes
(`server/app/responses.py`) only move bytes; when even the interrupt cannot end a turn in time
(an engine that does not stop, a caller who stopped reading), they cut it with `cut_off`,
which records why.

`finish()` is the single place where a turn is accounted: metrics, the log line, the in-flight
gauge. It is idempotent and is also called by the response wrapper, so a turn whose body never
started (the client left before the headers) is still counted exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from server.base.outcomes import Outcome
from server.serving.calls import PRIORITY_FIRST, CallClass
from server.serving.placement import Placement
from server.serving.progress import Progress
from server.text.clauses import FirstClause, first_clause_end
from server.text.end_call import EndCallFilter
from server.text.speech import SpeechFilter
from server.text.thinking import ThinkingFilter
from server.wire.chunks import DONE, ChunkRenderer

if TYPE_CHECKING:
    from server.engine.api import Delta, Engine, EngineParams
    from server.serving.metrics import Metrics
    from server.wire.schemas import ChatRequest

log = logging.getLogger("callgate.turn")


class TextFilter(Protocol):
    """A streaming text transform: `feed` each delta's text, `finish` at the reply's end."""

    def feed(self, text: str) -> str: ...
    def finish(self) -> str: ...


@dataclass
class TurnPlan:
    """Everything decided before the engine is asked: pure values, no I/O."""

    request_id: str  # public: log line, X-Request-Id, chunk ids
    engine_id: str  # unique inside the engine even when a client reuses a request id
    alias: str
    request: ChatRequest
    token_ids: list[int]
    sampling: EngineParams  # built and validated by the engine while planning
    renderer: ChunkRenderer
    fallback_text: str
    first_token_s: float
    turn_s: float  # the whole turn, from arrival: then `interrupt("deadline")`
    arrival: float  # time.perf_counter() when the request arrived
    dropped_turns: int = 0
    thinking: bool = False  # Qwen3 reasoning comes first in the reply and is not spoken
    speech_filter: bool = False  # remove what a voice cannot say (server/text/speech.py)
    url_phrase: str = "the link"  # said in place of a URL when speech_filter is on
    adapter: str | None = None  # the alias's LoRA adapter (`Adapter.name`); None: base model
    end_call: bool = False  # the model may end the call with a marker (server/text/end_call.py)
    closing_text: str = ""  # said when the model ends the call without a word
    call: CallClass = CallClass.FIRST  # the first turn of a call, or one of a call in progress
    priority: int = PRIORITY_FIRST  # in the engine's queue: lower goes first
    filler: str | None = None  # said when no answer has come `filler_after_s` after arrival
    filler_after_s: float = 0.0
    placement: Placement | None = None  # the engine core, with several (`Switchboard.start`)


@dataclass
class TurnRecord:
    """What the log line and the metrics say about a finished turn."""

    outcome: Outcome | None = None  # set when the turn ends
    stage: str = "before_response"  # where the turn was when it ended abnormally
    ttft: float | None = None
    first_clause: float | None = None  # arrival to the end of the first clause sent
    filler: float | None = None  # arrival to the filler, when one was said
    output_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    gaps: list[float] = field(default_factory=list)


class Turn:
    """One admitted call: `sse()` or `completion()` renders `texts()`, the turn's story;
    `interrupt` ends it early, `finish` accounts for it once."""

    def __init__(
        self,
        plan: TurnPlan,
        engine: Engine,
        metrics: Metrics,
        on_finish: Callable[[Turn], None],
        progress: Progress,
    ) -> None:
        self.plan = plan
        self._engine = engine
        self._metrics = metrics
        self._on_finish = on_finish
        self._progress = progress
        self._abort_task: asyncio.Task[None] | None = None
        self.record = TurnRecord()
        self.number = 0  # its number in this process (`Switchboard.start`): the call record's
        # perf_counter time of the turn's deadline: `interrupt(DEADLINE)`, and the responses'
        # cut `TURN_GRACE_S` later (`seconds_left`).
        self.deadline = plan.arrival + plan.turn_s
        self.finish_reason = "stop"
        self._interrupt: Outcome | None = None
        self._finished = False
        self._thinking = ThinkingFilter() if plan.thinking else None
        self.speech = SpeechFilter(plan.url_phrase) if plan.speech_filter else None
        # The end-call marker is taken out after the reasoning and before the speech filter,
        # which would otherwise change it (`[`, `_`) before it is recognised.
        self.end_call = EndCallFilter() if plan.end_call else None
        filters = (self._thinking, self.end_call, self.speech)
        self._filters: list[TextFilter] = [f for f in filters if f]
        # Called once the reply of a turn that ends the call has been delivered (`delivered`).
        self.on_end_call: Callable[[Turn], None] | None = None
        self._said: list[str] = []  # `stream: false`: the reply so far
        self._waiting: asyncio.Future[Delta | None] | None = None  # the first text, with a filler
        self._fillers = 0  # 1 while the filler is the next text the rendering sees
        self._clause = FirstClause()  # where the first clause of what is said ends
        self._sent: list[float] = []  # when each text was sent, until the first clause ended
        self._heard = False  # text of the reply has been given to the caller
        self._engine_done = False  # the engine's stream has ended: nothing to abort

    # -- the state machine -------------------------------------------------------------------

    async def texts(self) -> AsyncIterator[str]:
        """Non-empty text pieces of the reply; sets `finish_reason` and the outcome.

        The story of a turn: schedule it on the engine, speak what the engine says, end it
        audibly, clean up. A caller who leaves cancels it wherever it is; an engine that fails
        still gets the fallback sentence said."""
        self._schedule()
        try:
            async for text in self._speak():
                yield text
            if ending := self._end():
                yield ending
        except (asyncio.CancelledError, GeneratorExit):
            self.record.outcome = self.record.outcome or Outcome.CLIENT_GONE
            raise
        except Exception as e:  # an engine failure must still end the turn audibly
            yield self._failed(e)
        finally:
            await self._clean_up()

    def _schedule(self) -> None:
        """Ask the engine for the reply (its deltas through the filters, if any) and set the
        turn's deadline, when it interrupts itself."""
        plan = self.plan
        self.record.stage = "before_first_token"
        if self._interrupt is not None:
            # Ended before it reached the engine (its call's newer turn came first, a drain):
            # nothing is asked, and `_end` says what such an ending says.
            self._deltas = _no_deltas()
        else:
            self._deltas = self._engine.generate(
                plan.engine_id,
                plan.token_ids,
                plan.sampling,
                plan.adapter,
                plan.priority,
                None if plan.placement is None else plan.placement.rank,
            )
        self._stream = self._filtered(self._deltas) if self._filters else self._deltas
        self._deadline_timer = asyncio.get_running_loop().call_at(
            _loop_time_at(self.deadline), self.interrupt, Outcome.DEADLINE
        )

    async def _speak(self) -> AsyncIterator[str]:
        """The reply's text as the engine makes it: the first text by the first-token deadline
        (else nothing: the outcome is `deadline`), then the per-token hot path, kept to a few
        operations a delta. Returns when the engine's stream has ended, one way or another."""
        plan, rec, stream = self.plan, self.record, self._stream
        if plan.filler is not None:
            waiting = self._waiting = asyncio.ensure_future(self._first_text(stream))
            if await self._filler_due(waiting):
                rec.filler = time.perf_counter() - plan.arrival
                self._fillers = 1
                yield plan.filler
        try:
            async with asyncio.timeout_at(_loop_time_at(plan.arrival + plan.first_token_s)):
                first = await (self._waiting or self._first_text(stream))
        except TimeoutError:
            rec.outcome = Outcome.DEADLINE
            return  # the engine is still at it: `_clean_up` aborts it
        rec.stage = "streaming"
        if first is not None:
            if first.text:
                self._heard = True
                yield first.text
            if first.finished:
                self._set_reason(first.finish_reason)
            else:
                gaps, last = rec.gaps, time.perf_counter()
                async for delta in stream:
                    now = time.perf_counter()
                    self._count(delta, now)
                    if delta.text:
                        gaps.append(now - last)
                        last = now
                        yield delta.text
                    if delta.finished:
                        self._set_reason(delta.finish_reason)
        self._engine_done = True

    async def _filler_due(self, waiting: asyncio.Future[Delta | None]) -> bool:
        """Wait for the first text until the filler's time: True if it has not come by then
        (the first-token deadline still runs after it)."""
        delay = self.plan.arrival + self.plan.filler_after_s - time.perf_counter()
        if delay > 0:  # else due now: nothing can have been said yet
            try:
                await asyncio.wait((waiting,), timeout=delay)
            except BaseException:
                waiting.cancel()
                raise
        return not waiting.done()

    def _end(self) -> str | None:
        """What the caller hears after the engine's text: nothing after a reply that ended well,
        else the fallback sentence (after a space when words were heard)."""
        rec = self.record
        if self._interrupt is Outcome.SUPERSEDED and rec.outcome is None:
            # The caller spoke again and the call's newer turn has the line: nobody listens
            # to this one, so it ends as it is, without the fallback sentence.
            rec.outcome = Outcome.SUPERSEDED
            return None
        if rec.outcome not in (Outcome.STOP, Outcome.LENGTH):
            # No first text in time, interrupted (deadline, shutdown), aborted elsewhere, or
            # ended without a finish reason.
            rec.outcome = rec.outcome or self._interrupt or Outcome.ERROR
            return self._joiner() + self.plan.fallback_text
        if self._filters and not self._heard:
            if self.end_call is not None and self.end_call.signalled:
                return self.plan.closing_text  # the model ended the call without a word
            # All reasoning, or nothing a voice can say (an emoji, a code block): the caller
            # hears the fallback, never silence and never the reasoning.
            return self.plan.fallback_text
        return None

    def _failed(self, e: Exception) -> str:
        """The engine raised: record why, and end with the fallback sentence."""
        self.record.outcome = Outcome.ERROR
        self.record.error = f"{type(e).__name__}: {e}"
        log.exception("turn %s failed in the engine", self.plan.request_id)
        return self._joiner() + self.plan.fallback_text

    async def _clean_up(self) -> None:
        """However the turn ended: its deadline cancelled, the engine request aborted unless
        its stream has ended, the streams closed."""
        self._deadline_timer.cancel()
        if self._waiting is not None and not self._waiting.done():
            self._waiting.cancel()  # the caller left during the filler: it is iterating `_stream`
            await asyncio.wait((self._waiting,))
        if not self._engine_done:
            await self._engine.abort(self.plan.engine_id)
        if self._stream is not self._deltas:
            await self._stream.aclose()
        await self._deltas.aclose()

    def _joiner(self) -> str:
        """A space before the fallback sentence when the caller has already heard words."""
        return " " if self._heard or self.record.filler is not None else ""

    async def _filtered(self, deltas: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
        """The engine's deltas with their text through the filters (reasoning out, then what a
        voice cannot say); the last delta carries what they held back. Every delta is passed
        on, text or not: its tokens are the engine's progress (`_count`), spoken or not."""
        filters = self._filters
        async for delta in deltas:
            text = delta.text
            for f in filters:
                text = f.feed(text) if text else ""
                if delta.finished:
                    text += f.finish()
            delta.text = text
            yield delta

    async def _first_text(self, deltas: AsyncGenerator[Delta, None]) -> Delta | None:
        """The first delta that carries text or ends the turn; None if the stream just ended."""
        async for delta in deltas:
            self._count(delta, time.perf_counter())
            if delta.text or delta.finished:
                return delta
        return None

    def _count(self, delta: Delta, now: float) -> None:
        """The engine's counts, and its progress: the stall clock moves on the tokens it
        produced, not on text. Text may lag them (vLLM holds back what could start a stop
        string; the filters hold back reasoning and markers), and that is not a stall."""
        if delta.new_tokens:
            self.record.output_tokens += delta.new_tokens
            self._progress.at = now
        if delta.cached_tokens:
            self.record.cached_tokens = delta.cached_tokens

    def _set_reason(self, reason: str | None) -> None:
        if reason == "length":
            self.finish_reason = "length"
            self.record.outcome = Outcome.LENGTH
        elif reason in ("stop", "eos"):
            self.record.outcome = Outcome.STOP
        # None (not finished yet) and "abort" leave the outcome open.

    # -- renderings --------------------------------------------------------------------------

    async def sse(self) -> AsyncIterator[bytes]:
        """The streamed reply, chunk by chunk."""
        r = self.plan.renderer
        yield r.role()
        first_clause = True  # until the first clause has been sent: then only this check
        async for text in self.texts():
            if first_clause:
                first_clause = self._first_words(text)
            yield r.content(text)
        if first_clause and self._clause.finish():  # the reply ended inside its first clause
            self._observe_first_clause(self._sent[self._clause.end_piece or 0])
        yield r.final(self.finish_reason)
        if self.plan.request.include_usage:
            yield r.usage(
                len(self.plan.token_ids), self.record.output_tokens, self.record.cached_tokens
            )
        yield DONE
        self.finish()
        self.delivered()

    async def completion(self) -> bytes:
        """The whole reply as one `chat.completion` body (`stream: false`)."""
        said = self._said
        async for text in self.texts():
            said.append(text)
        if said:
            self._observe_ttft()
            if first_clause_end("".join(said)) is not None:  # it all arrives at once
                self._observe_first_clause(time.perf_counter())
        self.finish()
        return self._body()

    def cut_off(self) -> bytes:
        """The response gave up on the turn `TURN_GRACE_S` after its deadline: the interrupt
        did not end it (an engine that does not stop) or the caller stopped reading. The
        outcome is `deadline`; for `stream: false`, the body of what was said, then the
        fallback ending."""
        self.record.outcome = Outcome.DEADLINE
        if not self._said or not self._said[-1].endswith(self.plan.fallback_text):
            self._said.append(self._joiner() + self.plan.fallback_text)
        return self._body()

    def _body(self) -> bytes:
        return self.plan.renderer.completion(
            "".join(self._said),
            self.finish_reason,
            len(self.plan.token_ids),
            self.record.output_tokens,
            self.record.cached_tokens,
        )

    def _first_words(self, text: str) -> bool:
        """A text about to be sent, until the first clause has been: the first time the answer
        is heard (TTFT) and the end of its first clause, neither of which the filler is.
        False once the first clause has been timed."""
        if self._fillers:
            self._fillers = 0
            return True
        if self.record.ttft is None:
            self._observe_ttft()
        self._sent.append(time.perf_counter())
        if self._clause.feed(text):
            self._observe_first_clause(self._sent[self._clause.end_piece or 0])
            return False
        return True

    def _observe_first_clause(self, sent: float) -> None:
        # The caller's voice can start once the first clause is whole: timed when the text that
        # completed it was sent (a `.` waits for the next character, not for this clock).
        self.record.first_clause = seconds = sent - self.plan.arrival
        self._metrics.observe_first_clause(self.plan.alias, seconds)

    def _observe_ttft(self) -> None:
        # The caller hears the first content now: measured here, at the edge.
        self.record.ttft = ttft = time.perf_counter() - self.plan.arrival
        self._metrics.observe_ttft(self.plan.alias, ttft, self.plan.request.session_id)

    # -- control -----------------------------------------------------------------------------

    def seconds_left(self) -> float:
        """Until the turn's deadline (`turn_s` after arrival); negative once it has passed."""
        return self.deadline - time.perf_counter()

    def interrupt(self, reason: Outcome) -> None:
        """End the turn early with the fallback ending: its deadline (`deadline`), a drain that
        ran out (`draining`), a hung engine (`error`). The engine's stream ends on the abort,
        and `texts` says the fallback sentence after what was already said. A turn superseded
        by its call's newer one (`superseded`) ends without it."""
        if self._finished or self._interrupt is not None:
            return
        self._interrupt = reason
        self._abort_task = asyncio.get_running_loop().create_task(
            self._engine.abort(self.plan.engine_id)
        )

    @property
    def ends_call(self) -> bool:
        """The model ended the call (its marker) in a reply that ended well: not cut off,
        aborted, superseded or left by its caller."""
        return (
            self.end_call is not None
            and self.end_call.signalled
            and self.record.outcome in (Outcome.STOP, Outcome.LENGTH)
        )

    def delivered(self) -> None:
        """The reply's last byte (`[DONE]`, or the whole `stream: false` body) has been handed
        to the caller's connection: a call the model ended may now be hung up."""
        if self.ends_call and self.on_end_call is not None:
            on_end_call, self.on_end_call = self.on_end_call, None  # once
            on_end_call(self)

    def finish(self) -> None:
        """Account for the turn exactly once; one that never ended itself lost its caller."""
        if self._finished:
            return
        self._finished = True
        if self.record.outcome is None:
            self.record.outcome = Outcome.CLIENT_GONE
        self._on_finish(self)


async def _no_deltas() -> AsyncGenerator[Delta, None]:
    """An engine stream that ends at once, for a turn that never reached the engine."""
    return
    yield


def _loop_time_at(perf_deadline: float) -> float:
    """Convert a perf_counter deadline to the event loop's clock."""
    return asyncio.get_running_loop().time() + (perf_deadline - time.perf_counter())
