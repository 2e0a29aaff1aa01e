"""Our Prometheus metrics, declared once, on a registry handed to the app factory.

Labels stay bounded: `model` is a configured alias (`ModelsSettings.alias_for`: unknown names
map to the default), `outcome` is an `Outcome`. A turn's `session_id` rides along as an
OpenMetrics exemplar on the TTFT observation, so a slow bucket leads to the call's log line
without becoming a label.
vLLM's own `vllm:` metrics live in the default registry; `/metrics` serves both.

With several front-end processes (`server.workers` > 1) every process writes its values to
files in `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode, as `vllm serve
--api-server-count` does), and `/metrics`, whichever worker answers, renders the exact sums over
all of them, vLLM's metrics included. Gauges say how they combine (`multiprocess_mode`).
prometheus-client keeps no exemplars in that mode; the answering worker adds its own latest
TTFT exemplar per bucket (`ExemplarStore`), so a slow bucket still leads to a real call, one
worker's at a time.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from functools import partial

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, openmetrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from server.base.outcomes import Outcome
from server.serving.calls import UNCLASSIFIED, CallClass
from server.serving.hangup import HangupOutcome
from server.serving.placement import Affinity

# Dense where callers notice (tens of ms to about a second), sparse up to ten seconds.
TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
# The share of a turn's prompt served from the prefix cache: 0 (nothing, a cold prefix) apart.
CACHED_SHARE_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
# A call's turn index (its user turns, `calls.user_turns`) as a bounded label.
TURN_INDEX_LABELS = ("1", "2", "3-5", "6+")
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)

# OpenMetrics caps an exemplar's label set at 128 characters.
EXEMPLAR_MAX = 100
TTFT_NAME = "callgate_time_to_first_token_seconds"


def multiprocess() -> bool:
    """Whether this process shares its metrics through files (several front-end workers)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ExemplarStore:
    """The latest TTFT exemplar per (model, bucket) of this process, for multiprocess mode."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], Exemplar] = {}

    def add(self, model: str, seconds: float, labels: dict[str, str]) -> None:
        le = next((b for b in TTFT_BUCKETS if seconds <= b), float("inf"))
        key = (model, floatToGoString(le))  # type: ignore[no-untyped-call]
        self._latest[key] = Exemplar(labels, seconds, time.time())

    def attach(self, families: Iterable[Metric]) -> Iterable[Metric]:
        for family in families:
            if family.name == TTFT_NAME and self._latest:
                family.samples = [
                    s._replace(exemplar=self._latest.get((s.labels["model"], s.labels["le"])))
                    if s.name.endswith("_bucket")
                    else s
                    for s in family.samples
                ]
            yield family


class _Combined:
    """All workers' metric files, with this worker's exemplars: a collector for one scrape."""

    def __init__(self, exemplars: ExemplarStore) -> None:
        self._files = MultiProcessCollector(None)  # type: ignore[no-untyped-call]
        self._exemplars = exemplars

    def collect(self) -> Iterable[Metric]:
        return self._exemplars.attach(self._files.collect())  # type: ignore[no-untyped-call]


class _Live:
    """Values read at scrape time from state that every worker shares, not from files."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        room = self._metrics.new_call_room
        if room is not None:
            yield GaugeMetricFamily(
                "callgate_new_call_slots",
                "First turns of new calls that would be admitted now (limits.new_call_max_in_flight"
                " less the turns in flight, server-wide).",
                value=room(),
            )


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ttft = Histogram(
            "callgate_time_to_first_token_seconds",
            "Request arrival to the first chunk of the answer's content handed to the transport "
            "(a filler said while the answer was late is not the answer).",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.first_clause = Histogram(
            "callgate_time_to_first_clause_seconds",
            "Request arrival to the end of the answer's first clause handed to the transport "
            "(after the thinking and speech filters; a filler is not the answer): when a "
            "clause-by-clause voice can start. A reply without clause punctuation counts at its "
            "end.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.cached_share = Histogram(
            "callgate_prompt_cached_share",
            "Share of a turn's prompt tokens served from the prefix cache, by the turn's index "
            "in its call (user turns in its dialog: 1, 2, 3-5, 6+).",
            ["model", "turn"],
            buckets=CACHED_SHARE_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "callgate_inter_token_latency_seconds",
            "Gap between consecutive content chunks of a turn.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "callgate_e2e_request_latency_seconds",
            "Request arrival to the end of the turn's response.",
            ["model"],
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "callgate_requests",
            "Requests by outcome; every request is counted exactly once.",
            ["model", "outcome"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "callgate_requests_in_flight",
            "Admitted turns not yet finished.",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.prompt_tokens = Counter(
            "callgate_prompt_tokens", "Prompt tokens of served turns.", ["model"], registry=registry
        )
        self.output_tokens = Counter(
            "callgate_output_tokens", "Tokens streamed to callers.", ["model"], registry=registry
        )
        self.cached_tokens = Counter(
            "callgate_cached_prompt_tokens",
            "Prompt tokens served from vLLM's prefix cache.",
            ["model"],
            registry=registry,
        )
        self.engine_up = Gauge(
            "callgate_engine_up",
            "1 while the engine is alive and loaded (in every front-end worker).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.info = Gauge(
            "callgate_info",
            "What runs: callgate's version, vLLM's version, the number of front-end workers.",
            ["version", "vllm_version", "workers"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.hangups = Counter(
            "callgate_hangups",
            "Calls the model ended (end_call), by what became of their HangupOperate request: "
            "sent, rejected, failed, no_session, not_configured, duplicate, cancelled.",
            ["model", "outcome"],
            registry=registry,
        )
        self.admissions = Counter(
            "callgate_admissions",
            "Admission decisions by the kind of turn: the first turn of a call or one of a call "
            "in progress (unclassified: refused at the total limit, before the body was parsed).",
            ["call", "decision"],
            registry=registry,
        )
        self.engine_turns = Counter(
            "callgate_engine_turns",
            "Turns by the engine core that served them (engine.data_parallel_size > 1) and how "
            "it was chosen: new (a call's first turn, or one whose core is not known: the least "
            "busy core), held (the core that served the call's last turn), released (that core "
            "was much busier than the least busy one: the call moved), balancer "
            "(call_affinity off: vLLM's balancer chose, engine any).",
            ["engine", "affinity"],
            registry=registry,
        )
        self.engine_in_flight = Gauge(
            "callgate_engine_turns_in_flight",
            "Turns in flight per engine core, as callgate placed them (data parallel, "
            "call_affinity on).",
            ["engine"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        # How many first turns could be admitted now: read from the server-wide count at each
        # scrape (`Admission.new_call_room`, set by the switchboard once the engine is up).
        self.new_call_room: Callable[[], int] | None = None
        registry.register(_Live(self))  # type: ignore[arg-type]
        self.exemplars = ExemplarStore() if multiprocess() else None
        self._scrape_lock = asyncio.Lock()

    def declare_engines(self, ranks: int, affinity: bool) -> None:
        """With several engine cores: their label combinations, as zeros."""
        if not affinity:
            self.engine_turns.labels("any", Affinity.BALANCER)
            return
        for rank in map(str, range(ranks)):
            self.engine_in_flight.labels(rank)
            for how in (Affinity.NEW, Affinity.HELD, Affinity.RELEASED):
                self.engine_turns.labels(rank, how)

    def declare(self, models: list[str]) -> None:
        """Create every label combination up front so dashboards see zeros, not gaps."""
        for call in (*CallClass, UNCLASSIFIED):
            for decision in ("admitted", "refused"):
                if call != UNCLASSIFIED or decision == "refused":
                    self.admissions.labels(call, decision)
        for model in models:
            for outcome in Outcome:
                self.requests.labels(model, outcome)
            for metric in (self.ttft, self.first_clause, self.itl, self.e2e, self.in_flight):
                metric.labels(model)
            for turn in TURN_INDEX_LABELS:
                self.cached_share.labels(model, turn)
            for counter in (self.prompt_tokens, self.output_tokens, self.cached_tokens):
                counter.labels(model)
            for hangup in HangupOutcome:
                self.hangups.labels(model, hangup)

    def count_hangup(self, model: str, outcome: HangupOutcome) -> None:
        self.hangups.labels(model, outcome).inc()

    def observe_ttft(self, model: str, seconds: float, session_id: str | None) -> None:
        exemplar = {"session_id": session_id[:EXEMPLAR_MAX]} if session_id else None
        self.ttft.labels(model).observe(seconds, exemplar)
        if exemplar is not None and self.exemplars is not None:
            self.exemplars.add(model, seconds, exemplar)

    def observe_first_clause(self, model: str, seconds: float) -> None:
        self.first_clause.labels(model).observe(seconds)

    def observe_cached_share(self, model: str, turn: int, prompt: int, cached: int) -> None:
        """A finished turn's prefix-cache share, by its index in the call (`turn_label`)."""
        if prompt > 0:
            self.cached_share.labels(model, turn_label(turn)).observe(cached / prompt)

    async def scrape(self, accept: str) -> tuple[bytes, str]:
        """`/metrics` off the event loop: with several workers a scrape reads and merges every
        worker's files, milliseconds to tens of milliseconds that no streaming turn should wait
        behind. One scrape at a time, so a flood of scrapes queues here rather than filling the
        thread pool."""
        async with self._scrape_lock:
            return await asyncio.to_thread(self.render, accept)

    def render(self, accept: str) -> tuple[bytes, str]:
        """`/metrics`: this process's registry and vLLM's, or every worker's files."""
        if self.exemplars is None:
            return exposition(accept, self.registry, REGISTRY)
        combined = CollectorRegistry()
        combined.register(_Combined(self.exemplars))  # type: ignore[arg-type]
        combined.register(_Live(self))  # type: ignore[arg-type]
        return exposition(accept, combined)


def turn_label(turn: int) -> str:
    """A call's turn index as one of `TURN_INDEX_LABELS`: 1, 2, 3-5, 6+."""
    if turn <= 2:
        return "1" if turn <= 1 else "2"
    return "3-5" if turn <= 5 else "6+"


def exposition(accept: str, *registries: CollectorRegistry) -> tuple[bytes, str]:
    """Render registries in the format the scraper asked for, as one document.

    OpenMetrics is written with UTF-8 name escaping allowed: every name here is a valid
    classic name, and vLLM's `vllm:` names keep their colons instead of being rewritten to
    `vllm_...` (which Prometheus 2 would store under names no dashboard queries).
    """
    encoder, content_type = choose_encoder(accept)
    openmetrics_format = content_type.startswith("application/openmetrics-text")
    if openmetrics_format:
        encoder = partial(om_exposition.generate_latest, escaping=om_exposition.ALLOWUTF8)
        content_type = openmetrics.exposition.CONTENT_TYPE_LATEST
    parts = [encoder(r) for r in registries]
    if openmetrics_format:  # one `# EOF`, at the very end
        parts = [p.removesuffix(b"# EOF\n") for p in parts[:-1]] + parts[-1:]
    return b"".join(parts), content_type
