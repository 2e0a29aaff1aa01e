"""Request -> sampling values, as plain keyword arguments for vLLM's `SamplingParams`.

The order is vLLM's own server's: the checkpoint's `generation_config` defaults first, then the
request's values, then the server's limits (a speech-sized `max_tokens` cap, the room left in
the context, one choice). Pure: the engine turns the result into its own sampling object while
the turn is planned (`Engine.params`), so what the engine refuses is a 400 before the response.
"""

from __future__ import annotations

from typing import Any

from server.wire.schemas import ChatRequest

# Request fields copied as they are when the caller sets them.
_PASSTHROUGH = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "ignore_eos",
)


def sampling_kwargs(
    request: ChatRequest,
    defaults: dict[str, Any],
    *,
    max_tokens_cap: int,
    room: int,
    banned_token_ids: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Merge defaults, the request and the limits.

    `room` is what the context has left after the prompt; `banned_token_ids` are tokens that
    must never be produced (Qwen3's `<think>` markers when thinking is off).
    """
    params: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
    for name in _PASSTHROUGH:
        value = getattr(request, name)
        if value is not None and value is not False:
            params[name] = value
    if request.top_k is not None:
        # 0 and -1 both mean "off" on the wire; vLLM spells off as 0.
        params["top_k"] = 0 if request.top_k in (0, -1) else request.top_k
    elif "top_k" in params and params["top_k"] in (-1, None):
        params["top_k"] = 0

    wanted = request.requested_max_tokens or params.get("max_tokens") or max_tokens_cap
    limit = max(1, min(max_tokens_cap, room))
    params["max_tokens"] = min(wanted, limit)
    if request.min_tokens is not None:
        # The server's limits lower min_tokens with max_tokens (the caller cannot know them);
        # a caller's own min_tokens above its own max_tokens is left for the engine to refuse.
        params["min_tokens"] = min(request.min_tokens, limit)
    params["n"] = 1
    if banned_token_ids:
        params["logit_bias"] = {tid: -100.0 for tid in banned_token_ids}
    return params
