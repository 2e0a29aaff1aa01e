"""The one log line of every request, served or refused: all its field names, here.

A request is logged once, on the `callgate.turn` logger, as `turn <request_id> <outcome>` with
its fields in `extra={"turn": ...}` (`server/base/logs.py` writes them into the line, in this
order). Both kinds start with which request, whose call and which kind of turn of it (`call`:
first or continuing, `server/serving/calls.py`), which alias and how it ended, and both
say `total_ms`, so that one query finds either; a served turn adds its tokens and timings, a
refusal its status and reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from server.base.outcomes import Outcome

if TYPE_CHECKING:
    from server.base.errors import CallgateError
    from server.serving.turn import Turn

log = logging.getLogger("callgate.turn")


def log_turn(turn: Turn, total_s: float, log_content: bool) -> None:
    """The line of a finished turn. `log_content`: with the caller's messages and biz_params."""
    plan, rec, request = turn.plan, turn.record, turn.plan.request
    fields: dict[str, Any] = {
        "event": "turn",
        "request_id": plan.request_id,
        "session_id": request.session_id,
        "out_id": request.out_id,
        "model": request.model,
        "alias": plan.alias,
        "call": plan.call,
        "outcome": rec.outcome,
        "prompt_tokens": len(plan.token_ids),
        "cached_tokens": rec.cached_tokens,
        "output_tokens": rec.output_tokens,
        "dropped_turns": plan.dropped_turns,
        "ttft_ms": None if rec.ttft is None else _ms(rec.ttft),
        "first_clause_ms": None if rec.first_clause is None else _ms(rec.first_clause),
        "total_ms": _ms(total_s),
        "stream": request.stream,
    }
    if turn.speech is not None:
        # Which prompts make the model write for a screen: characters kept from the voice.
        fields["speech_filtered"] = turn.speech.filtered
    if plan.placement is not None:  # several engine cores: which one, and why that one
        fields["engine"] = plan.placement.rank
        fields["affinity"] = plan.placement.affinity
    if rec.filler is not None:  # a filler was said while the caller waited for the answer
        fields["filler_ms"] = _ms(rec.filler)
    if rec.outcome == Outcome.CLIENT_GONE:
        fields["disconnect_stage"] = rec.stage
    if rec.error:
        fields["error"] = rec.error
    if log_content:
        fields["messages"] = [m.model_dump() for m in request.messages]
        fields["biz_params"] = request.biz_params
    _write(plan.request_id, fields)


def log_refusal(
    err: CallgateError,
    request_id: str,
    session_id: str | None,
    model: str,
    alias: str,
    total_s: float,
    call: str | None = None,
) -> None:
    """The line of a request refused before it became a turn (`call`: None before the parse)."""
    fields: dict[str, Any] = {
        "event": "turn",
        "request_id": request_id,
        "session_id": session_id,
        "model": model,
        "alias": alias,
        "call": call,
        "outcome": err.outcome,
        "status": err.status,
        "error": err.message,
        "total_ms": _ms(total_s),
    }
    _write(request_id, fields)


def _write(request_id: str, fields: dict[str, Any]) -> None:
    log.info("turn %s %s", request_id, fields["outcome"], extra={"turn": fields})


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
