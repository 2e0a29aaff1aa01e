"""LoRA adapters by model alias: each `models.aliases.<name>.lora` resolved once, at start-up.

The promise: every configured adapter is found before the engine is built. Each becomes a
local directory with an `adapter_config.json` (a LoRA rank `r`) and a weights file, or start-up
is refused with one line naming the alias and what was configured (`AdapterError`), within
seconds and before vLLM is imported. A local directory is taken as it is; anything else that
reads as a hub id (`org/name`) is looked up in the Hugging Face cache, then downloaded once
(metadata requests time out after `HUB_TIMEOUT_S`; offline mode fails at once). Whether vLLM
can apply the weights to the checkpoint is known only when the engine loads them (exit 4).

From the hub, only the adapter's own files are fetched (`ADAPTER_FILES`: its config and
weights, not whatever else the repository holds), at `lora_revision`, a commit hash: a branch
can be moved by whoever controls the repository, a commit cannot. Without one the main branch
is served, and start-up says which commit that was so that it can be pinned.

The engine is sized from the adapters: `enable_lora`, the smallest `max_lora_rank` vLLM
accepts that holds the largest rank, and `max_loras` = the number of distinct adapters, so
turns of every alias share one batch. `engine.extra` may lower `max_loras` (memory) but not set
the two derived values. Aliases that name the same adapter share one engine adapter (one id).

Pure but for reading the adapter configs (and the hub cache): no vLLM, no engine.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.base.settings import AliasSettings

log = logging.getLogger("callgate")

# vLLM's `MaxLoRARanks` (vllm/config/lora.py, the same from 0.26 through 0.32): the only
# values `max_lora_rank` takes. A test compares them with the installed vLLM's.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Engine arguments derived here that `engine.extra` must not set while an alias has an adapter.
DERIVED_ARGS = ("enable_lora", "max_lora_rank")
HUB_TIMEOUT_S = 10.0
CONFIG_FILE = "adapter_config.json"
# The weight files vLLM's LoRA loader reads (vllm/lora/lora_model.py), in its order.
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
# Everything fetched from the hub: what vLLM's loader and `_rank` read, nothing else.
ADAPTER_FILES = (CONFIG_FILE, *WEIGHT_FILES)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class AdapterError(ValueError):
    """An adapter the server cannot serve; the message is the one line shown at start-up."""


@dataclass(frozen=True)
class Adapter:
    """One adapter as the engine loads it: a name and id unique in the engine, a local dir."""

    name: str  # the first alias that names it
    lora_id: int  # 1, 2, ... (vLLM wants ids > 0)
    path: str
    rank: int


@dataclass(frozen=True)
class Adapters:
    """The aliases served through an adapter; every other alias is the base model."""

    by_alias: Mapping[str, Adapter] = field(default_factory=dict)

    @property
    def distinct(self) -> list[Adapter]:
        """Each adapter once, in id order."""
        return sorted({a.lora_id: a for a in self.by_alias.values()}.values(), key=_id)

    def engine_args(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The vLLM engine arguments these adapters need beside `extra` (`engine.extra`, whose
        `max_loras` stays the operator's); none without adapters."""
        adapters = self.distinct
        if not adapters:
            return {}
        args: dict[str, Any] = {
            "enable_lora": True,
            "max_lora_rank": lora_rank_for(max(a.rank for a in adapters)),
        }
        if "max_loras" not in extra:
            args["max_loras"] = len(adapters)
        return args

    def describe(self) -> str:
        """For the start-up log: `qwen-plus-hotel -> /path (rank 8)`, or `none`."""
        parts = [f"{alias} -> {a.path} (rank {a.rank})" for alias, a in self.by_alias.items()]
        return ", ".join(parts) or "none"


def _id(adapter: Adapter) -> int:
    return adapter.lora_id


def lora_rank_for(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds `rank`."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def resolve(aliases: Mapping[str, AliasSettings], extra: Mapping[str, Any]) -> Adapters:
    """Resolve every alias's adapter (see the module docstring); `extra` is `engine.extra`."""
    by_source: dict[tuple[str, str | None], Adapter] = {}
    by_alias: dict[str, Adapter] = {}
    for alias, settings in aliases.items():
        if settings.lora is None:
            if settings.lora_revision is not None:
                raise AdapterError(f"models.aliases.{alias}.lora_revision is set without a lora")
            continue
        where = f"models.aliases.{alias}.lora {settings.lora!r}"
        if settings.lora_revision is not None:
            where += f" at {settings.lora_revision}"
        source = (settings.lora, settings.lora_revision)
        if source not in by_source:
            path = _local_dir(settings.lora, settings.lora_revision, where)
            rank = _rank(path, where)
            if not any((path / name).is_file() for name in WEIGHT_FILES):
                raise AdapterError(f"{where}: {path} has no {WEIGHT_FILES[0]} (or .bin, .pt)")
            try:
                lora_rank_for(rank)
            except ValueError as e:
                raise AdapterError(f"{where}: {e}") from None
            by_source[source] = Adapter(alias, len(by_source) + 1, str(path), rank)
        by_alias[alias] = by_source[source]
    if not by_alias:
        return Adapters()
    clash = [k for k in DERIVED_ARGS if k in extra]
    if clash:
        raise AdapterError(
            f"engine.extra sets {', '.join(clash)}, which the adapters of models.aliases "
            "decide; remove it"
        )
    max_loras = extra.get("max_loras")
    if max_loras is not None and (not isinstance(max_loras, int) or max_loras < 1):
        raise AdapterError(f"engine.extra.max_loras must be a positive integer, not {max_loras!r}")
    return Adapters(by_alias)


def _local_dir(source: str, revision: str | None, where: str) -> Path:
    """The adapter's directory: `source` itself, or the hub repository's snapshot at
    `revision` (cached, else downloaded)."""
    path = Path(source).expanduser()
    if path.exists() or not _HUB_ID.match(source):
        if revision is not None:
            raise AdapterError(f"{where}: lora_revision is for a hub id, not a directory")
        if not (path / CONFIG_FILE).is_file():
            raise AdapterError(f"{where}: {path} is not a directory with an {CONFIG_FILE}")
        return path.resolve()
    snapshot = _hub_snapshot(source, revision, where)
    if revision is None:  # the snapshot directory's name is the commit it holds
        log.warning(
            "%s is not pinned: serving commit %s of its main branch; set lora_revision: %s "
            "beside it to keep serving this one",
            where,
            snapshot.name,
            snapshot.name,
        )
    return snapshot


def _hub_snapshot(repo_id: str, revision: str | None, where: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached (or a broken cache entry): try the hub once
        pass
    if _offline():
        raise AdapterError(
            f"{where}: no such directory, and not in the Hugging Face cache (offline mode)"
        )
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(ADAPTER_FILES),
                etag_timeout=HUB_TIMEOUT_S,
            )
        )
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AdapterError(
            f"{where}: no such directory, not in the Hugging Face cache, and the download "
            f"failed: {reason}"
        ) from None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)  # HF_HUB_OFFLINE, read when huggingface_hub loads


def _rank(path: Path, where: str) -> int:
    """The adapter's largest rank: `r`, or a larger one from its per-module `rank_pattern`."""
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise AdapterError(f"{where}: {path} has no {CONFIG_FILE}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{where}: {config_file} is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{where}: {config_file} is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{where}: {config_file} is a {config['peft_type']} adapter, not LoRA")
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise AdapterError(f"{where}: {config_file} has no positive integer rank `r`")
    return int(max(ranks))
