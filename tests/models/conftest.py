"""Fixtures of the model tier: callgate servers on the checkpoints with Qwen's real tokenizers and
chat templates, and Hugging Face's own tokenizers of those checkpoints, with which the tests
count prompts independently of the server.

The checkpoints themselves (`qwen_model_dir`, `qwen3_model_dir`) are in `tests/conftest.py`:
the unit tier's tokenizer tests use them too, and a session builds each once. Each server here
is its module's own, started on first use by the harness (`launch_server`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TINY_CONFIG, Api, ServerHandle, launch_server


@contextlib.contextmanager
def _api_on(
    model_dir: Path,
    factory: pytest.TempPathFactory,
    make_api: Callable[[ServerHandle], Api],
    config: Path | None = None,
) -> Iterator[Api]:
    with launch_server(model_dir, factory.mktemp("server-logs"), config=config) as handle:
        yield make_api(handle)


@pytest.fixture(scope="module")
def qwen_api(qwen_model_dir: Path, tmp_path_factory: Any, make_api: Any) -> Iterator[Api]:
    """A server on the Qwen2.5 checkpoint, `tests/tiny.yaml` settings."""
    with _api_on(qwen_model_dir, tmp_path_factory, make_api) as api:
        yield api


@pytest.fixture(scope="module")
def qwen3_api(qwen3_model_dir: Path, tmp_path_factory: Any, make_api: Any) -> Iterator[Api]:
    """A server on the Qwen3 checkpoint, `tests/tiny.yaml` settings but for one alias: qwen-plus
    thinks (its own `enable_thinking: true`), qwen-max does not (`sampling.enable_thinking`'s
    default, off)."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["models"]["aliases"]["qwen-plus"]["enable_thinking"] = True
    path = tmp_path_factory.mktemp("qwen3-config") / "qwen3.yaml"
    path.write_text(yaml.safe_dump(config))
    with _api_on(qwen3_model_dir, tmp_path_factory, make_api, config=path) as api:
        yield api


def _hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer  # seconds to import: only where it is used

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def qwen_hf(qwen_model_dir: Path) -> Any:
    """Hugging Face's tokenizer of the Qwen2.5 checkpoint."""
    return _hf_tokenizer(qwen_model_dir)


@pytest.fixture(scope="module")
def qwen3_hf(qwen3_model_dir: Path) -> Any:
    """Hugging Face's tokenizer of the Qwen3 checkpoint."""
    return _hf_tokenizer(qwen3_model_dir)
