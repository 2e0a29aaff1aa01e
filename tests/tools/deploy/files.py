"""What the deployment checks read: the paths, the metric names the server exports, and readers
of the files (Dockerfile, compose with its .env, Grafana's dashboard, PromQL, the Kubernetes
objects kustomize applies), each small and strict.

External validators (docker-compose, promtool, caddy, kubectl) and the Python packages some
checks need run when installed: `need_tool`, `need_module`. With CALLGATE_REQUIRE_DEPLOY_TOOLS=1
(CI and deploy/check.sh) a missing one fails instead of skipping; CI installs kubectl from
Debian (kubernetes-client).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "callgate.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "callgate.yml"
# The server's own metrics (server/serving/metrics.py) as exposed on /metrics, with their types.
CALLGATE_METRICS = {
    "callgate_time_to_first_token_seconds": "histogram",
    "callgate_time_to_first_clause_seconds": "histogram",
    "callgate_prompt_cached_share": "histogram",
    "callgate_inter_token_latency_seconds": "histogram",
    "callgate_e2e_request_latency_seconds": "histogram",
    "callgate_requests_total": "counter",
    "callgate_requests_in_flight": "gauge",
    "callgate_prompt_tokens_total": "counter",
    "callgate_output_tokens_total": "counter",
    "callgate_cached_prompt_tokens_total": "counter",
    "callgate_engine_up": "gauge",
    "callgate_admissions_total": "counter",
    "callgate_new_call_slots": "gauge",
    "callgate_hangups_total": "counter",
    "callgate_engine_turns_total": "counter",
    "callgate_engine_turns_in_flight": "gauge",
}
# Exported only by a server with several engine cores (`engine.data_parallel_size` > 1, labelled by
# core): tests/reliability/test_data_parallel.py reads them on its server; a one-core server has
# no core to label.
SEVERAL_CORES_ONLY = {
    "callgate_engine_turns_total",
    "callgate_engine_turns_created",
    "callgate_engine_turns_in_flight",
}
PROMETHEUS_SYNTHETIC = {"up"}  # series Prometheus itself writes for every scrape target
CONFIG_PATH_IN_IMAGE = "/etc/callgate/gpu.yaml"
HANDLER_PATHS = {"/", "/chat/completions", "/v1/chat/completions"}
# Never for the internet: what a public proxy must not pass to the server.
INTERNAL_PATHS = ("/metrics", "/openapi.json", "/redoc", "/docs", "/health", "/ready")


# -- tools --------------------------------------------------------------------------------------


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} not installed (Debian: docker-compose, prometheus, caddy, kubernetes-client)"
        )
        if os.environ.get("CALLGATE_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def need_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        message = f"python package {name} not installed ({e}); it is in the dev extras"
        if os.environ.get("CALLGATE_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def run(
    *cmd: str, env: dict[str, str] | None = None, unset: Iterable[str] = ()
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in set(unset)}
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


# -- file readers -------------------------------------------------------------------------------


def seconds(duration: str | int | float) -> float:
    """'40s', '15m', '1h30m', 45 -> seconds (the Go/compose duration subset we use)."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error}; an unset required var fails."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if op == ":-":
            return env.get(name) or arg
        assert name in env, f"${{{name}}} is not set in .env.example"
        if op == ":?":
            assert env[name], f"${{{name}}} is required but empty in .env.example"
        return env[name]

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, text)


def published_port(port: str | dict[str, Any]) -> tuple[str, str, str]:
    """(host address, published port, container port) of a compose `ports` entry, in short or
    long syntax (docker-compose config prints either); host address "" means every interface."""
    if isinstance(port, dict):
        host = str(port.get("host_ip", ""))
        return host, str(port.get("published", "")), str(port["target"])
    parts = str(port).split("/")[0].rsplit(":", 2)
    host, published, target = ["", "", *parts][-3:]
    return host, published, target


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        op, _, args = full.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def dockerfile(op: str) -> list[str]:
    return [args for name, args in dockerfile_instructions() if name == op]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in dockerfile("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", args):
            env[key] = value
    return env


# -- metrics and queries ------------------------------------------------------------------------


def exposed_names(families: dict[str, str]) -> set[str]:
    """Sample names Prometheus stores for metric families (prometheus_client conventions)."""
    names: set[str] = set()
    for name, kind in families.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "counter":
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    promql = need_module("promql_parser")
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql.VectorSelector) and node.name:
            names.add(node.name)

    promql.walk(promql.parse(expr), visit)
    return names


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables with values Prometheus can parse."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    return re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", expr)


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dash["panels"]):
        exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


def promtool_check(exprs: list[str], tmp_path: Path) -> None:
    """Real Prometheus parser: every expression as a recording rule through promtool."""
    promtool = need_tool("promtool")
    rules = {
        "groups": [
            {
                "name": "syntax",
                "rules": [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run(promtool, "check", "rules", str(path))


# -- kubernetes objects -------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def port_number(c: dict[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in c["ports"]), port
        return port
    (number,) = [p["containerPort"] for p in c["ports"] if p.get("name") == port]
    return int(number)


def server_deployment(k8s: list[dict[str, Any]]) -> dict[str, Any]:
    return one(k8s, "Deployment", "callgate")
