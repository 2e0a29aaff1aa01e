"""A hung engine (issue 12, finding 11): alive but producing nothing. `/ready` says `stalled`
after `readiness.stall_s` of busy time without a token; after `hung_exit_after` times that,
the open turns end with the fallback sentence and the process exits 6, so that the supervisor
restarts it instead of every later call getting the fallback forever.

The engine core is stopped with SIGSTOP (alive, silent). A server of its own: it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import httpx
import psutil
import pytest

from tests.wire import assert_processes_gone, descendants, engine_core, well_formed

# A server of its own; vLLM's count of unfinished requests is what tells hung from idle.
pytestmark = [pytest.mark.slow, pytest.mark.compat]

STALL_S = 1.0
HUNG_AFTER = 3  # exit after 3 s of busy time without a token
FALLBACK = "Sorry, could you say that again?"


def test_a_hung_engine_ends_open_turns_audibly_and_exits_6(start_server, chat_body):
    env = {
        "CALLGATE_READINESS__STALL_S": str(STALL_S),
        "CALLGATE_READINESS__HUNG_EXIT_AFTER": str(HUNG_AFTER),
        "CALLGATE_DEADLINES__FIRST_TOKEN_S": "60",  # the turn stays open while the engine hangs
    }
    with start_server(env=env) as srv:
        family = descendants(srv)
        core = engine_core(srv)
        headers = {"Authorization": srv.auth}
        ready_seen: list[str] = []

        async def scenario() -> tuple[int, bytes]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60.0) as client:
                warm = await client.post("/", json=chat_body(max_tokens=2), headers=headers)
                assert warm.status_code == 200
                core.send_signal(signal.SIGSTOP)
                turn = asyncio.create_task(
                    client.post("/", json=chat_body(max_tokens=8), headers=headers)
                )
                while not turn.done():
                    with contextlib.suppress(httpx.TransportError):
                        ready_seen.append((await client.get("/ready")).json()["status"])
                    await asyncio.sleep(0.2)
                response = await turn
                return response.status_code, response.content

        started = time.monotonic()
        try:
            status, body = asyncio.run(scenario())
            code = srv.proc.wait(timeout=60.0)
        finally:
            with contextlib.suppress(psutil.Error):
                core.send_signal(signal.SIGCONT)
        took = time.monotonic() - started
        assert status == 200
        assert well_formed(body).content.endswith(FALLBACK)
        assert "stalled" in ready_seen, ready_seen
        assert code == 6, srv.log_text()[-3000:]
        assert took < 45.0
        assert "is hung" in srv.log_text()
        assert_processes_gone(family)
