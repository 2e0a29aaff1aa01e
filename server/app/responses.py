"""HTTP edges: bounded reads, error responses, and the two ways a turn leaves the server.

The response classes only move bytes: the turn (`server/serving/turn.py`) decides every byte of the
reply, its outcome and its ending, its deadline included. What they add is what only the
connection knows: a caller who hangs up (the turn is cancelled, and aborts the engine request)
and a turn still not ended `TURN_GRACE_S` after its deadline (`Turn.cut_off`). Whatever happens
to the connection, `__call__` ends in `turn.finish()`, so every admitted turn is accounted once.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from server.base.errors import CallgateError, PayloadTooLarge, error_body
from server.serving.turn import Turn

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# After the turn's deadline: how long its interrupt gets to end it with the fallback ending.
TURN_GRACE_S = 2.0
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(incoming: str | None) -> str:
    """Honour a caller's X-Request-Id when it is short and plain; otherwise make one."""
    if incoming and _SAFE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it (413) as soon as it passes `limit`, chunked bodies included."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(err: CallgateError, rid: str) -> Response:
    return Response(
        error_body(err, rid),
        status_code=err.status,
        media_type="application/json",
        headers={"X-Request-Id": rid, **err.headers},
    )


class _TurnResponse:
    """Shared by both stream classes: a hard cut after the turn's deadline, then account."""

    turn: Turn

    async def _serve(self, parent_call: Any, scope: Scope, receive: Receive, send: Send) -> None:
        # At its deadline the turn interrupts itself and a caller who is still reading hears
        # the fallback ending. One who stopped reading cannot take it: cut TURN_GRACE_S later.
        try:
            with anyio.move_on_after(self.turn.seconds_left() + TURN_GRACE_S) as cut:
                await parent_call(scope, receive, send)
            if cut.cancelled_caught:
                self.turn.cut_off()
        except ClientDisconnect:
            pass  # the turn records client_gone; there is nobody to answer
        finally:
            self.turn.finish()


class SseStream(_TurnResponse, EventSourceResponse):
    """The reply through sse-starlette, which can add keep-alive pings (`server.sse_ping_s`)."""

    def __init__(self, turn: Turn, *, ping_s: float, headers: dict[str, str]):
        # sep="\n": keep-alive comments use the same bare line ends as the chunks.
        super().__init__(turn.sse(), headers={**SSE_HEADERS, **headers}, ping=ping_s, sep="\n")
        self.turn = turn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(super().__call__, scope, receive, send)


class PlainStream(_TurnResponse, StreamingResponse):
    """The reply through Starlette's StreamingResponse: the default, measured leaner per token
    than sse-starlette (which wraps every send in a timeout scope); see benchmarks/sse_ab.py."""

    def __init__(self, turn: Turn, *, ping_s: float, headers: dict[str, str]):
        super().__init__(
            turn.sse(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
        )
        self.turn = turn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette only listens for http.disconnect below ASGI spec 2.4; above, it learns of a
        # hang-up from the next failed send, and none happens while a turn waits for its first
        # token. Pin the listening path so a caller who leaves is noticed at once, whatever
        # the server reports.
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}
        await self._serve(super().__call__, scope, receive, send)


class Completion(Response):
    """`stream: false`: the whole reply as one JSON body. A caller who hangs up is noticed at
    once (nothing is sent until the end, so only `http.disconnect` can say so): the turn is
    cancelled and aborts the engine request."""

    def __init__(self, turn: Turn, *, headers: dict[str, str]) -> None:
        super().__init__(media_type="application/json", headers=headers)
        self.turn, self.extra_headers = turn, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body: bytes | None = None
        gone = False

        async def watch(cancel: anyio.CancelScope) -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            cancel.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, tg.cancel_scope)
                # At its deadline the turn interrupts itself and ends with what it said so far
                # and the fallback; the cut is for an engine that does not stop even then.
                with anyio.move_on_after(self.turn.seconds_left() + TURN_GRACE_S):
                    body = await self.turn.completion()
                tg.cancel_scope.cancel()
            if body is None and not gone:
                body = self.turn.cut_off()
            if not gone and body is not None:
                response = Response(body, media_type="application/json", headers=self.extra_headers)
                await response(scope, receive, send)
                self.turn.delivered()  # the whole body is out: a call it ends may hang up
        finally:
            self.turn.finish()
