"""Security basics (issue 4, point 7) and the promises SECURITY.md makes.

* auth is checked from the headers alone: a wrong code is refused without the body being sent;
* code comparison takes the same work whichever code is close (every configured code is
  compared, with `hmac.compare_digest`);
* no `BaseHTTPMiddleware` (it hides client disconnects, so hang-ups would not abort the engine);
* every TCP listener of the server's process tree other than the configured port is bound to
  loopback (vLLM's engine core and workers talk over local sockets);
* neither auth codes nor what callers say reach the log (`server.log_content` is off).

The request-head limit is covered in `test_reliability_bad_input.py`.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from server.wire import auth as auth_module
from server.wire.auth import Authenticator
from tests.wire import (
    address,
    descendants,
    read_response,
    request_head,
    response_json,
    well_formed,
)

REPO = Path(__file__).resolve().parents[2]
SERVER_SOURCES = sorted((REPO / "server").glob("*.py"))
TEN_MB = 10 * 1024 * 1024


# -- auth before the body ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth", [None, "wrong-code", "Bearer wrong-code"], ids=["missing", "wrong", "bearer-wrong"]
)
def test_wrong_code_is_refused_before_the_body_is_sent(server, auth):
    # Only the head goes out, announcing 10 MB: a server that read the body first would wait.
    with socket.create_connection(address(server)) as sock:
        sock.sendall(request_head(server, auth=auth, length=TEN_MB))
        status, raw = read_response(sock, timeout_s=30.0)
    assert status == 401
    assert response_json(raw)["error"]["type"] == "authentication_error"


def test_wrong_code_with_a_chunked_body_is_refused_before_any_chunk(server):
    with socket.create_connection(address(server)) as sock:
        sock.sendall(request_head(server, auth="wrong-code", chunked=True))
        status, _ = read_response(sock, timeout_s=30.0)
    assert status == 401


def test_right_code_with_a_huge_declared_body_is_413_before_it_is_sent(server):
    with socket.create_connection(address(server)) as sock:
        sock.sendall(request_head(server, auth=server.auth, length=TEN_MB))
        status, _ = read_response(sock, timeout_s=30.0)
    assert status == 413


# -- constant-time comparison --------------------------------------------------------------------


def test_every_code_is_compared_with_compare_digest(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    auth = Authenticator(["sk-first", "sk-second", "sk-third"])
    for header, expected in [
        ("sk-first", True),  # matches the first code: no early exit
        ("Bearer sk-third", True),
        ("sk-firs", False),  # a near miss takes the same path as a far one
        ("x", False),
    ]:
        calls.clear()
        assert auth.check(header) is expected
        assert len(calls) == 3, (header, calls)


# -- no BaseHTTPMiddleware -------------------------------------------------------------------------


def _names_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(f"str:{node.value}")
    return names


@pytest.mark.parametrize("path", SERVER_SOURCES, ids=[p.name for p in SERVER_SOURCES])
def test_no_base_http_middleware_in_the_source(path):
    names = _names_in(path)
    assert "BaseHTTPMiddleware" not in names, f"{path.name} uses BaseHTTPMiddleware"
    # `@app.middleware("http")` is BaseHTTPMiddleware under another name.
    assert not ("middleware" in names and "str:http" in names), f"{path.name}: middleware('http')"


def test_no_base_http_middleware_in_the_built_app():
    """Build the real app (no engine starts: the lifespan does not run) and inspect its stack."""
    probe = (
        "from starlette.middleware.base import BaseHTTPMiddleware\n"
        "from server.app.routes import create_app\n"
        "from server.base.settings import Settings\n"
        "app = create_app(Settings(), ['code'], engine_factory=None)\n"
        "classes = [m.cls for m in app.user_middleware]\n"
        "bad = [c for c in classes if isinstance(c, type) and issubclass(c, BaseHTTPMiddleware)]\n"
        "print(len(classes), len(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "VLLM_NO_USAGE_STATS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _, bad = done.stdout.split()[-2:]
    assert bad == "0", done.stdout


# -- listeners ------------------------------------------------------------------------------------


def test_only_the_configured_port_may_listen_beyond_loopback(server):
    host, port = address(server)
    family = [psutil.Process(server.proc.pid), *descendants(server)]
    listeners = []
    for proc in family:
        try:
            connections = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                listeners.append((proc.pid, proc.name(), conn.laddr.ip, conn.laddr.port))
    ours = [item for item in listeners if item[3] == port]
    assert [item[2] for item in ours] == [host], listeners
    others = [item for item in listeners if item[3] != port]
    exposed = [item for item in others if not ipaddress.ip_address(item[2]).is_loopback]
    assert not exposed, f"engine internals listening beyond loopback: {exposed}"


# -- logs ---------------------------------------------------------------------------------------


def test_codes_and_caller_content_never_reach_the_log(server, api):
    secret_text = f"my card number is {uuid.uuid4().hex}"
    secret_city = f"city-{uuid.uuid4().hex}"
    wrong_code = f"sk-wrong-{uuid.uuid4().hex}"
    mark = len(server.log_text())
    body = {
        "model": "qwen-plus",
        "stream": True,
        "max_tokens": 4,
        "session_id": "147417592084^1341log",
        "biz_params": {"city": secret_city},
        "messages": [{"role": "user", "content": secret_text}],
    }
    response = api.post(body, auth="bearer")
    assert response.status_code == 200
    well_formed(response.content)
    refused = httpx.post(
        f"{server.url}/", json=body, headers={"Authorization": wrong_code}, timeout=30.0
    )
    assert refused.status_code == 401
    assert wrong_code not in refused.text
    log = server.log_text()[mark:]
    turns = [json.loads(line) for line in log.splitlines() if '"session_id": "147417592084' in line]
    assert turns, "the turn's log line is missing"
    for needle in (secret_text, secret_city, wrong_code, server.auth):
        assert needle not in log, f"{needle!r} reached the log"
