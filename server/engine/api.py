"""The engine as the rest of the server sees it: a small Protocol, the `Delta` it streams, and
the opaque sampling value it builds.

`server/engine/vllm_adapter.py` is the implementation on vLLM's `AsyncLLM`;
`tests/scripted_engine.py` is a scripted double that yields planned deltas, errors and stalls,
for what a real engine cannot be made to do on demand. Nothing here imports vLLM.

The order of calls is the promise that keeps refusals before the response: `params` (vLLM's own
validation of the sampling values, `InvalidRequest`) and `check_admission` (vLLM's queue
limits, `Overloaded`) run while a turn is planned, so they become a 400 or a 503 as the first
response; `generate` runs inside the response body, where a failure can only end the turn
in-band with the fallback sentence.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, NewType, Protocol

from server.engine.adapters import Adapters

# The engine's own sampling object (vLLM's `SamplingParams`), built by `Engine.params` while the
# turn is planned. Opaque outside the engine: only its maker reads it.
EngineParams = NewType("EngineParams", object)


class Delta:
    """One engine step for one turn: new text, cumulative counts, and whether it is the last."""

    __slots__ = ("cached_tokens", "finish_reason", "finished", "new_tokens", "text")

    def __init__(
        self,
        text: str,
        new_tokens: int,
        finished: bool,
        finish_reason: str | None,
        cached_tokens: int,
    ) -> None:
        self.text = text
        self.new_tokens = new_tokens
        self.finished = finished
        self.finish_reason = finish_reason
        self.cached_tokens = cached_tokens


class Engine(Protocol):
    """What the server needs from an engine: its size, a few checks, deltas, abort, stop."""

    adapters: Adapters
    max_model_len: int
    max_num_seqs: int  # of each engine core
    data_parallel_size: int  # engine cores behind this client (`engine.data_parallel_size`)
    generation_defaults: dict[str, Any]  # the checkpoint's sampling defaults
    version: str  # the engine's release, for `callgate_info`

    @property
    def alive(self) -> bool: ...

    def params(self, sampling: dict[str, Any]) -> EngineParams:
        """The engine's sampling object for these values; `InvalidRequest` if it refuses them."""
        ...

    def check_admission(self) -> None:
        """`Overloaded` when the engine's own queue limits are reached."""
        ...

    def generate(
        self,
        request_id: str,
        token_ids: list[int],
        params: EngineParams,
        adapter: str | None,
        priority: int = 0,
        rank: int | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """The turn's deltas, queued at `priority` (lower first) on engine core `rank` (None:
        the engine's choice); closing or cancelling the iterator aborts the request."""
        ...

    async def warm(self, token_ids: list[int], adapter: str | None, priority: int) -> int:
        """Prefill `token_ids` once (one token generated, dropped) on every engine core, so that
        their prefix cache holds them; the prompt tokens that were cached already."""
        ...

    async def abort(self, request_id: str) -> None:
        """Abort a request; idempotent, and it must be sent even from a cancelled task."""
        ...

    def num_unfinished(self) -> int:
        """Requests the engine has not finished (the stall clock only runs while busy)."""
        ...

    def core_lost(self) -> None:
        """The engine core died where this process cannot see it: fail every open request."""
        ...

    def stop(self) -> None: ...
