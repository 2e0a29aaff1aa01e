"""vLLM's `AsyncLLM` behind start, generate, abort, health, stop (`server.engine.api.Engine`).

Kept to calls that exist from vLLM 0.26 through 0.33 (`AsyncLLM.from_engine_args`,
`generate` with a token-ids prompt and a `LoRARequest`, `add_lora`, `abort`, `errored`,
`shutdown`), so the GPU image can move within that range without touching the rest of the
server. The engine is built with the same
usage context as vLLM's own OpenAI server, whose defaults (e.g. `max_num_seqs`) differ from the
plain engine's.

With several front-end processes (`server.workers` > 1) each worker's engine is a client of a
core the supervisor launched (`server.engine.shared_core`), made by `Engine.connect`.

LoRA adapters (`server.engine.adapters`, resolved before vLLM is imported) size the engine
(`enable_lora`, `max_lora_rank`, `max_loras`) and become one `LoRARequest` each, built once.
They are loaded when the engine starts, so a broken adapter fails the start (exit 4) rather
than a caller's turn, and no turn waits for an adapter to load. A turn names its adapter (or
none, for the base model) in `generate`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncGenerator
from typing import Any

import vllm
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, SamplingParams, SamplingType
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from server.base.errors import InvalidRequest, Overloaded
from server.base.settings import EngineSettings, Settings
from server.engine.adapters import Adapters
from server.engine.api import Delta, EngineParams

log = logging.getLogger(__name__)

VLLM_VERSION: str = str(vllm.__version__)

try:  # present in the releases that have an engine-side admission queue
    from vllm.exceptions import GracefulHTTPError as _Overflow
except ImportError:  # pragma: no cover - older vLLM
    _Overflow = ()  # type: ignore[assignment,misc]
try:
    from vllm.exceptions import VLLMValidationError as _Invalid
except ImportError:  # pragma: no cover - older vLLM
    _Invalid = ValueError  # type: ignore[assignment,misc]


def _tokens_input(token_ids: list[int]) -> Any:
    """An already-tokenized prompt, in the shape the engine takes without further processing.

    With the `type` key, vLLM (0.32) validates the ids on the event loop and hands them to the
    engine core; without it, the prompt counts as "raw" and goes through the renderer's
    worker thread first, a thread hop per turn. Older releases read the same dict as a
    token prompt (`prompt_token_ids`).
    """
    return {"type": "token", "prompt_token_ids": token_ids}


def engine_args(settings: EngineSettings, adapters: Adapters) -> AsyncEngineArgs:
    named: dict[str, Any] = {
        "model": settings.model,
        "served_model_name": settings.served_name,
        "max_model_len": settings.max_model_len,
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "enable_chunked_prefill": settings.enable_chunked_prefill,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "quantization": settings.quantization,
        "enforce_eager": settings.enforce_eager,
        "trust_remote_code": settings.trust_remote_code,
        "seed": settings.seed,
        "stream_interval": settings.stream_interval,
        "scheduling_policy": settings.scheduling_policy,
    }
    named = {k: v for k, v in named.items() if v is not None}
    named.update(adapters.engine_args(settings.extra))
    clash = set(named) & set(settings.extra)
    if clash:
        raise ValueError(f"engine.extra repeats named settings: {sorted(clash)}")
    return AsyncEngineArgs(**named, **settings.extra)


class Engine:
    """A running engine (`server.engine.api.Engine`). Create with `await Engine.start(...)`."""

    def __init__(self, llm: AsyncLLM, adapters: Adapters) -> None:
        self._llm = llm
        self.adapters = adapters
        self._loras = {
            a.name: LoRARequest(lora_name=a.name, lora_int_id=a.lora_id, lora_path=a.path)
            for a in adapters.distinct
        }
        self.version = VLLM_VERSION
        config = llm.model_config
        self.max_model_len: int = config.max_model_len
        self.max_num_seqs: int = llm.vllm_config.scheduler_config.max_num_seqs
        # Engine cores behind this client (`engine.data_parallel_size`), max_num_seqs each.
        self.data_parallel_size: int = llm.vllm_config.parallel_config.data_parallel_size
        # The checkpoint's generation_config defaults, exactly as vLLM's own server reads them.
        self.generation_defaults: dict[str, Any] = dict(config.get_diff_sampling_param())
        # A seeded sampler gets its own torch.Generator; when its prompt is prefilled in chunks,
        # the model runner rewinds it with `set_offset`, which a CPU generator lacks ("CPU
        # Generator does not use offset", vLLM 0.32): the engine core dies with every call.
        # Without chunked prefill (`engine.enable_chunked_prefill: false`, the CPU configs) no
        # prompt is prefilled in parts, nothing is rewound, and seeds are safe there too.
        chunked = bool(llm.vllm_config.scheduler_config.enable_chunked_prefill)
        self._seed_ok = not (current_platform.is_cpu() and chunked)
        # Priorities are sent only to a priority queue (`engine.scheduling_policy`).
        self._priority = llm.vllm_config.scheduler_config.policy == "priority"

    @classmethod
    async def start(cls, settings: EngineSettings, adapters: Adapters) -> Engine:
        args = engine_args(settings, adapters)
        log.info("starting engine for %s", settings.model)
        # Building the engine blocks for the whole load (seconds to minutes): do it off the
        # event loop so /health and /ready answer 503 meanwhile instead of refusing connections.
        llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args, args, usage_context=UsageContext.OPENAI_API_SERVER
        )
        return await cls._ready(llm, adapters)

    @classmethod
    async def _ready(cls, llm: AsyncLLM, adapters: Adapters) -> Engine:
        """The engine once its client works and its adapters are loaded."""
        try:
            # One engine round trip starts the client's output task on this loop, so an
            # engine failure while idle is noticed at once rather than at the next request.
            await llm.get_supported_tasks()
            engine = cls(llm, adapters)
            await engine._load_adapters()
        except BaseException:
            llm.shutdown()
            raise
        return engine

    async def _load_adapters(self) -> None:
        # Idempotent in the core (a loaded id is skipped), so every worker may ask.
        for lora in self._loras.values():
            try:
                await self._llm.add_lora(lora)
            except Exception as e:
                raise RuntimeError(
                    f"LoRA adapter {lora.lora_name} ({lora.lora_path}) failed to load: {e}"
                ) from e

    @classmethod
    async def connect(
        cls, settings: EngineSettings, adapters: Adapters, client: dict[str, Any]
    ) -> Engine:
        """A worker's client of the engine core that `SharedCore.launch` started.

        `client` is what vLLM's process manager hands each API process: the core's addresses
        (0.32: already bound listeners; 0.26: a pipe to report the address this client binds),
        `client_count` and `client_index`.
        """
        addresses = dict(client)
        count = int(addresses.pop("client_count"))
        index = int(addresses.pop("client_index"))
        addresses.pop("api_server_loads", None)  # 0.32: vLLM's own accept balancing, unused
        args = engine_args(settings, adapters)
        args._api_process_count = count
        args._api_process_rank = index
        config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        log.info("worker %d of %d connecting to the engine core", index, count)
        llm = await asyncio.to_thread(
            AsyncLLM.from_vllm_config,
            vllm_config=config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            disable_log_stats=args.disable_log_stats,
            client_addresses=addresses,
            client_count=count,
            client_index=index,
        )
        return await cls._ready(llm, adapters)

    @property
    def alive(self) -> bool:
        return not self._llm.errored

    def core_lost(self) -> None:
        """The engine core died where this process cannot see it (a worker's core is the
        supervisor's child). Do what vLLM's own monitor does for a core its client owns: mark
        the client dead and shut it down, so every open request fails with `EngineDeadError`
        (its turn ends with the fallback) and `alive` turns False."""
        client = self._llm.engine_core
        if client.resources.engine_dead:
            return
        client.resources.engine_dead = True
        # vLLM runs this from its monitor thread; it may block on socket teardown.
        threading.Thread(target=client.shutdown, name="engine-core-lost", daemon=True).start()

    def num_unfinished(self) -> int:
        # The output processor's count: `AsyncLLM.get_num_unfinished_requests` is 0.32 only.
        processor: Any = self._llm.output_processor
        return int(processor.get_num_unfinished_requests())

    def check_admission(self) -> None:
        """vLLM's own queue limits (if configured), refused before the response starts."""
        check = getattr(self._llm, "check_admission", None)
        if check is None:
            return
        try:
            check()
        except _Overflow as e:
            raise Overloaded(f"engine queue is full: {e}") from None

    def params(self, sampling: dict[str, Any]) -> EngineParams:
        """vLLM's `SamplingParams` for a turn, built while it is planned so that vLLM's own
        validation (e.g. `min_tokens` above the caller's `max_tokens`) is a 400, not an
        in-band failure after the response has started."""
        try:
            params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
        except (_Invalid, ValueError) as e:  # 0.32: VLLMValidationError; 0.26: ValueError
            raise InvalidRequest(str(e)) from None
        if params.sampling_type == SamplingType.RANDOM_SEED and not self._seed_ok:
            raise InvalidRequest(
                "seed is not supported with temperature above 0 on this server's CPU engine "
                "while it prefills in chunks (engine.enable_chunked_prefill); leave seed out, "
                "or set temperature to 0"
            )
        return EngineParams(params)

    async def generate(
        self,
        request_id: str,
        token_ids: list[int],
        params: EngineParams,
        adapter: str | None = None,
        priority: int = 0,
        rank: int | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """Stream the turn's deltas, from the base model or through `adapter` (an
        `Adapter.name`), at `priority` in the queue (lower first; with `scheduling_policy:
        fcfs` vLLM ignores it), on engine core `rank` (data parallel; None: vLLM's balancer
        chooses). Closing or cancelling the iterator aborts the request (vLLM sends the abort
        to the core that has it)."""
        assert isinstance(params, SamplingParams)
        lora = None if adapter is None else self._loras[adapter]
        prompt = _tokens_input(token_ids)
        if not self._priority:
            priority = 0
        try:
            async for out in self._llm.generate(
                prompt,
                params,
                request_id,
                lora_request=lora,
                priority=priority,
                data_parallel_rank=rank,
            ):
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

    async def warm(self, token_ids: list[int], adapter: str | None, priority: int) -> int:
        """Prefill `token_ids` once, one greedy token generated and dropped, so that the prefix
        cache holds their blocks (start-up warming, `server.serving.warming`); the prompt tokens
        that were cached already (the fewest of any core). With data parallelism each engine
        core has a cache of its own: one run per rank, named."""
        params = SamplingParams(
            max_tokens=1, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY
        )
        ranks = self.data_parallel_size
        cached = []
        for rank in range(ranks):
            request_id, last = f"warm-{secrets.token_hex(8)}", 0
            async for delta in self.generate(
                request_id,
                token_ids,
                EngineParams(params),
                adapter,
                priority,
                rank if ranks > 1 else None,
            ):
                last = delta.cached_tokens
            cached.append(last)
        return min(cached)

    async def abort(self, request_id: str) -> None:
        """Abort a request; idempotent, and shielded so a cancelled caller still sends it."""
        if self._llm.errored:
            return
        await asyncio.shield(self._llm.abort(request_id))

    def stop(self) -> None:
        self._llm.shutdown()


async def start_engine(settings: Settings, adapters: Adapters) -> Engine:
    """The default engine factory, handed to the app by `python -m server`: this process's own
    engine (with several workers, each connects to the shared core instead)."""
    return await Engine.start(settings.engine, adapters)
