"""The runtime's background tasks (loader, watchdog) may not die quietly: a watchdog that
crashed on vLLM 0.26 (`get_num_unfinished_requests` is 0.32 only) left the server running with
nobody watching its engine. A failed task logs its traceback and ends the process with 7."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.base.exits import EXIT_INTERNAL
from server.base.settings import Settings
from server.serving.lifecycle import Runtime
from server.serving.metrics import Metrics


async def _no_engine(settings: Settings, adapters: object) -> Any:
    raise AssertionError("these tests start no engine")


def _runtime() -> tuple[Runtime, list[str]]:
    runtime = Runtime(Settings(), Metrics(CollectorRegistry()), _no_engine)
    asked: list[str] = []
    runtime.request_exit = lambda: asked.append("exit")
    return runtime, asked


def test_a_failed_background_task_exits_7_with_its_traceback(caplog) -> None:
    async def scenario() -> Runtime:
        runtime, asked = _runtime()

        async def broken() -> None:
            raise AttributeError("no such engine method")

        runtime._spawn(broken())
        await asyncio.sleep(0.05)
        assert asked == ["exit"]
        return runtime

    with caplog.at_level(logging.CRITICAL, logger="callgate"):
        runtime = asyncio.run(scenario())
    assert runtime.exit_code == EXIT_INTERNAL == 7
    assert runtime.state == "dead"
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.exc_info and "no such engine method" in str(record.exc_info[1])


@pytest.mark.parametrize("ending", ["returns", "is cancelled"])
def test_a_task_that_ends_normally_or_is_cancelled_changes_nothing(ending: str) -> None:
    async def scenario() -> Runtime:
        runtime, asked = _runtime()

        async def idle() -> None:
            await asyncio.sleep(0 if ending == "returns" else 10)

        runtime._spawn(idle())
        await asyncio.sleep(0.01)
        for task in list(runtime._tasks):
            task.cancel()
        await asyncio.sleep(0.01)
        assert asked == []
        return runtime

    runtime = asyncio.run(scenario())
    assert runtime.exit_code == 0 and runtime.state == "loading" and not runtime._tasks
