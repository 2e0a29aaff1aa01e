"""One streamed turn against an endpoint, timed the way a caller hears it.

TTFT stops at the first chunk whose `delta.content` is non-empty: the role-only chunk that
opens the stream carries nothing the gateway can speak, so counting it (as `vllm bench serve`
does) would flatter a server that sends it early and then stalls. Inter-token gaps are taken
between content chunks for the same reason.

A barge-in is modelled by closing the connection after a given number of content chunks, which
is what the gateway does when the caller talks over the bot; such a turn is `cut`, not an error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class TurnResult:
    """What one turn measured. Times are seconds; `start` is relative to the level's start."""

    turn_index: int = 1
    call_id: int | None = None
    start: float = 0.0
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None
    content_chunks: int = 0
    usage_output_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    cut: bool = False
    error: str | None = None
    error_detail: str | None = None
    text: str = ""

    @property
    def output_tokens(self) -> int:
        """Tokens from the usage chunk when the server sent one, else one per content chunk."""
        if self.usage_output_tokens is not None:
            return self.usage_output_tokens
        return self.content_chunks

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first, vLLM's definition (complete turns only)."""
        if self.cut or self.error or self.ttft is None or self.e2e is None:
            return None
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def auth_headers(auth: str | None) -> dict[str, str]:
    """The gateway sends the console's code raw in `Authorization` (not necessarily Bearer)."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if auth:
        headers["Authorization"] = auth
    return headers


def _classify(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "disconnected"
    if isinstance(exc, httpx.HTTPError):
        return "transport"
    return type(exc).__name__


def _apply_chunk(result: TurnResult, data: dict[str, Any], now: float, t0: float) -> float | None:
    """Fold one parsed chunk into `result`; returns the time if it carried content."""
    usage = data.get("usage")
    if isinstance(usage, dict):
        if (ct := usage.get("completion_tokens")) is not None:
            result.usage_output_tokens = int(ct)
        if (pt := usage.get("prompt_tokens")) is not None:
            result.prompt_tokens = int(pt)
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            result.cached_tokens = int(details["cached_tokens"])
    choices = data.get("choices") or []
    if not choices:
        if "error" in data:
            result.error = "stream_error"
            result.error_detail = json.dumps(data["error"])[:300]
        return None
    choice = choices[0]
    if choice.get("finish_reason"):
        result.finish_reason = choice["finish_reason"]
    content = (choice.get("delta") or {}).get("content")
    if not content:
        return None
    result.text += content
    result.content_chunks += 1
    if result.ttft is None:
        result.ttft = now - t0
    return now


async def stream_turn(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    auth: str | None,
    *,
    cut_after_chunks: int | None = None,
    level_t0: float = 0.0,
) -> TurnResult:
    """POST one turn and read its SSE stream to `[DONE]` (or until the barge-in point)."""
    result = TurnResult()
    payload = json.dumps(body, ensure_ascii=False).encode()
    t0 = time.perf_counter()
    result.start = t0 - level_t0
    last_content: float | None = None
    done = False
    try:
        async with client.stream("POST", url, content=payload, headers=auth_headers(auth)) as resp:
            if resp.status_code != 200:
                raw = await resp.aread()
                result.error = f"http_{resp.status_code}"
                result.error_detail = raw[:300].decode(errors="replace")
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and `: ping` comments
                data_str = line[5:].strip()
                now = time.perf_counter()
                if data_str == "[DONE]":
                    done = True
                    break
                try:
                    data = json.loads(data_str)
                except ValueError:
                    result.error = "bad_chunk"
                    result.error_detail = data_str[:300]
                    break
                seen = _apply_chunk(result, data, now, t0)
                if seen is not None:
                    if last_content is not None:
                        result.itl.append(seen - last_content)
                    last_content = seen
                    if cut_after_chunks is not None and result.content_chunks >= cut_after_chunks:
                        result.cut = True
                        break  # leaving the context manager closes the connection
                if result.error:
                    break
    except Exception as exc:  # every failure is a data point, by kind
        result.error = _classify(exc)
        result.error_detail = repr(exc)[:300]
    result.e2e = time.perf_counter() - t0
    if result.error is None and not result.cut:
        if not done:
            result.error = "no_done"
        elif result.content_chunks == 0:
            result.error = "no_content"
    return result
