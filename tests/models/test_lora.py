"""LoRA adapters by model alias: one engine serves the base model and an adapter variant.

`qwen-plus` is the base checkpoint, `qwen-plus-hotel` the same checkpoint through a tiny peft
adapter (`benchmarks.lib.tiny_adapter`) with the same system prompt, so any difference in their
greedy replies is the adapter's. vLLM's CPU build serves LoRA (its punica CPU wrapper). The
alias is served by the shared guarded server (`tests/conftest.py`), whose connection limits no
turn here comes near.
"""

from __future__ import annotations

import typing

import pytest

from benchmarks.lib.servers import run_to_exit
from tests.conftest import HOTEL, lora_config, server_side

BIZ = {"city": "Hangzhou"}


@pytest.fixture(scope="module")
def lora_server(guarded_server):
    return guarded_server


@pytest.fixture(scope="module")
def lora_api(lora_server, make_api):
    return make_api(lora_server)


def _greedy(api, chat_body, model: str, stream: bool = True) -> str:
    body = chat_body(model=model, max_tokens=16, temperature=0, biz_params=BIZ)
    if stream:
        _, parsed = api.stream(body)
        assert parsed.finish_reason in ("stop", "length")
        return parsed.content
    _, completion = api.complete(body)
    return typing.cast(str, completion["choices"][0]["message"]["content"])


@pytest.mark.slow
@pytest.mark.compat
def test_the_adapter_alias_replies_otherwise_than_the_base(lora_api, chat_body):
    base = _greedy(lora_api, chat_body, "qwen-plus")
    hotel = _greedy(lora_api, chat_body, HOTEL)
    assert base and hotel
    assert hotel != base
    # Greedy and repeatable: the difference is the adapter, not chance.
    assert _greedy(lora_api, chat_body, HOTEL) == hotel
    assert _greedy(lora_api, chat_body, "qwen-plus") == base


@pytest.mark.slow
@pytest.mark.compat
def test_the_adapter_alias_streamed_equals_non_streamed(lora_api, chat_body):
    assert _greedy(lora_api, chat_body, HOTEL, stream=False) == _greedy(lora_api, chat_body, HOTEL)


@pytest.mark.slow
@pytest.mark.compat
def test_the_base_alias_is_untouched_by_serving_adapters(lora_api, api, chat_body):
    # `api` is the suite's shared server: the same checkpoint and prompts, without LoRA.
    assert _greedy(lora_api, chat_body, "qwen-plus") == _greedy(api, chat_body, "qwen-plus")


@pytest.mark.slow
@pytest.mark.compat
def test_the_start_up_log_names_the_adapter_aliases(lora_server, lora_adapter_dir):
    log = lora_server.log_text()
    assert f"LoRA adapters: {HOTEL} -> {lora_adapter_dir.resolve()} (rank 8)" in log


@pytest.mark.compat
def test_vllm_takes_exactly_our_max_lora_ranks():
    from vllm.config.lora import MaxLoRARanks

    from server.engine.adapters import LORA_RANKS

    assert typing.get_args(MaxLoRARanks) == LORA_RANKS


@pytest.mark.parametrize(
    ("lora", "why"),
    [
        ("{tmp}/no-such-adapter", "is not a directory with an adapter_config.json"),
        ("acme/not-cached-anywhere", "not in the Hugging Face cache (offline mode)"),
    ],
    ids=["missing-dir", "hub-id-not-cached"],
)
def test_an_alias_with_a_missing_adapter_refuses_to_start(tiny_model_dir, tmp_path, lora, why):
    lora = lora.format(tmp=tmp_path)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}  # offline: HF_HUB_OFFLINE=1
    run = run_to_exit(server_side(tiny_model_dir, env=env, config=lora_config(tmp_path, lora)))
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr[-2000:]
    assert lines[0].startswith(f"callgate: refusing to start: models.aliases.{HOTEL}.lora ")
    assert lora in lines[0] and why in lines[0]
