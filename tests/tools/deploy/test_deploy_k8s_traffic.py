"""Who reaches whom in Kubernetes: the Gateway routes only the protocol to the InferencePool, the
endpoint picker scores pods by their metrics on the admin port, NetworkPolicies admit only the
named peers to the server and to the picker, and KEDA scales the Deployment on exported metrics.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.tools.deploy.files import (
    HANDLER_PATHS,
    container,
    metric_names,
    one,
    pod_labels,
    port_number,
    promtool_check,
    seconds,
    selects,
    server_deployment,
)


def test_k8s_metrics_are_scraped_on_the_admin_port(
    k8s: list[dict[str, Any]], gpu_config: dict[str, Any]
) -> None:
    """/metrics is served only on server.admin_port: the PodMonitor, the annotation and the
    endpoint picker must all scrape that port, and the Service must not expose it."""
    dep = server_deployment(k8s)
    c = container(dep)
    admin = gpu_config["server"]["admin_port"]
    assert admin != gpu_config["server"]["port"]
    assert port_number(c, "admin") == admin
    (endpoint,) = one(k8s, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "admin" and endpoint.get("path", "/metrics") == "/metrics"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(admin)
    for svc_port in one(k8s, "Service", "callgate")["spec"]["ports"]:
        assert port_number(c, svc_port["targetPort"]) != admin, "metrics stay on the pod"
    args = container(one(k8s, "Deployment", "callgate-epp"))["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert int(flags["--model-server-metrics-port"]) == admin
    assert flags.get("--model-server-metrics-path", "/metrics") == "/metrics"


def test_k8s_network_policy_admits_only_the_named_peers(
    k8s: list[dict[str, Any]], gpu_config: dict[str, Any]
) -> None:
    dep = server_deployment(k8s)
    c = container(dep)
    policy = one(k8s, "NetworkPolicy", "callgate")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(dep))
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}

    peers: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        # A rule without `from` admits every source, one without `ports` every port.
        assert rule.get("from") and rule.get("ports"), rule
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP"
            peers.setdefault(port_number(c, port["port"]), []).extend(rule["from"])
    main, admin = gpu_config["server"]["port"], gpu_config["server"]["admin_port"]
    assert set(peers) == {main, admin}

    # The protocol: only the proxies of the Gateway in gateway.yaml (the in-cluster Gateway
    # implementations' label), in this namespace.
    gateway = one(k8s, "Gateway")["metadata"]["name"]
    assert peers[main] == [
        {"podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": gateway}}}
    ]

    # Metrics: the endpoint picker (this namespace) and Prometheus (its namespace, as KEDA
    # queries it), nobody else.
    epp = one(k8s, "Deployment", "callgate-epp")
    (picker,) = [p for p in peers[admin] if "namespaceSelector" not in p]
    assert set(picker) == {"podSelector"}
    assert selects(picker["podSelector"]["matchLabels"], pod_labels(epp))
    assert not selects(picker["podSelector"]["matchLabels"], pod_labels(dep))
    (prometheus,) = [p for p in peers[admin] if "namespaceSelector" in p]
    assert set(prometheus) == {"namespaceSelector", "podSelector"}, "both must hold (AND)"
    address = one(k8s, "ScaledObject")["spec"]["triggers"][0]["metadata"]["serverAddress"]
    host = re.sub(r"^https?://", "", address).split(":")[0]
    assert prometheus["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": host.split(".")[1]
    }
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert len(peers[admin]) == 2

    # Out: DNS and HTTPS (the hub download) only.
    out = set()
    for rule in policy["egress"]:
        assert rule.get("ports"), "an egress rule without ports opens every port"
        out |= {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}
    assert out == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def test_k8s_endpoint_picker_is_reached_only_by_the_gateway(
    k8s: list[dict[str, Any]], gpu_config: dict[str, Any]
) -> None:
    """The picker reads every turn's body: its gRPC port admits only the Gateway's proxies (the
    same peer as the server's main port), its metrics port only Prometheus, and it reaches only
    DNS, the model servers' admin port and the Kubernetes API."""
    epp = one(k8s, "Deployment", "callgate-epp")
    c = container(epp)
    policy = one(k8s, "NetworkPolicy", "callgate-epp")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(epp))
    assert not selects(policy["podSelector"]["matchLabels"], pod_labels(server_deployment(k8s)))
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}

    peers: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        assert rule.get("from") and rule.get("ports"), rule  # no open source, no open port
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP"
            peers.setdefault(port_number(c, port["port"]), []).extend(rule["from"])
    grpc, metrics = port_number(c, "grpc"), port_number(c, "metrics")
    assert set(peers) == {grpc, metrics}, "the health port is for the kubelet only"
    assert one(k8s, "InferencePool")["spec"]["endpointPickerRef"]["port"]["number"] == grpc
    server_policy = one(k8s, "NetworkPolicy", "callgate")["spec"]
    (gateway_rule,) = [
        r for r in server_policy["ingress"] if r["ports"][0]["port"] == gpu_config["server"]["port"]
    ]
    assert peers[grpc] == gateway_rule["from"]
    (prometheus,) = peers[metrics]
    assert set(prometheus) == {"namespaceSelector", "podSelector"}, "both must hold (AND)"
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}

    anywhere: set[tuple[int, str]] = set()
    for rule in policy["egress"]:
        assert rule.get("ports"), "an egress rule without ports opens every port"
        ports = {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}
        if "to" not in rule:
            anywhere |= ports
            continue
        (peer,) = rule["to"]
        assert set(peer) == {"podSelector"}
        assert selects(peer["podSelector"]["matchLabels"], pod_labels(server_deployment(k8s)))
        assert ports == {(gpu_config["server"]["admin_port"], "TCP")}, "metrics only, no turns"
    assert anywhere == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")}


# The InferencePool v1 fields, as read from the Inference Extension's api/v1 types
# (InferencePoolSpec, Port, EndpointPickerRef). No cluster here to hold the CRD.
INFERENCE_POOL_SPEC = {
    "selector": {"matchLabels"},
    "targetPorts": {"number"},
    "endpointPickerRef": {"group", "kind", "name", "port", "failureMode"},
}


def test_k8s_inference_pool_routes_through_the_endpoint_picker(
    k8s: list[dict[str, Any]], vllm_metrics: dict[str, str]
) -> None:
    pool = one(k8s, "InferencePool")
    spec = pool["spec"]
    assert set(spec) <= INFERENCE_POOL_SPEC.keys()
    assert set(spec["selector"]) <= INFERENCE_POOL_SPEC["selector"]
    (target,) = spec["targetPorts"]
    assert set(target) <= INFERENCE_POOL_SPEC["targetPorts"]
    assert target["number"] == port_number(container(server_deployment(k8s)), "http")
    ref = spec["endpointPickerRef"]
    assert set(ref) <= INFERENCE_POOL_SPEC["endpointPickerRef"]
    assert ref.get("failureMode", "FailClose") in {"FailOpen", "FailClose"}
    assert ref.get("kind", "Service") == "Service"
    epp_service = one(k8s, "Service", ref["name"])
    (ext_proc,) = [p for p in epp_service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    epp = one(k8s, "Deployment", "callgate-epp")
    epp_container = container(epp)
    port_number(epp_container, ext_proc["targetPort"])

    args = epp_container["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--pool-name"] == pool["metadata"]["name"]
    assert flags["--pool-namespace"] == pool["metadata"]["namespace"]
    assert int(flags["--grpc-port"]) == port_number(epp_container, ext_proc["targetPort"])
    assert vllm_metrics.get(flags["--kv-cache-usage-percentage-metric"]) == "gauge"

    # The plugin config file the picker reads exists in the ConfigMap it mounts.
    volumes = {v["name"]: v for v in epp["spec"]["template"]["spec"]["volumes"]}
    config_dir, _, config_file = flags["--config-file"].rpartition("/")
    (mount,) = [m for m in epp_container["volumeMounts"] if m["mountPath"] == config_dir]
    config_map = one(k8s, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    plugins = yaml.safe_load(config_map["data"][config_file])
    assert plugins["kind"] == "EndpointPickerConfig"
    types = {p.get("name", p["type"]) for p in plugins["plugins"]}
    assert "prefix-cache-scorer" in types, "prefix affinity is the point of the picker"
    for profile in plugins["schedulingProfiles"]:
        assert {r["pluginRef"] for r in profile["plugins"]} <= types
        # A call's turns go back to the pod with its prefix unless another is much less loaded:
        # the prefix weighs more than any one load score.
        weights = {r["pluginRef"]: r.get("weight", 1) for r in profile["plugins"]}
        prefix = weights.pop("prefix-cache-scorer")
        assert all(prefix > w for w in weights.values()), weights

    # RBAC: the picker's service account may read the pool and the pods.
    account = epp["spec"]["template"]["spec"]["serviceAccountName"]
    one(k8s, "ServiceAccount", account)
    binding = one(k8s, "RoleBinding")
    assert {s["name"] for s in binding["subjects"]} == {account}
    role = one(k8s, "Role", binding["roleRef"]["name"])
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert {("inference.networking.k8s.io", "inferencepools"), ("", "pods")} <= granted


def test_k8s_gateway_route_sends_the_protocol_to_the_pool(
    k8s: list[dict[str, Any]], gpu_config: dict[str, Any]
) -> None:
    gateway = one(k8s, "Gateway")
    route = one(k8s, "HTTPRoute")
    (parent,) = route["spec"]["parentRefs"]
    assert parent["name"] == gateway["metadata"]["name"]
    (listener,) = [x for x in gateway["spec"]["listeners"] if x["name"] == parent["sectionName"]]
    assert listener["protocol"] == "HTTPS" and listener["tls"]["certificateRefs"]
    assert route["spec"]["hostnames"] == [listener["hostname"]]
    (rule,) = route["spec"]["rules"]
    assert {m["path"]["value"] for m in rule["matches"]} == HANDLER_PATHS
    assert {m["method"] for m in rule["matches"]} == {"POST"}
    (backend,) = rule["backendRefs"]
    pool = one(k8s, "InferencePool")
    assert (backend["group"], backend["kind"], backend["name"]) == (
        "inference.networking.k8s.io",
        "InferencePool",
        pool["metadata"]["name"],
    )
    assert seconds(rule["timeouts"]["request"]) > gpu_config["deadlines"]["turn_s"]


def test_k8s_autoscaling_targets_the_deployment(
    k8s: list[dict[str, Any]], known_metrics: set[str], tmp_path: Path
) -> None:
    scaled = one(k8s, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == server_deployment(k8s)["metadata"]["name"]
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    queries = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        float(meta["threshold"])
        assert meta["serverAddress"].startswith("http")
        queries.append(meta["query"])
        assert metric_names(meta["query"]) <= known_metrics
    used = " ".join(queries)
    assert "vllm:num_requests_waiting" in used or "callgate_time_to_first_token_seconds" in used
    promtool_check(queries, tmp_path)
