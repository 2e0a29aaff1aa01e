"""One engine core and the front-end worker processes that share it (`server.workers` > 1).

The mechanism of `vllm serve --api-server-count`: `SharedCore.launch` in the supervisor builds the
engine config, binds the engine's ZMQ listeners, launches the engine core and starts the workers
through vLLM's `APIServerProcessManager`; each worker connects with
`server.engine.vllm_adapter.Engine.connect`. Those are private vLLM calls whose signatures changed
between 0.26 and 0.32; every difference is handled here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from vllm.usage.usage_lib import UsageContext

from server.base.settings import EngineSettings
from server.engine.adapters import Adapters
from server.engine.vllm_adapter import engine_args

log = logging.getLogger(__name__)

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
