"""Our Prometheus metrics, declared once, on a registry handed to the app factory.

Labels stay bounded: `model` is a configured alias (unknown request names map to the default),
`outcome` is one of `OUTCOMES`. A turn's `session_id` rides along as an OpenMetrics exemplar on
the TTFT observation, so a slow bucket leads to the call's log line without becoming a label.
vLLM's own `vllm:` metrics live in the default registry; `/metrics` serves both.
"""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, openmetrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as om_exposition

OUTCOMES = (
    "stop",
    "length",
    "client_gone",
    "deadline",
    "error",
    "rejected",
    "invalid",
    "unauthorized",
    "draining",
)

# Dense where callers notice (tens of ms to about a second), sparse up to ten seconds.
TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)

# OpenMetrics caps an exemplar's label set at 128 characters.
EXEMPLAR_MAX = 100


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ttft = Histogram(
            "callgate_time_to_first_token_seconds",
            "Request arrival to the first chunk with content handed to the transport.",
            ["model"],
            buckets=TTFT_BUCKETS,
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
            "callgate_engine_up", "1 while the engine is alive and loaded.", registry=registry
        )

    def declare(self, models: list[str]) -> None:
        """Create every label combination up front so dashboards see zeros, not gaps."""
        for model in models:
            for outcome in OUTCOMES:
                self.requests.labels(model, outcome)
            for metric in (self.ttft, self.itl, self.e2e, self.in_flight):
                metric.labels(model)
            for counter in (self.prompt_tokens, self.output_tokens, self.cached_tokens):
                counter.labels(model)

    def observe_ttft(self, model: str, seconds: float, session_id: str | None) -> None:
        exemplar = {"session_id": session_id[:EXEMPLAR_MAX]} if session_id else None
        self.ttft.labels(model).observe(seconds, exemplar)


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
