"""The only module that imports vLLM: an `AsyncLLM` behind start, generate, abort, health, stop.

Kept to calls that exist from vLLM 0.26 through 0.33 (`AsyncLLM.from_engine_args`,
`generate` with a token-ids prompt, `abort`, `errored`, `shutdown`), so the GPU image can move
within that range without touching the rest of the server. The engine is built with the same
usage context as vLLM's own OpenAI server, whose defaults (e.g. `max_num_seqs`) differ from the
plain engine's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from server.errors import EngineUnavailable, InvalidRequest, Overloaded
from server.settings import EngineSettings

log = logging.getLogger(__name__)

try:  # present in the releases that have an engine-side admission queue
    from vllm.exceptions import GracefulHTTPError as _Overflow
except ImportError:  # pragma: no cover - older vLLM
    _Overflow = ()  # type: ignore[assignment,misc]
try:
    from vllm.exceptions import VLLMValidationError as _Invalid
except ImportError:  # pragma: no cover - older vLLM
    _Invalid = ValueError  # type: ignore[assignment,misc]


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


def _tokens_input(token_ids: list[int]) -> Any:
    """An already-tokenized prompt, in the shape the engine takes without further processing.

    With the `type` key, vLLM (0.32) validates the ids on the event loop and hands them to the
    engine core; without it, the prompt counts as "raw" and goes through the renderer's
    worker thread first, a thread hop per turn. Older releases read the same dict as a
    token prompt (`prompt_token_ids`).
    """
    return {"type": "token", "prompt_token_ids": token_ids}


def engine_args(settings: EngineSettings) -> AsyncEngineArgs:
    named: dict[str, Any] = {
        "model": settings.model,
        "served_model_name": settings.served_name,
        "max_model_len": settings.max_model_len,
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "quantization": settings.quantization,
        "enforce_eager": settings.enforce_eager,
        "trust_remote_code": settings.trust_remote_code,
        "seed": settings.seed,
    }
    named = {k: v for k, v in named.items() if v is not None}
    clash = set(named) & set(settings.extra)
    if clash:
        raise ValueError(f"engine.extra repeats named settings: {sorted(clash)}")
    return AsyncEngineArgs(**named, **settings.extra)


class Engine:
    """A running engine. Create with `await Engine.start(settings)`."""

    def __init__(self, llm: AsyncLLM) -> None:
        self._llm = llm
        config = llm.model_config
        self.max_model_len: int = config.max_model_len
        self.max_num_seqs: int = llm.vllm_config.scheduler_config.max_num_seqs
        # The checkpoint's generation_config defaults, exactly as vLLM's own server reads them.
        self.generation_defaults: dict[str, Any] = dict(config.get_diff_sampling_param())

    @classmethod
    async def start(cls, settings: EngineSettings) -> Engine:
        args = engine_args(settings)
        log.info("starting engine for %s", settings.model)
        # Building the engine blocks for the whole load (seconds to minutes): do it off the
        # event loop so /health and /ready answer 503 meanwhile instead of refusing connections.
        llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args, args, usage_context=UsageContext.OPENAI_API_SERVER
        )
        # One engine round trip starts the client's output task on this loop, so an engine
        # failure while idle is noticed at once rather than at the next request.
        await llm.get_supported_tasks()
        return cls(llm)

    @property
    def alive(self) -> bool:
        return not self._llm.errored

    def num_unfinished(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    def check_admission(self) -> None:
        """vLLM's own queue limits (if configured), refused before the response starts."""
        check = getattr(self._llm, "check_admission", None)
        if check is None:
            return
        try:
            check()
        except _Overflow as e:
            raise Overloaded(f"engine queue is full: {e}") from None

    async def generate(
        self, request_id: str, token_ids: list[int], sampling: dict[str, Any]
    ) -> AsyncGenerator[Delta, None]:
        """Stream the turn's deltas. Closing or cancelling the iterator aborts the request."""
        if self._llm.errored:
            raise EngineUnavailable("the engine is not running")
        params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
        try:
            async for out in self._llm.generate(_tokens_input(token_ids), params, request_id):
                completion = out.outputs[0]
                yield Delta(
                    completion.text,
                    len(completion.token_ids),
                    out.finished,
                    completion.finish_reason,
                    out.num_cached_tokens or 0,
                )
        except _Invalid as e:
            raise InvalidRequest(str(e)) from None
        except _Overflow as e:
            raise Overloaded(str(e)) from None

    async def abort(self, request_id: str) -> None:
        """Abort a request; idempotent, and shielded so a cancelled caller still sends it."""
        if self._llm.errored:
            return
        await asyncio.shield(self._llm.abort(request_id))

    def stop(self) -> None:
        self._llm.shutdown()
