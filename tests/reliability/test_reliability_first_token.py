"""First-token deadline and engine death while idle, on a server whose deadline cannot be met.

Issue 4, point 4 and the idle half of point 6. `deadlines.first_token_s` is 1 ms, which the real
engine never meets, so every turn must still end well: HTTP 200, the role chunk, the alias's
fallback sentence as content, a final chunk with `finish_reason`, `[DONE]`, counted as
`deadline`, and no engine request left behind. `max_tokens` is 1500 with `ignore_eos`, so an
engine request that was not aborted would keep vLLM busy for seconds and show in its running
count. The engine-death test kills the engine core, which ends the server: it uses the
module's server up, and a test after it would get a fresh one.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.conftest import ServerSlot
from tests.wire import (
    FALLBACK,
    assert_error_shape,
    assert_processes_gone,
    async_client,
    delta,
    descendants,
    engine_core,
    long_body,
    outcomes,
    wait_idle,
    well_formed,
)

pytestmark = pytest.mark.slow

TURN_TOKENS = 1500


@pytest.fixture(scope="module")
def stalled_slot(start_server):
    env = {
        "CALLGATE_DEADLINES__FIRST_TOKEN_S": "0.001",
        "CALLGATE_SAMPLING__MAX_TOKENS": str(TURN_TOKENS),
        # Turns that all miss a 1 ms deadline never see a token, which the stall clock counts
        # as busy time without progress; the hung exit (6) is tested in tests/security.
        "CALLGATE_READINESS__HUNG_EXIT_AFTER": "0",
    }
    with ServerSlot(lambda: start_server(env=env)) as slot:
        yield slot


@pytest.fixture
def stalled(stalled_slot):
    """The module's server (a fresh one if the engine-death test used the last one up)."""
    return stalled_slot.get()


@pytest.fixture
def before(stalled):
    assert wait_idle(stalled, within_s=10.0).idle
    return outcomes(stalled)


def _post(handle, body) -> httpx.Response:
    return httpx.post(
        f"{handle.url}/", json=body, headers={"Authorization": handle.auth}, timeout=60.0
    )


def test_missed_first_token_deadline_streams_the_fallback_ending(stalled, before):
    response = _post(stalled, long_body(TURN_TOKENS))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = well_formed(response.content)  # role chunk first, finish_reason last, [DONE]
    assert stream.content == FALLBACK
    contents = [c["choices"][0]["delta"].get("content") for c in stream.choice_chunks]
    assert contents == ["", FALLBACK, None]
    assert stream.finish_reason == "stop"
    assert delta(outcomes(stalled), before) == {"deadline": 1}
    idle = wait_idle(stalled)
    assert idle.idle, f"the engine request outlived the deadline: {idle}"


def test_missed_deadline_non_streamed_answers_the_fallback(stalled, before):
    response = _post(stalled, {**long_body(TURN_TOKENS), "stream": False})
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": FALLBACK}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert delta(outcomes(stalled), before) == {"deadline": 1}
    assert wait_idle(stalled).idle


def test_many_turns_missing_the_deadline_at_once_all_end_well(stalled, before):
    async def all_of_them() -> list[httpx.Response]:
        async with async_client() as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{stalled.url}/",
                        json=long_body(TURN_TOKENS),
                        headers={"Authorization": stalled.auth},
                    )
                    for _ in range(24)
                )
            )

    for response in asyncio.run(all_of_them()):
        assert response.status_code == 200
        assert well_formed(response.content).content == FALLBACK
    assert delta(outcomes(stalled), before) == {"deadline": 24}
    idle = wait_idle(stalled)
    assert idle.idle, idle


# -- engine death while idle (last: the server exits) ----------------------------------------


def test_engine_death_while_idle_fails_health_refuses_turns_and_exits_nonzero(stalled_slot, before):
    stalled = stalled_slot.use_up()
    family = descendants(stalled)
    engine_core(stalled).send_signal(signal.SIGKILL)
    health: list[int] = []
    turns: list[httpx.Response] = []
    with httpx.Client(timeout=5.0) as client:
        while stalled.proc.poll() is None:
            try:
                health.append(client.get(f"{stalled.url}/health").status_code)
                turns.append(
                    client.post(
                        f"{stalled.url}/",
                        json=long_body(4),
                        headers={"Authorization": stalled.auth},
                    )
                )
            except httpx.TransportError:
                pass
            time.sleep(0.02)
            if len(health) > 3000:
                break
    code = stalled.proc.wait(timeout=30.0)
    assert code == 3  # EXIT_ENGINE_DEAD
    assert 503 in health, health
    refused = [r for r in turns if r.status_code != 200]
    assert refused, [r.status_code for r in turns]
    for response in refused:
        body = assert_error_shape(response, 503)
        assert body["error"]["code"] == "engine_unavailable"
    for response in turns:
        if response.status_code == 200:  # admitted just before the death was noticed
            well_formed(response.content)
    assert_processes_gone(family)
