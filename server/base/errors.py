"""One table of domain errors, two renderings.

Before the first byte of a response, an error is an HTTP status with a JSON body carrying both
OpenAI's shape (`{"error": {"message", "type", "code"}}`) and DashScope's top-level `code`,
`message`, `request_id` (the console's test button shows that body). After the stream has
started there is no status to change: the turn (`turn.py`) ends in-band with the fallback
sentence instead. Each error also names the `Outcome` it is counted and logged under.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from server.base.outcomes import Outcome


class CallgateError(Exception):
    """Base of every error that becomes a response; subclasses fix status, type, code."""

    status: int = 500
    type: str = "internal_error"
    code: str = "internal_error"
    outcome: Outcome = Outcome.ERROR

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(CallgateError):
    status, type, code = 400, "invalid_request_error", "invalid_parameter"
    outcome = Outcome.INVALID


class UnsupportedFeature(InvalidRequest):
    code = "unsupported_parameter"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(CallgateError):
    status, type, code = 401, "authentication_error", "invalid_api_key"
    outcome = Outcome.UNAUTHORIZED


class NotFound(CallgateError):
    status, type, code = 404, "invalid_request_error", "not_found"
    outcome = Outcome.INVALID


class MethodNotAllowed(CallgateError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"
    outcome = Outcome.INVALID


class PayloadTooLarge(CallgateError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"
    outcome = Outcome.INVALID


class Overloaded(CallgateError):
    """Admission refused before any engine work; the gateway may retry elsewhere."""

    status, type, code = 503, "overloaded_error", "server_overloaded"
    outcome = Outcome.REJECTED


class Draining(CallgateError):
    status, type, code = 503, "service_unavailable", "server_draining"
    outcome = Outcome.DRAINING


class EngineUnavailable(CallgateError):
    """The engine is loading or dead: nothing this request did wrong."""

    status, type, code = 503, "service_unavailable", "engine_unavailable"
    outcome = Outcome.ERROR


class ClientGone(CallgateError):
    """The caller left before the request became a turn (nobody reads the answer)."""

    status, type, code = 499, "client_closed_request", "client_gone"
    outcome = Outcome.CLIENT_GONE


class EngineFailed(CallgateError):
    """The engine raised while serving this turn (before anything was streamed)."""

    status, type, code = 500, "internal_error", "engine_error"
    outcome = Outcome.ERROR


def retry_after(seconds: int) -> dict[str, str]:
    """The headers of every 503 (loading, draining, full, dead): when the gateway may try this
    server again (`limits.retry_after_s`)."""
    return {"Retry-After": str(seconds)}


def framework_error(status: int) -> CallgateError:
    """The error for a refusal the framework makes (no such route, wrong method), with a fixed
    message: never the request's path or method, which are the caller's bytes (a path can be
    kilobytes of anything and would come back in every 404)."""
    if status == 404:
        return NotFound("no such route")
    if status == 405:
        return MethodNotAllowed("method not allowed on this route")
    err = CallgateError(HTTPStatus(status).phrase if status in _STATUSES else "error")
    err.status = status
    return err


_STATUSES = {s.value for s in HTTPStatus}


def error_body(err: CallgateError, request_id: str) -> bytes:
    """The JSON body of an error response, in both shapes the gateway's peers read."""
    return json.dumps(
        {
            "error": {"message": err.message, "type": err.type, "code": err.code},
            "code": err.code,
            "message": err.message,
            "request_id": request_id,
        },
        ensure_ascii=False,
    ).encode("utf-8")
