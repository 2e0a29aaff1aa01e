"""Prometheus and Grafana: the scrape reaches the admin port over the compose network, Grafana is
provisioned, and the dashboard's queries parse, name exported metrics and cover what operators
need.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.tools.deploy.files import (
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    DEPLOY,
    dashboard_exprs,
    dockerfile,
    grafana_to_promql,
    metric_names,
    need_tool,
    promtool_check,
    published_port,
    run,
)


def test_prometheus_config_is_valid() -> None:
    run(need_tool("promtool"), "check", "config", "deploy/prometheus.yml")


def test_prometheus_scrapes_the_compose_server(
    compose: dict[str, Any], gpu_config: dict[str, Any]
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "callgate"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"]
    # /metrics lives only on the admin port, reached over the compose network, never published.
    admin_port = gpu_config["server"]["admin_port"]
    assert int(port) == admin_port != gpu_config["server"]["port"]
    assert all(
        str(admin_port) not in published_port(p)[1:]
        for service in compose["services"].values()
        for p in service.get("ports", [])
    )
    assert str(admin_port) not in " ".join(dockerfile("EXPOSE")), "docker run -P would publish it"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert (
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (compose["services"]["prometheus"]["volumes"])
    )


def test_grafana_is_provisioned(compose: dict[str, Any]) -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if p.get("type") != "row"} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p.get("targets", [])
    }
    assert uids == {source["uid"]}


def test_dashboard_layout() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    promtool_check([grafana_to_promql(e) for e in dashboard_exprs()], tmp_path)


def test_dashboard_queries_name_exported_metrics(known_metrics: set[str]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names(grafana_to_promql(expr))
    for var in dash["templating"]["list"]:
        used |= set(re.findall(r"label_values\((\w+)", var["definition"]))
    unknown = used - known_metrics
    assert not unknown, f"dashboard queries name metrics nobody exports: {sorted(unknown)}"


def test_dashboard_covers_what_operators_need() -> None:
    exprs = dashboard_exprs()

    def has(pred: Callable[[str], bool]) -> bool:
        return any(pred(e) for e in exprs)

    ttft = [e for e in exprs if "callgate_time_to_first_token_seconds_bucket" in e]
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}, sum by (le, model)" in e for e in ttft), q
    # What callers hear first: the first clause beside TTFT, the cache share by turn index.
    clause = [e for e in exprs if "callgate_time_to_first_clause_seconds_bucket" in e]
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}, sum by (le, model)" in e for e in clause), q
    assert has(lambda e: "callgate_prompt_cached_share_sum" in e and "by (turn)" in e)
    assert has(lambda e: "callgate_requests_total" in e and "by (outcome)" in e)
    assert has(lambda e: "callgate_requests_in_flight" in e)
    assert has(lambda e: "callgate_output_tokens_total" in e)
    assert has(lambda e: "vllm:kv_cache_usage_perc" in e)
    assert has(lambda e: "vllm:prefix_cache_hits_total" in e and "prefix_cache_queries" in e)
    assert has(lambda e: "callgate_engine_up" in e)
    # Calls first: admissions by kind of turn, and the room left for new calls.
    assert has(lambda e: "callgate_admissions_total" in e and "by (call, decision)" in e)
    assert has(lambda e: "callgate_new_call_slots" in e)
    assert has(lambda e: "callgate_hangups_total" in e and "by (outcome)" in e)
    # Several engine cores: which core served each turn and why, its load, its cache hits.
    assert has(lambda e: "callgate_engine_turns_total" in e and "by (engine, affinity)" in e)
    assert has(lambda e: "callgate_engine_turns_in_flight" in e and "by (engine)" in e)
    assert has(lambda e: "vllm:prefix_cache_hits_total" in e and "by (engine)" in e)
