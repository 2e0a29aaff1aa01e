"""Shutdown on SIGTERM and SIGINT: drain, finish what fits, end the rest audibly, exit 0.

Issue 4, point 5. Each case gets its own server (the test ends it) with `drain_s` 6 and
`max_tokens` 16000 (`max_model_len` 16384): with two turns in flight, a short one (200 tokens)
fits in the drain time and must finish normally, and a long one (~40 s) cannot and must end with
the fallback sentence, a final chunk and `[DONE]`. Meanwhile `/ready` and new turns say 503 and
the process exits 0, leaving no engine process behind.

Two cases cover every path a signal takes, one server start each: Ctrl-C (SIGINT) to a
one-worker server (`make run`), which drains in `DrainingServer.handle_exit`; and SIGTERM
(`docker stop`, Kubernetes) to a two-worker server on two engine cores
(`engine.data_parallel_size: 2`): the supervisor's handler, the same for both signals, sends one
SIGTERM to each worker, which drains in `handle_exit` as a single worker does on SIGTERM (a
worker ignores SIGINT), and the data-parallel engine shuts down.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.wire import (
    FALLBACK,
    RawStream,
    assert_error_shape,
    assert_processes_gone,
    async_client,
    descendants,
    long_body,
    turn_lines,
    well_formed,
)

pytestmark = pytest.mark.slow

DRAIN_S = 6.0
SHORT, LONG = 200, 16_000
EXIT_WITHIN_S = DRAIN_S + 60.0  # drain, then engine shutdown on a loaded 2-core machine


@pytest.fixture
def draining_server(start_server, workers):
    env = {
        "CALLGATE_SERVER__WORKERS": str(workers),
        # With two workers, two engine cores too: the data-parallel server drains the same way.
        "CALLGATE_ENGINE__DATA_PARALLEL_SIZE": str(workers),
        "CALLGATE_SHUTDOWN__DRAIN_S": str(DRAIN_S),
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1",
        "CALLGATE_ENGINE__MAX_MODEL_LEN": "16384",
        "CALLGATE_SAMPLING__MAX_TOKENS": str(LONG),
    }
    with start_server(env=env) as handle:
        yield handle


@pytest.mark.parametrize(
    ("sig", "workers"),
    [
        (signal.SIGINT, 1),
        # SharedCore's shutdown, the most release-specific: on the GPU host's release too;
        # two workers on two engine cores (engine.data_parallel_size 2).
        pytest.param(signal.SIGTERM, 2, marks=pytest.mark.compat),
    ],
    ids=["SIGINT", "SIGTERM-2-workers-2-cores"],
)
def test_signal_drains_then_exits_zero(draining_server, sig, workers):
    srv = draining_server
    family = descendants(srv)
    auth = {"Authorization": srv.auth}
    seen: dict[str, object] = {}

    async def scenario() -> tuple[bytes, bytes]:
        async with async_client() as client:
            short_request = client.build_request(
                "POST", f"{srv.url}/", json=long_body(SHORT), headers=auth
            )
            long_request = client.build_request(
                "POST", f"{srv.url}/", json=long_body(LONG), headers=auth
            )
            short = RawStream(await client.send(short_request, stream=True))
            long = RawStream(await client.send(long_request, stream=True))
            await short.until(1)
            await long.until(1)
            srv.proc.send_signal(sig)
            # Readiness flips at once: poll right after the signal.
            ready = []
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                status = (await client.get(f"{srv.url}/ready")).status_code
                ready.append(status)
                if status == 503:
                    break
                await asyncio.sleep(0.02)
            seen["ready"] = ready
            seen["refused"] = [
                await client.post(f"{srv.url}/", json=long_body(8), headers=auth),
                await client.post(
                    f"{srv.url}/", json={**long_body(8), "stream": False}, headers=auth
                ),
            ]
            seen["health"] = (await client.get(f"{srv.url}/health")).status_code
            bodies = await asyncio.gather(short.rest(), long.rest())
            for stream in (short, long):
                await stream.response.aclose()
            return bodies[0], bodies[1]

    short_body, long_body_ = asyncio.run(scenario())
    code = srv.proc.wait(timeout=EXIT_WITHIN_S)

    assert seen["ready"][-1] == 503, seen["ready"]
    for response in seen["refused"]:
        body = assert_error_shape(response, 503)
        assert body["error"]["code"] == "server_draining"
        assert response.headers["retry-after"].isdigit()
    assert seen["health"] == 200, "the engine is alive while draining: liveness holds"

    short_stream = well_formed(short_body)
    assert short_stream.finish_reason == "length"
    assert FALLBACK not in short_stream.content
    long_stream = well_formed(long_body_)
    assert long_stream.content.endswith(FALLBACK), long_stream.content[-80:]

    assert code == 0
    turns = {
        fields["output_tokens"]: fields["outcome"]
        for fields in turn_lines(srv.log_text())
        if "output_tokens" in fields
    }
    assert turns.get(SHORT) == "length", turns
    assert "draining" in turns.values(), turns
    assert all(tokens < LONG for tokens, outcome in turns.items() if outcome == "draining")

    assert_processes_gone(family)
