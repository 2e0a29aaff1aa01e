"""Static checks of the deployment: image, compose, Prometheus, Grafana, Caddy, configs/gpu.yaml,
Kubernetes, one file each (`test_deploy_*.py`); what they read is `files.py`.

A user's day one is `docker compose up` on a GPU host nobody here can reach, so everything that
can be checked without a Docker engine, a GPU or a cluster is checked here, and the references
between files (service names, ports, paths, labels, metric names, timings) are followed.
`deploy/check.sh` (`make deploy-check`) runs this folder with every tool required; only
`test_deploy_live_metrics.py` starts a server.

The fixtures here are the parsed files several checks share.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools.deploy.files import (
    CALLGATE_METRICS,
    K8S,
    PROMETHEUS_SYNTHETIC,
    ROOT,
    dotenv,
    exposed_names,
    interpolate,
    kustomization,
)


@pytest.fixture(scope="module")
def gpu_config() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return dotenv(ROOT / ".env.example")


@pytest.fixture(scope="module")
def compose(env_example: dict[str, str]) -> dict[str, Any]:
    text = interpolate((ROOT / "docker-compose.yml").read_text(), env_example)
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def vllm_metrics() -> dict[str, str]:
    """vLLM's metric names and types, read from the installed engine's source (not imported)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        if os.environ.get("CALLGATE_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail("vllm is not installed")
        pytest.skip("vllm is not installed")
    loggers = Path(spec.origin).parent / "v1" / "metrics" / "loggers.py"
    kinds = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram"}
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(loggers.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in kinds
        ):
            for kw in node.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    found[str(kw.value.value)] = kinds[node.func.attr]
    # The names the dashboard relies on must be among them, or the parse went wrong.
    assert {"vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits"} <= found.keys(), found
    return found


@pytest.fixture(scope="module")
def known_metrics(vllm_metrics: dict[str, str]) -> set[str]:
    return exposed_names(CALLGATE_METRICS) | exposed_names(vllm_metrics) | PROMETHEUS_SYNTHETIC


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    """Every object kustomization.yaml applies, with its namespace set as kustomize would."""
    kust = kustomization()
    objects = []
    for resource in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc:
                if doc["kind"] != "Namespace":
                    doc.setdefault("metadata", {})["namespace"] = kust["namespace"]
                objects.append(doc)
    return objects
