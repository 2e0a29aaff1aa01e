"""What Grafana and KEDA query is on a real server's /metrics: the one deployment check that starts
a server (the suite's shared one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from tests.tools.deploy.files import (
    K8S,
    PROMETHEUS_SYNTHETIC,
    SEVERAL_CORES_ONLY,
    dashboard_exprs,
    grafana_to_promql,
    metric_names,
)
from tests.wire import samples, scrape

if TYPE_CHECKING:
    from tests.conftest import ServerHandle

# What scrapers send: plain text (the EPP, curl), OpenMetrics as Prometheus 2.x asks for it
# (no escaping parameter) and as Prometheus 3.x asks for it.
SCRAPER_ACCEPT = {
    "text": "text/plain;version=0.0.4",
    "openmetrics (Prometheus 2)": "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "openmetrics (Prometheus 3)": "application/openmetrics-text;version=1.0.0;"
    "escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
}


def test_metrics_used_by_deploy_are_exported_by_server(server: ServerHandle) -> None:
    """What Grafana and KEDA query must be on a real server's /metrics, whatever the format.

    Samples are taken by their own names (`tests/wire/metrics.py` reads sample lines, not
    families), so that a sample whose name differs from its family's, e.g.
    `vllm_kv_cache_usage_perc` under `# TYPE vllm:kv_cache_usage_perc`, counts as missing: that
    is what Prometheus stores and the queries would not find.
    """
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names(grafana_to_promql(expr))
    scaled = yaml.safe_load((K8S / "keda-scaledobject.yaml").read_text())
    for trigger in scaled["spec"]["triggers"]:
        used |= metric_names(trigger["metadata"]["query"])
    used -= PROMETHEUS_SYNTHETIC | SEVERAL_CORES_ONLY  # the shared server has one engine core
    problems = {}
    for scraper, accept in SCRAPER_ACCEPT.items():
        exposed = {name for name, _, _ in samples(scrape(server, Accept=accept))}
        if used - exposed:
            problems[scraper] = sorted(used - exposed)
    assert not problems, f"queried but not on /metrics as sample names: {problems}"
