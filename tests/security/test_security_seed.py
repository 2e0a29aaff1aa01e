"""A seeded request must not kill vLLM's CPU engine.

With `seed` set and sampling on, vLLM gives the request its own `torch.Generator`. When the
request's prompt is prefilled in chunks (longer than `max_num_batched_tokens`, or sharing the
step's token budget), the model runner discards the token sampled after each partial chunk and
rewinds that generator with `set_offset`, which a CPU generator does not have ("CPU Generator
does not use offset"): the engine core dies, with every call on the server. vLLM's own server
dies the same way. Two ways out, both here:

- the CPU configs turn chunked prefill off (`engine.enable_chunked_prefill: false`): no prompt
  is prefilled in parts, and seeded turns are served (the shared `server`, `tests/tiny.yaml`);
- with chunking on, callgate refuses a seeded sampled turn with a 400 before any engine work
  (`Engine.params`); a greedy request with a seed seeds nothing and is served, and a GPU engine,
  whose generators rewind, keeps every seed.

`seed_server` (the shared narrow server, `tests/conftest.py` NARROW) has chunking on and a
64-token step budget, so that the 1000-token prompt is chunked. Without the refusal, its first
test's seeded turn kills the engine (reproduced on the tiny checkpoint: "CPU Generator does not
use offset", the turn ends in `EngineDeadError`); the seed tests run last of the narrow
server's users (alphabetical order), so that would fail no other module.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from server.base.errors import InvalidRequest
from tests.conftest import NARROW, Api, ServerHandle

STEP_TOKENS = NARROW["engine"]["max_num_batched_tokens"]  # 64
PROMPT = "Tell me a very long story about the weather in Hangzhou. " * 40  # ~1000 tokens


@pytest.fixture(scope="module")
def seed_server(narrow_server: ServerHandle) -> ServerHandle:
    assert NARROW["engine"]["enable_chunked_prefill"] is True
    return narrow_server


def _body(chat_body: Any, **sampling: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    return chat_body(messages=messages, max_tokens=4, ignore_eos=True, **sampling)


@pytest.mark.slow
def test_a_seeded_chunked_prompt_is_refused_and_the_engine_lives(
    seed_server: ServerHandle, make_api: Any, chat_body: Any
) -> None:
    api: Api = make_api(seed_server)
    refused = api.post(_body(chat_body, temperature=0.8, seed=7))
    body = api.assert_error(refused, 400)
    assert "seed" in body["error"]["message"]
    # The engine is alive: the same prompt without a seed streams, and the server stays up.
    _, stream = api.stream(_body(chat_body, temperature=0.8))
    assert stream.choice_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert seed_server.proc.poll() is None


@pytest.mark.slow
def test_a_greedy_turn_with_a_seed_is_served(
    seed_server: ServerHandle, make_api: Any, chat_body: Any
) -> None:
    """At temperature 0 vLLM makes no generator for the seed: nothing to refuse."""
    api: Api = make_api(seed_server)
    _, stream = api.stream(_body(chat_body, temperature=0, seed=7))
    assert stream.choice_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert seed_server.proc.poll() is None


def test_without_chunked_prefill_seeded_turns_share_a_step_and_the_engine_lives(
    server: ServerHandle, api: Api, chat_body: Any
) -> None:
    """The shared server prefills whole prompts (`enable_chunked_prefill: false`): 16 seeded
    turns of ~1000 prompt tokens at once, more than one step's budget together (the load that
    killed the engine with chunking on), are all served."""

    async def burst() -> None:
        async with httpx.AsyncClient(timeout=120.0) as client:
            body = _body(chat_body, temperature=0.8, seed=7)
            sent = [
                client.post(f"{server.url}/v1/chat/completions", json=body, headers=api.headers())
                for _ in range(16)
            ]
            answers = await asyncio.gather(*sent)
        for r in answers:
            assert r.status_code == 200, r.text
            assert "data: [DONE]" in r.text

    asyncio.run(burst())
    assert server.proc.poll() is None
    _, stream = api.stream(_body(chat_body, temperature=0.8))  # the engine still serves
    assert stream.choice_chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.compat  # vLLM's platform and SamplingParams
@pytest.mark.parametrize("seed_ok", [True, False])
def test_only_an_engine_whose_generators_rewind_takes_a_seed(seed_ok: bool) -> None:
    """The decision is `Engine.params`'s, from vLLM's platform (CPU or not); no server here."""
    from server.engine.vllm_adapter import Engine  # imports vLLM

    engine = Engine.__new__(Engine)
    engine._seed_ok = seed_ok
    engine.params({"temperature": 0.0, "seed": 7})  # greedy: no generator, always taken
    engine.params({"temperature": 0.8})  # unseeded: the engine's shared generator
    if seed_ok:
        engine.params({"temperature": 0.8, "seed": 7})
    else:
        with pytest.raises(InvalidRequest, match="seed"):
            engine.params({"temperature": 0.8, "seed": 7})
