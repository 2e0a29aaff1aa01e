"""A fake Model Address with no model: `python -m benchmarks.fakeserver --port P [--fault F]`.

Two uses. Pointed at by `benchmarks.load`, it measures the load generator's own ceiling (how many
turns and chunks per second the client can take on this machine), which bounds every figure the
client reports. And with faults switched on it is the broken server the checker's tests need:
each fault breaks one protocol point the gateway depends on.

Faults are chosen per request by path (`POST /fault/key-order,no-done`) or for every request by
`--fault`. The reply is `max_tokens` (default 16) content chunks `tok0 `, `tok1 `, ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from benchmarks.lib.servers import free_port

FAULTS = {
    "key-order": "chunk keys in OpenAI order (id, object, created, model, choices)",
    "choice-order": "choices[0] keys in OpenAI order (index, delta, logprobs, finish_reason)",
    "no-done": "no data: [DONE] at the end",
    "no-finish": "the final chunk's finish_reason is null",
    "open-auth": "any Authorization is accepted (200 on a wrong code)",
    "multi-id": "a new id in every chunk",
    "no-role": "no role chunk first",
    "content-type": "Content-Type application/json on the stream",
    "object": "object is chat.completion",
    "bad-json": "one chunk is not JSON",
    "model": "model is always fake-model, not the request's",
}
AUTH_CODE = "fake-code"


class FakeState:
    """What the fake saw (request bodies, headers) and how it behaves."""

    def __init__(self, faults: set[str], token_delay_s: float, auth_code: str) -> None:
        self.faults = faults
        self.token_delay_s = token_delay_s
        self.auth_code = auth_code
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0


def _chunk(
    faults: set[str],
    rid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None,
) -> bytes:
    choice: dict[str, Any] = {"delta": delta, "finish_reason": finish, "index": 0, "logprobs": None}
    if "choice-order" in faults:
        choice = {k: choice[k] for k in ("index", "delta", "logprobs", "finish_reason")}
    body: dict[str, Any] = {
        "choices": [choice],
        "object": "chat.completion" if "object" in faults else "chat.completion.chunk",
        "usage": None,
        "created": created,
        "system_fingerprint": None,
        "model": "fake-model" if "model" in faults else model,
        "id": rid,
    }
    if "key-order" in faults:
        body = {k: body[k] for k in ("id", "object", "created", "model", "choices", "usage")}
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


async def _stream(state: FakeState, faults: set[str], body: dict[str, Any]) -> AsyncIterator[bytes]:
    created = int(time.time())
    n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    model = str(body.get("model", "qwen-plus"))
    counter = len(state.requests)

    def rid() -> str:
        nonlocal counter
        if "multi-id" in faults:
            counter += 1000
        return f"chatcmpl-fake-{counter}"

    try:
        if "no-role" not in faults:
            yield _chunk(faults, rid(), created, model, {"content": "", "role": "assistant"}, None)
        for i in range(n):
            if state.token_delay_s:
                await asyncio.sleep(state.token_delay_s)
            if "bad-json" in faults and i == 0:
                yield b"data: {not json\n\n"
                continue
            yield _chunk(faults, rid(), created, model, {"content": f"tok{i} "}, None)
        finish = None if "no-finish" in faults else "length"
        yield _chunk(faults, rid(), created, model, {}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
            yield (
                b'data: {"choices":[],"object":"chat.completion.chunk","usage":'
                + json.dumps(usage).encode()
                + f',"created":{created},"system_fingerprint":null,"model":"{model}",'
                f'"id":"{rid()}"}}\n\n'.encode()
            )
        if "no-done" not in faults:
            yield b"data: [DONE]\n\n"
    except asyncio.CancelledError:
        state.disconnects += 1
        raise


def create_app(
    faults: set[str] | None = None, token_delay_s: float = 0.0, auth_code: str = AUTH_CODE
) -> Starlette:
    state = FakeState(set(faults or ()), token_delay_s, auth_code)

    async def chat(request: Request) -> Response:
        faults = set(state.faults)
        if spec := request.path_params.get("faults"):
            unknown = set(spec.split(",")) - FAULTS.keys()
            if unknown:
                return JSONResponse({"error": {"message": f"unknown faults {unknown}"}}, 404)
            faults |= set(spec.split(","))
        body = json.loads(await request.body())
        state.requests.append({"body": body, "headers": dict(request.headers)})
        auth = request.headers.get("authorization", "")
        if "open-auth" not in faults and auth.removeprefix("Bearer ") != state.auth_code:
            err = {"message": "invalid authorization code", "type": "auth", "code": 401}
            return JSONResponse({"error": err, "code": 401, "message": err["message"]}, 401)
        media = "application/json" if "content-type" in faults else "text/event-stream"
        return StreamingResponse(_stream(state, faults, body), media_type=media)

    app = Starlette(
        routes=[
            Route("/", chat, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/fault/{faults}", chat, methods=["POST"]),
            Route("/fault/{faults}/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    app.state.fake = state
    return app


@contextlib.contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """Run `app` under uvicorn in a background thread; yields its base URL (tests use this)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fakeserver", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8009)
    p.add_argument("--fault", action="append", default=[], choices=sorted(FAULTS))
    p.add_argument("--token-delay-ms", type=float, default=0.0, help="Sleep before each token.")
    p.add_argument("--auth", default=AUTH_CODE, help="The accepted Authorization code.")
    args = p.parse_args(argv)
    app = create_app(set(args.fault), args.token_delay_ms / 1000.0, args.auth)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
