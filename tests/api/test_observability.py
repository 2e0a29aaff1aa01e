"""Metrics, health, readiness, request ids and the per-turn log line, on the real engine."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from tests.conftest import Api, ServerHandle, ServerSlot
from tests.wire import (
    assert_aborted_in_time,
    metric,
    new_request_id,
    parse_chat_stream,
    turn_lines,
    wait_for,
    wait_idle,
)


def test_histograms_count_each_streamed_turn_once(api: Api, chat_body: Callable[..., Any]) -> None:
    before = api.metrics_text()
    n = 3
    for i in range(n):
        api.stream(chat_body(model="qwen-max", session_id=f"obs-{i}"))
    after = api.metrics_text()

    def grew(name: str) -> float:
        return metric(after, name, model="qwen-max") - metric(before, name, model="qwen-max")

    assert grew("callgate_time_to_first_token_seconds_count") == n
    assert grew("callgate_e2e_request_latency_seconds_count") == n
    done = metric(after, "callgate_requests_total", model="qwen-max", outcome="length") - metric(
        before, "callgate_requests_total", model="qwen-max", outcome="length"
    )
    assert done == n
    assert (
        0
        < grew("callgate_time_to_first_token_seconds_sum")
        < grew("callgate_e2e_request_latency_seconds_sum")
    )
    assert grew("callgate_output_tokens_total") == n * 8
    assert grew("callgate_prompt_tokens_total") > 0
    # One gap between consecutive content chunks (a delta may hold back a partial character).
    assert 0 < grew("callgate_inter_token_latency_seconds_count") <= n * 7


def test_rejections_are_counted_with_their_outcome(api: Api, chat_body: Callable[..., Any]) -> None:
    before = api.metrics_text()
    api.assert_error(api.post(chat_body(), auth=None), 401)
    api.assert_error(api.post(chat_body(temperature="hot")), 400)
    after = api.metrics_text()
    for outcome in ("unauthorized", "invalid"):
        name, labels = "callgate_requests_total", {"model": "qwen-plus", "outcome": outcome}
        assert metric(after, name, **labels) - metric(before, name, **labels) == 1, outcome


def test_openmetrics_exemplar_carries_the_session_id(
    api: Api, chat_body: Callable[..., Any]
) -> None:
    session = "147417592084^1341-exemplar"
    api.stream(chat_body(session_id=session))
    r = api.client.get(
        f"{api.handle.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    )
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n") and r.text.count("# EOF") == 1
    # Our families only: the strict parser trips over a name clash inside vLLM's own set.
    ours = "".join(
        line + "\n"
        for line in r.text.splitlines()
        if line.startswith(("callgate_", "# HELP callgate_", "# TYPE callgate_"))
    )
    exemplars = [
        s.exemplar.labels
        for family in om_families(ours + "# EOF\n")
        if family.name == "callgate_time_to_first_token_seconds"
        for s in family.samples
        if s.exemplar is not None
    ]
    assert {"session_id": session} in exemplars
    # Never a label: session ids would make the series count unbounded.
    assert "session_id=" not in r.text.replace('# {session_id="', "")


@pytest.mark.compat  # vLLM's own metric names
def test_vllm_engine_metrics_are_exposed_unchanged(api: Api) -> None:
    text = api.metrics_text()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
    ):
        assert name in text, name


@pytest.mark.compat  # the cached-token count vLLM's output carries
def test_prefix_cache_hits_are_counted(api: Api, chat_body: Callable[..., Any]) -> None:
    history = [{"role": "assistant", "content": "Opening line. " * 30}]
    history.append({"role": "user", "content": "and a question"})
    api.stream(chat_body(model="qwen-max", messages=history))
    before = metric(api.metrics_text(), "callgate_cached_prompt_tokens_total", model="qwen-max")
    api.stream(chat_body(model="qwen-max", messages=history))
    after = metric(api.metrics_text(), "callgate_cached_prompt_tokens_total", model="qwen-max")
    assert after - before >= 16


def test_request_id_is_honoured_when_safe(api: Api, chat_body: Callable[..., Any]) -> None:
    r, stream = api.stream(chat_body(), headers={"X-Request-Id": "gw-123.abc"})
    assert r.headers["x-request-id"] == "gw-123.abc"
    assert all(c["id"] == "chatcmpl-gw-123.abc" for c in stream.chunks)
    r, stream = api.stream(chat_body(), headers={"X-Request-Id": "bad id/" + "x" * 100})
    rid = r.headers["x-request-id"]
    assert rid.isalnum() and len(rid) == 32
    assert stream.chunks[0]["id"] == f"chatcmpl-{rid}"


def test_one_json_log_line_per_turn_without_message_text(
    api: Api, chat_body: Callable[..., Any]
) -> None:
    secret_words = "my card number is 4111"
    r, _ = api.stream(
        chat_body(
            messages=[{"role": "user", "content": secret_words}],
            session_id="sess-log-1",
            out_id="out-7",
            biz_params={"city": "Secretville"},
        )
    )
    rid = r.headers["x-request-id"]

    def logged() -> list[dict[str, Any]]:
        return [e for e in turn_lines(api.handle.log_text()) if e["request_id"] == rid]

    wait_for(lambda: bool(logged()), timeout_s=30.0)
    mine = logged()
    assert len(mine) == 1
    entry = mine[0]
    for key in (
        "time", "session_id", "out_id", "alias", "prompt_tokens", "cached_tokens",
        "output_tokens", "ttft_ms", "total_ms", "outcome",
    ):  # fmt: skip
        assert key in entry, key
    assert entry["session_id"] == "sess-log-1" and entry["out_id"] == "out-7"
    assert entry["outcome"] == "length" and entry["output_tokens"] == 8
    assert 0 < entry["ttft_ms"] <= entry["total_ms"]
    log = api.handle.log_text()
    assert secret_words not in log and "Secretville" not in log
    assert api.handle.auth not in log


FRESH_ENV = {
    "CALLGATE_AUTH__PROTECT_METRICS": "true",
    "CALLGATE_SHUTDOWN__DRAIN_S": "30",
    "CALLGATE_SAMPLING__MAX_TOKENS": "2000",
    # This server also covers the other response class, with keep-alive pings on.
    "CALLGATE_SERVER__SSE": "sse-starlette",
    "CALLGATE_SERVER__SSE_PING_S": "0.2",
}


@contextlib.contextmanager
def _watched(start_server: Callable[..., Any]) -> Iterator[tuple[ServerHandle, list[int]]]:
    """A server of its own, watched from the first second: /ready codes seen while starting."""
    with start_server(env=FRESH_ENV, wait_ready=False) as handle:
        seen: list[int] = []
        # Generous: in a full run this start can share the two cores with busy engines (seen in
        # CI: 8.5 minutes from spawn to ready); the test asks for the order 503 -> 200 only.
        deadline = time.monotonic() + 840
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    seen.append(client.get(f"{handle.url}/ready").status_code)
                if seen and seen[-1] == 200:
                    break
                time.sleep(0.2)
        yield handle, seen


@pytest.fixture(scope="module")
def fresh_slot(
    start_server: Callable[..., Any],
) -> Iterator[ServerSlot[tuple[ServerHandle, list[int]]]]:
    with ServerSlot(lambda: _watched(start_server)) as slot:
        yield slot


@pytest.fixture
def fresh(
    fresh_slot: ServerSlot[tuple[ServerHandle, list[int]]],
) -> tuple[ServerHandle, list[int]]:
    """The module's watched server (a fresh one if the draining test used the last one up)."""
    return fresh_slot.get()


@pytest.mark.slow
def test_ready_is_503_while_the_engine_loads(fresh: tuple[ServerHandle, list[int]]) -> None:
    _, seen = fresh
    assert 503 in seen and seen[-1] == 200
    assert seen.index(503) < seen.index(200)


@pytest.mark.slow
def test_metrics_can_require_the_auth_code(
    fresh: tuple[ServerHandle, list[int]], make_api: Callable[[ServerHandle], Api]
) -> None:
    handle, _ = fresh
    api = make_api(handle)
    api.assert_error(api.client.get(f"{handle.url}/metrics"), 401)
    assert "callgate_requests_total" in api.metrics_text()


@pytest.mark.slow
def test_in_flight_returns_to_zero_after_a_disconnect(
    fresh: tuple[ServerHandle, list[int]],
    make_api: Callable[[ServerHandle], Api],
    chat_body: Callable[..., Any],
) -> None:
    api = make_api(fresh[0])
    body = chat_body(max_tokens=2000)
    rid = new_request_id()
    headers = {**api.headers(), "X-Request-Id": rid}
    with httpx.stream("POST", f"{api.handle.url}/", json=body, headers=headers) as r:
        lines = r.iter_lines()
        next(lines)  # the role chunk
        next(lines)
        during = metric(api.metrics_text(), "callgate_requests_in_flight", model="qwen-plus")
        assert during >= 1
        hung_up = {rid: time.time()}
    assert_aborted_in_time(api.handle, hung_up)
    idle = wait_idle(api.handle)
    assert idle.idle, f"the in-flight gauge or vLLM's counts are not back to 0: {idle}"
    text = api.metrics_text()
    assert metric(text, "callgate_requests_total", model="qwen-plus", outcome="client_gone") >= 1


@pytest.mark.slow
def test_sse_starlette_with_keepalive_pings_streams_the_same_shape(
    fresh: tuple[ServerHandle, list[int]],
    make_api: Callable[[ServerHandle], Api],
    chat_body: Callable[..., Any],
) -> None:
    api = make_api(fresh[0])
    response = api.post(chat_body(max_tokens=300))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    stream = parse_chat_stream(response.content, allow_comments=True)
    assert stream.chunks[0]["choices"][0]["delta"] == {"content": "", "role": "assistant"}
    assert stream.finish_reason == "length" and stream.payloads[-1] == "[DONE]"


def in_flight(api: Api) -> float:
    """`callgate_requests_in_flight` of the `qwen-plus` alias now."""
    return metric(api.metrics_text(), "callgate_requests_in_flight", model="qwen-plus")


@pytest.mark.slow
def test_ready_is_503_while_draining(
    fresh_slot: ServerSlot[tuple[ServerHandle, list[int]]],
    make_api: Callable[[ServerHandle], Api],
    chat_body: Callable[..., Any],
) -> None:
    handle, _ = fresh_slot.use_up()  # SIGTERM ends it
    api = make_api(handle)
    result: dict[str, Any] = {}

    def long_turn() -> None:
        response = api.post(chat_body(max_tokens=400))
        result["stream"] = parse_chat_stream(response.content, allow_comments=True)

    worker = threading.Thread(target=long_turn)
    worker.start()
    assert wait_for(lambda: in_flight(api) >= 1, timeout_s=60.0), "the turn was never admitted"
    handle.proc.send_signal(signal.SIGTERM)
    assert wait_for(
        lambda: api.client.get(f"{handle.url}/ready").status_code == 503, timeout_s=30.0
    )
    assert api.client.get(f"{handle.url}/health").status_code == 200
    api.assert_error(api.post(chat_body()), 503)
    worker.join(timeout=60)
    assert result["stream"].chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert handle.proc.wait(timeout=60) == 0
