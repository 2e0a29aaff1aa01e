"""LoRA adapters by alias (`server.engine.adapters`): resolved to local dirs with a rank, or
refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.base.settings import AliasSettings
from server.engine.adapters import AdapterError, Adapters, lora_rank_for, resolve


def _adapter(path: Path, r: Any = 8, **config: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, **config}))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


def _aliases(**loras: str | None) -> dict[str, AliasSettings]:
    return {"qwen-plus": AliasSettings(), **{a: AliasSettings(lora=p) for a, p in loras.items()}}


@pytest.mark.parametrize(
    ("rank", "max_lora_rank"),
    [(1, 1), (2, 8), (8, 8), (9, 16), (64, 64), (300, 320), (321, 512), (512, 512)],
)
def test_the_smallest_max_lora_rank_vllm_takes(rank: int, max_lora_rank: int) -> None:
    assert lora_rank_for(rank) == max_lora_rank


def test_a_rank_above_vllms_largest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="512"):
        lora_rank_for(513)
    big = _adapter(tmp_path / "big", r=1024)
    with pytest.raises(AdapterError, match=r"models\.aliases\.qwen-plus-big\.lora .*1024"):
        resolve(_aliases(**{"qwen-plus-big": str(big)}), {})


def test_no_adapter_no_engine_arguments() -> None:
    adapters = resolve(_aliases(), {"enable_lora": True})  # extra passes through untouched
    assert adapters == Adapters()
    assert adapters.engine_args({}) == {}
    assert adapters.describe() == "none"


def test_one_adapter_sizes_the_engine(tmp_path: Path) -> None:
    hotel = _adapter(tmp_path / "hotel", r=8)
    adapters = resolve(_aliases(**{"qwen-plus-hotel": str(hotel)}), {})
    adapter = adapters.by_alias["qwen-plus-hotel"]
    assert (adapter.name, adapter.lora_id, adapter.path, adapter.rank) == (
        "qwen-plus-hotel",
        1,
        str(hotel.resolve()),
        8,
    )
    assert "qwen-plus" not in adapters.by_alias
    assert adapters.engine_args({}) == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1}
    assert adapters.describe() == f"qwen-plus-hotel -> {hotel.resolve()} (rank 8)"


def test_the_largest_rank_and_one_slot_per_distinct_adapter(tmp_path: Path) -> None:
    hotel = _adapter(tmp_path / "hotel", r=8)
    bank = _adapter(tmp_path / "bank", r=8, rank_pattern={"q_proj": 20})
    adapters = resolve(
        _aliases(**{"hotel": str(hotel), "bank": str(bank), "hotel-2": str(hotel)}), {}
    )
    assert adapters.by_alias["hotel-2"] == adapters.by_alias["hotel"]  # one adapter, one id
    assert [a.lora_id for a in adapters.distinct] == [1, 2]
    assert adapters.engine_args({}) == {"enable_lora": True, "max_lora_rank": 32, "max_loras": 2}


def test_extra_may_cap_max_loras(tmp_path: Path) -> None:
    hotel, bank = _adapter(tmp_path / "hotel"), _adapter(tmp_path / "bank")
    extra = {"max_loras": 1, "max_cpu_loras": 2}
    adapters = resolve(_aliases(hotel=str(hotel), bank=str(bank)), extra)
    assert adapters.engine_args(extra) == {"enable_lora": True, "max_lora_rank": 8}


@pytest.mark.parametrize("key", ["enable_lora", "max_lora_rank"])
def test_extra_may_not_set_what_the_adapters_decide(tmp_path: Path, key: str) -> None:
    hotel = _adapter(tmp_path / "hotel")
    with pytest.raises(AdapterError, match=f"engine.extra sets {key}"):
        resolve(_aliases(hotel=str(hotel)), {key: 16})


def test_a_missing_directory_is_refused_naming_alias_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(AdapterError) as err:
        resolve(_aliases(**{"qwen-plus-hotel": str(missing)}), {})
    message = str(err.value)
    assert "models.aliases.qwen-plus-hotel.lora" in message and str(missing) in message
    assert "\n" not in message


def test_a_directory_without_adapter_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"adapter_config\.json"):
        resolve(_aliases(hotel=str(tmp_path / "empty")), {})


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"r": 0}, "positive integer rank"),
        ({"r": "8"}, "positive integer rank"),
        ({"r": 8, "rank_pattern": {"q_proj": -1}}, "positive integer rank"),
        ({"r": 8, "peft_type": "IA3"}, "IA3 adapter, not LoRA"),
    ],
)
def test_an_adapter_config_without_a_lora_rank_is_refused(
    tmp_path: Path, config: dict[str, Any], why: str
) -> None:
    path = tmp_path / "bad"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=why):
        resolve(_aliases(hotel=str(path)), {})


def test_an_adapter_without_weights_is_refused(tmp_path: Path) -> None:
    path = _adapter(tmp_path / "half-copied")
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"has no adapter_model\.safetensors \(or \.bin, \.pt\)"):
        resolve(_aliases(hotel=str(path)), {})
    (path / "adapter_model.bin").write_bytes(b"")
    assert resolve(_aliases(hotel=str(path)), {}).by_alias["hotel"].rank == 8


def test_unreadable_adapter_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.mkdir()
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not readable JSON"):
        resolve(_aliases(hotel=str(path)), {})


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline: nothing is fetched."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_id_resolves_to_its_cached_snapshot(hub_cache: Path) -> None:
    repo = hub_cache / "models--acme--qwen-hotel-lora"
    snapshot = _adapter(repo / "snapshots" / "0123abcd", r=16)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    adapters = resolve(_aliases(hotel="acme/qwen-hotel-lora"), {})
    assert adapters.by_alias["hotel"].path == str(snapshot)
    assert adapters.engine_args({})["max_lora_rank"] == 16


def test_a_hub_id_not_cached_offline_is_refused(hub_cache: Path) -> None:
    with pytest.raises(AdapterError) as err:
        resolve(_aliases(**{"qwen-plus-hotel": "acme/not-cached"}), {})
    message = str(err.value)
    assert message.startswith("models.aliases.qwen-plus-hotel.lora 'acme/not-cached': ")
    assert "not in the Hugging Face cache (offline mode)" in message


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The hub unreachable from here: `snapshot_download` records its arguments and, for a
    download, answers with an adapter directory as the real one would (a cache miss first)."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        return str(_adapter(tmp_path / "snapshots" / (kwargs.get("revision") or "a" * 40)))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_hub_download_fetches_only_the_adapter_files_at_the_pinned_commit(
    hub_calls: list[dict[str, Any]],
) -> None:
    aliases = {"hotel": AliasSettings(lora="acme/qwen-hotel-lora", lora_revision=COMMIT)}
    adapters = resolve(aliases, {})
    assert adapters.by_alias["hotel"].path.endswith(COMMIT)
    cached, download = hub_calls
    assert cached["local_files_only"] and cached["revision"] == COMMIT
    assert download["repo_id"] == "acme/qwen-hotel-lora" and download["revision"] == COMMIT
    assert sorted(download["allow_patterns"]) == sorted(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "adapter_model.bin",
            "adapter_model.pt",
        ]
    )


def test_an_unpinned_hub_adapter_says_which_commit_it_serves(
    hub_calls: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="callgate"):
        resolve({"hotel": AliasSettings(lora="acme/qwen-hotel-lora")}, {})
    download = hub_calls[-1]
    assert download["revision"] is None and "allow_patterns" in download
    (record,) = caplog.records
    assert "is not pinned" in record.getMessage()
    assert f"lora_revision: {'a' * 40}" in record.getMessage()


def test_two_revisions_of_one_repository_are_two_adapters(hub_calls: list[dict[str, Any]]) -> None:
    aliases = {
        "old": AliasSettings(lora="acme/qwen-hotel-lora", lora_revision=COMMIT),
        "new": AliasSettings(lora="acme/qwen-hotel-lora", lora_revision="f" * 40),
        "new-2": AliasSettings(lora="acme/qwen-hotel-lora", lora_revision="f" * 40),
    }
    adapters = resolve(aliases, {})
    assert [a.lora_id for a in adapters.distinct] == [1, 2]
    assert adapters.by_alias["new-2"] == adapters.by_alias["new"]


@pytest.mark.parametrize("revision", ["main", "v1.0", "0123abcd", COMMIT.upper(), COMMIT + "0"])
def test_lora_revision_must_be_a_full_commit_hash(revision: str) -> None:
    with pytest.raises(ValueError, match="lora_revision"):
        AliasSettings(lora="acme/qwen-hotel-lora", lora_revision=revision)


def test_lora_revision_is_for_a_hub_id_only(tmp_path: Path) -> None:
    hotel = _adapter(tmp_path / "hotel")
    with pytest.raises(AdapterError, match="lora_revision is for a hub id, not a directory"):
        resolve({"hotel": AliasSettings(lora=str(hotel), lora_revision=COMMIT)}, {})
    with pytest.raises(AdapterError, match=r"models\.aliases\.hotel\.lora_revision is set without"):
        resolve({"hotel": AliasSettings(lora_revision=COMMIT)}, {})


def test_a_pinned_hub_id_resolves_to_that_cached_commit(hub_cache: Path) -> None:
    repo = hub_cache / "models--acme--qwen-hotel-lora"
    pinned = _adapter(repo / "snapshots" / COMMIT, r=16)
    _adapter(repo / "snapshots" / ("b" * 40), r=8)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    aliases = {"hotel": AliasSettings(lora="acme/qwen-hotel-lora", lora_revision=COMMIT)}
    assert resolve(aliases, {}).by_alias["hotel"].path == str(pinned)
