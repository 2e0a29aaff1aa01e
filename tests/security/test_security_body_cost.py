"""A caller with a code cannot make a full server pay for its body, nor send bodies that cost
far more than they say: content parts and stop strings are bounded.

A 1 MiB body of 65,000 empty content parts cost 0.2-0.4 s of CPU to parse on this machine, and
was parsed even when the answer was 503. Now admission comes first: a full server refuses a body
it would also refuse as malformed with the 503, which shows it never parsed it; and every
refusal after admission gives its slot back. On the shared narrow server (`tests/conftest.py`
NARROW), with one turn in flight at most, held by a long stream.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import NARROW, ServerHandle
from tests.wire import long_body, open_streams, wait_idle

LONG = 1000  # tokens: the holding stream outlasts the test's few requests by far
PARTS_1MIB = 65_000  # empty text parts, 16 bytes each: the most a 1 MiB body holds


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_server(narrow_server: ServerHandle) -> ServerHandle:
    assert NARROW["limits"]["max_in_flight"] == 1  # one stream fills it
    return narrow_server


def _parts(parts: int) -> bytes:
    content = ",".join(['{"type":"text"}'] * parts)
    return f'{{"messages":[{{"role":"user","content":[{content}]}}]}}'.encode()


SHORT = {"messages": [{"role": "user", "content": "Is my table booked?"}], "max_tokens": 2}
MALFORMED = (b"{not json", _parts(PARTS_1MIB))


async def _post(client: httpx.AsyncClient, srv: ServerHandle, body: bytes) -> httpx.Response:
    headers = {"Authorization": srv.auth, "Content-Type": "application/json"}
    return await client.post(f"{srv.url}/", content=body, headers=headers)


def test_a_full_server_answers_503_without_parsing_the_body(full_server: ServerHandle) -> None:
    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60.0) as client:
            (holder,) = await open_streams(client, full_server, long_body(LONG), 1, 2)
            try:
                return [await _post(client, full_server, body) for body in MALFORMED]
            finally:
                await holder.response.aclose()

    for response in asyncio.run(scenario()):
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "server_overloaded"
        assert "Retry-After" in response.headers


def test_refused_bodies_give_their_slot_back(full_server: ServerHandle) -> None:
    assert wait_idle(full_server).idle
    too_long_stop = json.dumps({**SHORT, "stop": ["x" * 64_000] * 16}).encode()

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(timeout=60.0) as client:
            refused = [
                await _post(client, full_server, body) for body in (*MALFORMED, too_long_stop)
            ]
            return refused, await _post(client, full_server, json.dumps(SHORT).encode())

    (bad_json, parts, stop), served = asyncio.run(scenario())
    assert bad_json.status_code == 400, bad_json.text
    assert parts.status_code == 400, parts.text
    assert "at most 4096 content parts" in parts.json()["message"]
    assert stop.status_code == 400, stop.text
    assert "stop string is longer than 256 characters" in stop.json()["message"]
    assert served.status_code == 200, served.text  # with one slot: none of the 400s kept it
