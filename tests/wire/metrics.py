"""The suite's one reader of `/metrics`: samples of a Prometheus text exposition, the engine's
and the gateway's load, outcome counts, and polling until a condition holds.

A line-level parser on purpose: `prometheus_client.parser` walks the text a character at a time,
and vLLM's exposition is large; under load that starved the tests' event loop. It reads both
exposition formats (an OpenMetrics exemplar after a sample is skipped), and reports each sample
by the name Prometheus stores, which is what dashboards and scalers query.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.conftest import ServerHandle

# How long a test waits for the engine and the gateway to show idle in a scrape. Generous: on a
# two-core machine a scrape alone can take seconds while the engine works. How fast an abort
# really is, is measured from the server's own log (`tests/wire/logs.py`, ABORT_WITHIN_S).
IDLE_WITHIN_S = 10.0

# name, then labels in braces (quoted values may hold braces), then the value.
_SAMPLE = re.compile(r'([A-Za-z_:][A-Za-z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample in a Prometheus or OpenMetrics text exposition."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            yield name, dict(_LABEL.findall(labels or "")), float(value)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    return sum(
        value
        for sample, found, value in samples(text)
        if sample == name and all(found.get(k) == v for k, v in labels.items())
    )


def scrape(handle: ServerHandle, **headers: str) -> str:
    """`GET /metrics` (on the admin port when the server has one), with the auth code."""
    response = httpx.get(
        handle.metrics_url, headers={"Authorization": handle.auth, **headers}, timeout=30.0
    )
    assert response.status_code == 200, response.text
    return response.text


async def scrape_async(handle: ServerHandle, client: httpx.AsyncClient) -> str:
    """`scrape` for code running on an event loop: no thread, so no fight for the GIL."""
    response = await client.get(handle.metrics_url, headers={"Authorization": handle.auth})
    assert response.status_code == 200, response.text
    return response.text


@dataclass(frozen=True)
class Load:
    """What the engine and the gateway are holding right now."""

    running: float  # vllm:num_requests_running
    waiting: float  # vllm:num_requests_waiting
    in_flight: float  # callgate_requests_in_flight

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0 and self.in_flight == 0


def load_of(text: str) -> Load:
    """The load a scrape shows."""
    return Load(
        metric(text, "vllm:num_requests_running"),
        metric(text, "vllm:num_requests_waiting"),
        metric(text, "callgate_requests_in_flight"),
    )


def load(handle: ServerHandle) -> Load:
    return load_of(scrape(handle))


async def load_async(handle: ServerHandle, client: httpx.AsyncClient) -> Load:
    return load_of(await scrape_async(handle, client))


def outcomes(handle: ServerHandle) -> dict[str, float]:
    """`callgate_requests_total` by outcome, summed over models."""
    counts: dict[str, float] = {}
    for name, labels, value in samples(scrape(handle)):
        if name == "callgate_requests_total":
            counts[labels["outcome"]] = counts.get(labels["outcome"], 0.0) + value
    return counts


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Outcomes that changed between two `outcomes()` readings."""
    keys = set(after) | set(before)
    changed = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in changed.items() if v}


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def wait_idle(handle: ServerHandle, within_s: float = IDLE_WITHIN_S) -> Load:
    """The load once idle, or the last reading after `within_s` (assert `.idle` on it)."""
    last = load(handle)
    deadline = time.monotonic() + within_s
    while not last.idle and time.monotonic() < deadline:
        time.sleep(0.1)
        last = load(handle)
    return last
