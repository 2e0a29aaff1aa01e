"""How a request ended: the one list of outcome names.

Every request is counted under exactly one (`callgate_requests{outcome}`) and its log line says
the same word. A turn's ending sets it (`server/serving/turn.py`), a refusal takes its error's
(`errors.py`), and the metrics declare every one up front, in this order, so that dashboards see
zeros rather than gaps. A `StrEnum`: each member is its plain string in labels, logs and JSON.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    STOP = "stop"  # the reply ended where the model ended it
    LENGTH = "length"  # out of tokens: max_tokens or the context
    CLIENT_GONE = "client_gone"  # the caller left; nobody heard the end
    DEADLINE = "deadline"  # no first token by first_token_s, or the turn outlived turn_s
    SUPERSEDED = "superseded"  # the call's newer turn was admitted: nobody listens to this one
    ERROR = "error"  # the engine failed, hung, died, or was not there (loading, dead)
    REJECTED = "rejected"  # refused by admission: the server is full
    INVALID = "invalid"  # a request the protocol or the engine refuses (400, 404, 405, 413)
    UNAUTHORIZED = "unauthorized"  # no or a wrong Authorization code
    DRAINING = "draining"  # shutting down: refused, or cut when the drain time ran out
