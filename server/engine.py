"""The only module that imports vLLM: an `AsyncLLM` behind start, generate, abort, health, stop.

Kept to calls that exist from vLLM 0.26 through 0.33 (`AsyncLLM.from_engine_args`,
`generate` with a token-ids prompt and a `LoRARequest`, `add_lora`, `abort`, `errored`,
`shutdown`), so the GPU image can move within that range without touching the rest of the
server. The engine is built with the same
usage context as vLLM's own OpenAI server, whose defaults (e.g. `max_num_seqs`) differ from the
plain engine's.

Several front-end processes on one engine core (`server.workers` > 1) use the mechanism of
`vllm serve --api-server-count`: `SharedCore.launch` in the supervisor builds the engine config,
launches the engine core and starts the workers through vLLM's `APIServerProcessManager`; each
worker connects with `Engine.connect`. Those are private vLLM calls whose signatures changed
between 0.26 and 0.32; every difference is handled here.

LoRA adapters (`server.adapters`, resolved before vLLM is imported) size the engine
(`enable_lora`, `max_lora_rank`, `max_loras`) and become one `LoRARequest` each, built once.
They are loaded when the engine starts, so a broken adapter fails the start (exit 4) rather
than a caller's turn, and no turn waits for an adapter to load. A turn names its adapter (or
none, for the base model) in `generate`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from multiprocessing.process import BaseProcess
from typing import Any

import vllm
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, SamplingParams, SamplingType
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from server.adapters import Adapters
from server.engine_api import Delta, EngineParams
from server.errors import InvalidRequest, Overloaded
from server.settings import EngineSettings

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
        "tensor_parallel_size": settings.tensor_parallel_size,
        "quantization": settings.quantization,
        "enforce_eager": settings.enforce_eager,
        "trust_remote_code": settings.trust_remote_code,
        "seed": settings.seed,
        "stream_interval": settings.stream_interval,
    }
    named = {k: v for k, v in named.items() if v is not None}
    named.update(adapters.engine_args(settings.extra))
    clash = set(named) & set(settings.extra)
    if clash:
        raise ValueError(f"engine.extra repeats named settings: {sorted(clash)}")
    return AsyncEngineArgs(**named, **settings.extra)


class Engine:
    """A running engine (`server.engine_api.Engine`). Create with `await Engine.start(...)`."""

    def __init__(self, llm: AsyncLLM, adapters: Adapters) -> None:
        self._llm = llm
        self.adapters = adapters
        self._loras = {
            a.name: LoRARequest(lora_name=a.name, lora_int_id=a.lora_id, lora_path=a.path)
            for a in adapters.distinct
        }
        config = llm.model_config
        self.max_model_len: int = config.max_model_len
        self.max_num_seqs: int = llm.vllm_config.scheduler_config.max_num_seqs
        # The checkpoint's generation_config defaults, exactly as vLLM's own server reads them.
        self.generation_defaults: dict[str, Any] = dict(config.get_diff_sampling_param())
        # A seeded sampler gets its own torch.Generator; when its prompt is prefilled in chunks,
        # the model runner rewinds it with `set_offset`, which a CPU generator lacks ("CPU
        # Generator does not use offset", vLLM 0.32): the engine core dies with every call.
        self._seed_ok = not current_platform.is_cpu()

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
                "seed is not supported with temperature above 0 on this server's CPU engine; "
                "leave seed out, or set temperature to 0"
            )
        return EngineParams(params)

    async def generate(
        self,
        request_id: str,
        token_ids: list[int],
        params: EngineParams,
        adapter: str | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """Stream the turn's deltas, from the base model or through `adapter` (an
        `Adapter.name`). Closing or cancelling the iterator aborts the request."""
        assert isinstance(params, SamplingParams)
        lora = None if adapter is None else self._loras[adapter]
        prompt = _tokens_input(token_ids)
        try:
            async for out in self._llm.generate(prompt, params, request_id, lora_request=lora):
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


WorkerTarget = Callable[[str, Any, Any, dict[str, Any]], None]


class SharedCore:
    """One engine core and the N front-end worker processes that share it.

    `launch` blocks until the engine core has loaded the model and every worker has connected
    (vLLM's start-up handshake). The workers are started through vLLM's
    `APIServerProcessManager` (`on_started` gets their processes) with our own target:
    `target(listen_address, sockets, payload, client)` runs in each, with `client` for
    `Engine.connect`.
    """

    def __init__(
        self, engine_manager: Any, coordinator: Any, api_manager: Any, listeners: Any = None
    ) -> None:
        self._engines = engine_manager
        self._coordinator = coordinator
        self._api = api_manager
        # 0.32: the ZMQ listeners the supervisor bound for the workers. They must live as long
        # as the server: when collected, vLLM's `EngineZmqListeners.__del__` unlinks their IPC
        # socket files, and an engine core whose output side has not connected yet then never
        # can (its client waits forever for the core's first message: a stalled start). `vllm
        # serve --api-server-count` holds them for its whole run too.
        self._listeners = listeners

    @property
    def engine_processes(self) -> list[BaseProcess]:
        return list(self._engines.processes) if self._engines is not None else []

    @classmethod
    def launch(
        cls,
        settings: EngineSettings,
        adapters: Adapters,
        workers: int,
        target: WorkerTarget,
        listen_address: str,
        sockets: Any,
        payload: Any,
        on_started: Callable[[list[BaseProcess]], None],
    ) -> SharedCore:
        from vllm.v1.engine import utils
        from vllm.v1.executor import Executor
        from vllm.v1.utils import APIServerProcessManager

        args = engine_args(settings, adapters)
        args._api_process_count = workers
        args._api_process_rank = -1
        config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        executor = Executor.get_class(config)
        log_stats = not args.disable_log_stats
        # Typed loosely on purpose: these signatures differ between the releases we support.
        engine_utils: Any = utils
        launch_core_engines: Any = utils.launch_core_engines

        def start(stats: str | None, tensor_queue: Any, **where: Any) -> Any:
            manager = APIServerProcessManager(
                listen_address=listen_address,
                sock=sockets,
                args=payload,
                num_servers=workers,
                target_server_fn=target,
                stats_update_address=stats,
                tensor_queue=tensor_queue,
                **where,
            )
            on_started(list(manager.processes))
            return manager

        if hasattr(engine_utils, "bind_engine_zmq_listeners"):  # 0.32: listeners bound here
            listeners = engine_utils.bind_engine_zmq_listeners(config, workers)
            with launch_core_engines(config, executor, log_stats, listeners.addresses) as up:
                stats = up.coordinator.get_stats_publish_address() if up.coordinator else None
                api = start(
                    stats,
                    up.tensor_queue,
                    input_listeners=listeners.inputs,
                    output_listeners=listeners.outputs,
                )
                up.watched_frontend_processes = api.processes
            return cls(up.engine_manager, up.coordinator, api, listeners)
        # 0.26: each client binds its own address and reports it before the handshake.
        addresses = engine_utils.get_engine_zmq_addresses(
            config, workers, defer_api_server_ports=True
        )
        with launch_core_engines(config, executor, log_stats, addresses, workers) as (
            engines,
            coordinator,
            addresses,
            tensor_queue,
        ):
            stats = coordinator.get_stats_publish_address() if coordinator else None
            api = start(
                stats,
                tensor_queue,
                input_addresses=addresses.inputs,
                output_addresses=addresses.outputs,
            )
            addresses.inputs, addresses.outputs = api.gather_actual_addresses()
        return cls(engines, coordinator, api)

    def engine_alive(self) -> bool:
        return all(p.exitcode is None for p in self.engine_processes)

    def shutdown(self, timeout: float) -> None:
        """Stop the workers that are left, then the engine core (and the DP coordinator)."""
        self._api.shutdown(timeout=timeout)
        if self._engines is not None:
            self._engines.shutdown(timeout=timeout)
        if self._coordinator is not None:
            self._coordinator.shutdown(timeout=timeout)
        if self._listeners is not None:
            self._listeners.cleanup()
            self._listeners = None
