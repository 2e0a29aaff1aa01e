"""The Model Address checker fails servers that break the format, point by point.

A fake endpoint (benchmarks/fakeserver.py) breaks one protocol point per fault; the checker must
name that point. The same fake without faults passes, so a failure is the checker's finding and
not a checker that always fails. No engine is needed: these run in a second or two.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks import check
from benchmarks.fakeserver import AUTH_CODE, create_app, serve_in_thread


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serve_in_thread(create_app()) as url:
        yield url


def _failed_points(results: list[check.CaseResult]) -> set[str]:
    return {p for r in results for p, (status, _) in r.points.items() if status == "fail"}


def test_a_correct_server_passes_every_point(fake_url: str) -> None:
    results = check.run_checks(fake_url, AUTH_CODE, max_tokens=4)
    assert _failed_points(results) == set()
    assert not any(r.failed for r in results)
    stream_cases = [r for r in results if r.case.expect == "stream"]
    assert all(r.ttft_ms is not None for r in stream_cases)
    assert {r.case.name for r in results} >= {"curl", "strings", "topP", "opening", "bad-auth"}


@pytest.mark.parametrize(
    ("fault", "point"),
    [
        ("key-order", "key_order"),
        ("choice-order", "choice_keys"),
        ("no-done", "done"),
        ("no-finish", "finish_reason"),
        ("multi-id", "single_id"),
        ("no-role", "role_first"),
        ("content-type", "content_type"),
        ("object", "object"),
        ("bad-json", "json"),
        ("model", "model_echo"),
    ],
)
def test_a_broken_stream_fails_its_point(fake_url: str, fault: str, point: str) -> None:
    results = check.run_checks(f"{fake_url}/fault/{fault}", AUTH_CODE, max_tokens=4)
    streamed = [r for r in results if r.case.expect == "stream"]
    assert all(r.points[point][0] == "fail" for r in streamed), [r.points[point] for r in streamed]
    assert _failed_points(results) == {point}


def test_accepting_a_wrong_code_fails_the_auth_cases(fake_url: str) -> None:
    results = check.run_checks(f"{fake_url}/fault/open-auth", AUTH_CODE, max_tokens=4)
    by_name = {r.case.name: r for r in results}
    assert by_name["bad-auth"].points["status"][0] == "fail"
    assert by_name["no-auth"].points["status"][0] == "fail"
    assert not by_name["curl"].failed


def test_several_faults_are_all_reported(fake_url: str) -> None:
    results = check.run_checks(f"{fake_url}/fault/key-order,no-done,no-finish", AUTH_CODE)
    assert _failed_points(results) >= {"key_order", "done", "finish_reason"}


def test_exit_code_and_report(fake_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    good = check.main([fake_url, "--auth", AUTH_CODE, "--max-tokens", "3"])
    assert good == 0
    assert "PASS" in capsys.readouterr().out
    bad = check.main([f"{fake_url}/fault/no-done", "--auth", AUTH_CODE, "--max-tokens", "3"])
    out = capsys.readouterr().out
    assert bad == 1
    assert "FAIL done" in out


def test_an_unreachable_endpoint_fails() -> None:
    results = check.run_checks("http://127.0.0.1:9/", AUTH_CODE, timeout_s=2)
    assert all(r.points["status"][0] == "fail" for r in results)


def test_the_gateway_body_variants_are_sent(fake_url: str) -> None:
    app = create_app()
    with serve_in_thread(app) as url:
        check.run_checks(url, AUTH_CODE, model="qwen-max")
    bodies = [req["body"] for req in app.state.fake.requests]
    assert all(b["model"] == "qwen-max" and b["stream"] is True for b in bodies)
    assert any(b.get("top_p") == "0.1" and b.get("temperature") == "0.1" for b in bodies)
    assert any("topP" in b and "top_p" not in b for b in bodies)
    assert any([m["role"] for m in b["messages"]] == ["assistant"] for b in bodies)
    assert any("请问" in m["content"] for b in bodies for m in b["messages"])
    assert all("max_tokens" not in b for b in bodies)  # the gateway sends none
    auths = [req["headers"].get("authorization") for req in app.state.fake.requests]
    assert AUTH_CODE in auths and f"Bearer {AUTH_CODE}" in auths and None in auths
