"""Sampling: generation_config defaults, then the request, then the server's limits."""

from __future__ import annotations

import json

from server.text.sampling import sampling_kwargs
from server.wire.schemas import ChatRequest, parse_request

DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def req(**fields: object) -> ChatRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(json.dumps(body).encode())


def test_checkpoint_defaults_apply_when_the_request_is_silent() -> None:
    out = sampling_kwargs(req(), DEFAULTS, max_tokens_cap=64, room=1000)
    assert {k: out[k] for k in DEFAULTS} == DEFAULTS
    assert out["max_tokens"] == 64 and out["n"] == 1


def test_request_values_beat_defaults() -> None:
    out = sampling_kwargs(
        req(temperature="0.1", top_p=0.5, seed=7, stop="bye", presence_penalty=0.3),
        DEFAULTS,
        max_tokens_cap=64,
        room=1000,
    )
    assert (out["temperature"], out["top_p"], out["seed"]) == (0.1, 0.5, 7)
    assert out["stop"] == ["bye"] and out["presence_penalty"] == 0.3


def test_top_k_zero_and_minus_one_mean_off() -> None:
    for value in (0, -1, "-1"):
        assert sampling_kwargs(req(top_k=value), DEFAULTS, max_tokens_cap=8, room=99)["top_k"] == 0


def test_max_tokens_is_capped_by_config_and_by_the_room_left() -> None:
    assert (
        sampling_kwargs(req(max_tokens=10_000), {}, max_tokens_cap=64, room=1000)["max_tokens"]
        == 64
    )
    assert sampling_kwargs(req(max_tokens=50), {}, max_tokens_cap=64, room=20)["max_tokens"] == 20
    assert (
        sampling_kwargs(req(max_completion_tokens=5), {}, max_tokens_cap=64, room=99)["max_tokens"]
        == 5
    )


def test_checkpoint_max_new_tokens_is_a_default_not_a_cap_override() -> None:
    out = sampling_kwargs(req(), {"max_tokens": 4096}, max_tokens_cap=64, room=1000)
    assert out["max_tokens"] == 64


def test_min_tokens_never_exceeds_max_tokens() -> None:
    out = sampling_kwargs(req(min_tokens=500), {}, max_tokens_cap=64, room=1000)
    assert out["min_tokens"] == 64


def test_banned_tokens_become_a_logit_bias() -> None:
    out = sampling_kwargs(req(), {}, max_tokens_cap=8, room=99, banned_token_ids=(5, 6))
    assert out["logit_bias"] == {5: -100.0, 6: -100.0}
    assert "logit_bias" not in sampling_kwargs(req(), {}, max_tokens_cap=8, room=99)
