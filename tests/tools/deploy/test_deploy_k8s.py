"""The Kubernetes objects (deploy/k8s): kustomize lists and builds them, they match the API schema,
selectors select, probes and ports agree with configs/gpu.yaml, the server pod is locked down,
its shutdown fits the drain, and its config is the ConfigMap of configs/gpu.yaml.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.tools.deploy.files import (
    CONFIG_PATH_IN_IMAGE,
    K8S,
    ROOT,
    container,
    dockerfile,
    dockerfile_env,
    kustomization,
    need_module,
    need_tool,
    one,
    pod_labels,
    port_number,
    run,
    selects,
    server_deployment,
)


def test_k8s_kustomization_lists_every_manifest() -> None:
    kust = kustomization()
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present
    assert "secret.example.yaml" not in listed, "the Secret is created by hand, never applied"


def test_k8s_kustomize_builds() -> None:
    out = run(need_tool("kubectl"), "kustomize", "deploy/k8s").stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "Deployment" in kinds and "InferencePool" in kinds
    assert "registry.example.com/callgate:0.1.0" in out  # the images: override applies


def test_k8s_has_the_required_objects(k8s: list[dict[str, Any]]) -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in k8s}
    assert {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("policy/v1", "PodDisruptionBudget"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("inference.networking.k8s.io/v1", "InferencePool"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1", "Gateway"),
    } <= kinds


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_k8s_core_objects_match_the_api_schema(k8s: list[dict[str, Any]], version: str) -> None:
    kv = need_module("kubernetes_validate")
    version = kv.latest_version() if version == "latest" else version
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    checked = 0
    for obj in [*k8s, secret]:
        try:
            kv.validate(obj, version, strict=True)
            checked += 1
        except kv.SchemaNotFoundError:
            assert "." in obj["apiVersion"].split("/")[0], f"no schema for core {obj['kind']}"
        except kv.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {list(e.path)}: {e.message}")
    assert checked >= 10


def test_k8s_selectors_match_pod_labels(k8s: list[dict[str, Any]]) -> None:
    dep = server_deployment(k8s)
    labels = pod_labels(dep)
    assert selects(dep["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(k8s, "Service", "callgate")["spec"]["selector"], labels)
    assert selects(one(k8s, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(k8s, "PodMonitor")["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(k8s, "InferencePool")["spec"]["selector"]["matchLabels"], labels)
    epp = one(k8s, "Deployment", "callgate-epp")
    assert selects(epp["spec"]["selector"]["matchLabels"], pod_labels(epp))
    assert selects(one(k8s, "Service", "callgate-epp")["spec"]["selector"], pod_labels(epp))
    # The picker's pods must not fall into the model-server pool, nor the reverse.
    assert not selects(
        one(k8s, "InferencePool")["spec"]["selector"]["matchLabels"], pod_labels(epp)
    )


def test_k8s_probes_and_ports(k8s: list[dict[str, Any]], gpu_config: dict[str, Any]) -> None:
    c = container(server_deployment(k8s))
    port = gpu_config["server"]["port"]
    assert port_number(c, "http") == port
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"),
                        ("livenessProbe", "/health")):  # fmt: skip
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(c, get["port"]) == port, probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "slow model loads"
    (svc_port,) = one(k8s, "Service", "callgate")["spec"]["ports"]
    assert port_number(c, svc_port["targetPort"]) == port


def test_k8s_server_pod_is_locked_down(k8s: list[dict[str, Any]]) -> None:
    dep = server_deployment(k8s)
    spec = dep["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    c = container(dep)
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # Whatever the image writes to must be a writable volume: the caches named in the
    # Dockerfile's ENV, HOME (~/.cache, ~/.config, ~/.triton, ~/.nv), /tmp and /dev/shm.
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
    for path in writable:
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == path]
        assert {"emptyDir", "persistentVolumeClaim"} & volumes[mount["name"]].keys(), path
    env = dockerfile_env()
    needed = {"/tmp", "/dev/shm", env["HOME"]} | {
        env[var] for var in ("HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME", "TRITON_CACHE_DIR")
    }
    for path in needed:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable), path


def test_k8s_shutdown_fits_the_drain(k8s: list[dict[str, Any]], gpu_config: dict[str, Any]) -> None:
    spec = server_deployment(k8s)["spec"]["template"]["spec"]
    pre_stop = container(server_deployment(k8s))["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = gpu_config["shutdown"]["drain_s"]
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 10


def test_k8s_config_and_secrets(k8s: list[dict[str, Any]]) -> None:
    cm = one(k8s, "ConfigMap", "callgate-config")
    assert cm["data"]["gpu.yaml"] == (ROOT / "configs" / "gpu.yaml").read_text(), (
        "deploy/k8s/configmap.yaml is stale: run deploy/check.sh sync-configmap"
    )
    dep = server_deployment(k8s)
    c = container(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if volumes[m["name"]].get("configMap")]
    (item,) = volumes[mount["name"]]["configMap"]["items"]
    assert volumes[mount["name"]]["configMap"]["name"] == "callgate-config"
    assert f"{mount['mountPath']}/{item['path']}" == CONFIG_PATH_IN_IMAGE
    assert item["key"] == "gpu.yaml"
    (shm,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    (data,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/data"]
    assert dockerfile_env()["HF_HOME"].startswith(data["mountPath"] + "/")
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e]
    assert {r["name"] for r in refs} == {secret["metadata"]["name"]}
    assert {r["key"] for r in refs} <= secret["stringData"].keys()
    assert "REPLACE" in secret["stringData"]["CALLGATE_AUTH_CODES"]


def test_k8s_runs_as_the_image_user(k8s: list[dict[str, Any]]) -> None:
    security = server_deployment(k8s)["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == dockerfile("USER")[-1].split(":")[0]


def test_k8s_gpu_count_matches_tensor_and_data_parallel(
    k8s: list[dict[str, Any]], gpu_config: dict[str, Any]
) -> None:
    c = container(server_deployment(k8s))
    env = {e["name"]: e.get("value") for e in c["env"]}
    engine = gpu_config["engine"]
    tp = int(env.get("CALLGATE_ENGINE__TENSOR_PARALLEL_SIZE") or engine["tensor_parallel_size"])
    dp = int(env.get("CALLGATE_ENGINE__DATA_PARALLEL_SIZE") or engine["data_parallel_size"])
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == tp * dp
    assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == tp * dp


def test_k8s_namespace_is_consistent(k8s: list[dict[str, Any]]) -> None:
    namespace = one(k8s, "Namespace")["metadata"]["name"]
    assert kustomization()["namespace"] == namespace
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["metadata"]["namespace"] == namespace
    for trigger in one(k8s, "ScaledObject")["spec"]["triggers"]:
        assert f'namespace="{namespace}"' in trigger["metadata"]["query"]
