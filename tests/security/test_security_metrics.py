"""Metrics and the API schema stay inside (issue 12, findings 5 and 7).

With `server.admin_port` (as configs/gpu.yaml, compose and k8s ship it), `/metrics` and its
`session_id` exemplars are served only on the admin port, which nothing outside the host or
cluster reaches; the main port answers 404 there, and the admin port serves no turns.
`/openapi.json`, `/docs` and `/redoc` are not served unless `server.docs` is on.
"""

from __future__ import annotations

import httpx
import pytest

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture(scope="module")
def after_a_turn(guarded_server, chat_body):
    with httpx.Client(timeout=60.0) as client:
        r = client.post(
            guarded_server.url + "/",
            json=chat_body(max_tokens=2, session_id="sess-admin-port-check"),
            headers={"Authorization": guarded_server.auth},
        )
        assert r.status_code == 200, r.text
    return guarded_server


@pytest.mark.slow
def test_metrics_are_not_on_the_main_port(after_a_turn):
    for accept in ("text/plain", OPENMETRICS):
        r = httpx.get(after_a_turn.url + "/metrics", headers={"Accept": accept}, timeout=10.0)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
        assert "sess-admin-port-check" not in r.text


@pytest.mark.slow
def test_metrics_and_exemplars_are_on_the_admin_port(after_a_turn):
    r = httpx.get(
        after_a_turn.admin_url + "/metrics", headers={"Accept": OPENMETRICS}, timeout=10.0
    )
    assert r.status_code == 200
    assert "callgate_requests_total" in r.text
    assert 'session_id="sess-admin-port-check"' in r.text


@pytest.mark.slow
def test_the_admin_port_serves_no_turns(after_a_turn, chat_body):
    r = httpx.post(
        after_a_turn.admin_url + "/",
        json=chat_body(max_tokens=2),
        headers={"Authorization": after_a_turn.auth},
        timeout=30.0,
    )
    assert r.status_code == 404
    for path in ("/health", "/ready"):
        assert httpx.get(after_a_turn.admin_url + path, timeout=10.0).status_code == 200


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_no_api_schema_by_default(server, path):
    r = httpx.get(server.url + path, timeout=10.0)
    assert r.status_code == 404
