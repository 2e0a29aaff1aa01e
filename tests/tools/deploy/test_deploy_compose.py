"""docker-compose.yml with .env.example: it resolves, publishes nothing but Caddy beyond the host's
loopback, takes its secrets from the environment, drops privileges in every container (the
server on a read-only root, Caddy as a user without capabilities) and refuses Grafana's
placeholder password.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools.deploy.files import (
    CONFIG_PATH_IN_IMAGE,
    DEPLOY,
    ROOT,
    dockerfile,
    dockerfile_env,
    dotenv,
    need_tool,
    published_port,
    run,
    seconds,
)


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
    engine = gpu_config["engine"]
    # One engine core per tensor_parallel_size GPUs, data_parallel_size of them.
    assert gpu["count"] == engine["tensor_parallel_size"] * engine["data_parallel_size"]
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
