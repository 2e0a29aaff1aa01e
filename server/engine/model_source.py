"""Which checkpoint this run serves, decided before anything heavy is imported.

`engine.model` is a local directory or a Hugging Face hub id. A hub id is served when it can be
had: cached, or the hub answers for it. When neither holds and the run allows it
(`engine.offline_fallback`, the CPU config's first run), the embedded SmolLM2-135M-Instruct
(`server/engine/embedded.py`) is served instead and the reason is said in one line. Anything
else that cannot be loaded is `Unavailable`: one line naming the model and the cause, no traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from server.base.logs import one_line
from server.engine.embedded import EMBEDDED_NAME, ensure_embedded
from server.engine.embedded import Unavailable as Unavailable

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Source:
    model: str  # what the engine and tokenizer load: a directory or a hub id
    why: str  # one line: where it comes from
    embedded: bool = False
    offline: bool = False  # served from the cache with the hub unreachable: do not retry it


def resolve(model: str, *, offline_fallback: bool) -> Source:
    """Where `model` comes from, or the embedded model, or `Unavailable`."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise Unavailable(f"cannot load model {model}: the directory has no config.json")
        return Source(str(path), f"local checkpoint {path}")
    if _looks_like_path(model):
        raise Unavailable(f"cannot load model {model}: no such directory")
    if _cached(model):
        reachable, _ = _probe(model) if not _hub_offline() else (False, "")
        return Source(model, f"{model} from the Hugging Face cache", offline=not reachable)
    hub = _hub()
    if _hub_offline():
        cause = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
    else:
        reachable, cause = _probe(model)
        if reachable:
            return Source(model, f"{model} from {hub} (downloaded on first use)")
    if offline_fallback:
        directory = ensure_embedded()
        return Source(
            str(directory),
            f"the embedded {EMBEDDED_NAME} ({directory}), because {model}: {cause}",
            embedded=True,
        )
    raise Unavailable(f"cannot load model {model}: {cause}")


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or os.sep + os.sep in model


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub() -> str:
    """The hub's host (HF_ENDPOINT, default huggingface.co)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).netloc or constants.ENDPOINT


def _cached(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def _probe(model: str) -> tuple[bool, str]:
    """(the hub answers for `model`, why not)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    hub = _hub()
    try:
        HfApi().model_info(model, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError:
        return False, f"it is gated on {hub} (set HF_TOKEN with access to it)"
    except RepositoryNotFoundError:
        return False, f"no such model on {hub} (or it is private: set HF_TOKEN)"
    except HFValidationError as e:
        return False, f"not a directory and not a valid hub id ({e})"
    except Exception as e:  # the network: DNS, refused, timeout, proxy
        return False, f"not in the Hugging Face cache and {hub} is unreachable ({one_line(e)})"
    return True, ""
