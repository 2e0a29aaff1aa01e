"""Which checkpoint a run serves (`server/engine/model_source.py`), without the network: the hub's
answers are replaced where a test needs one (the subprocess tests in test_real_model.py use
the real, unreachable hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine import model_source
from server.engine.model_source import Unavailable, resolve


def _hub(monkeypatch: pytest.MonkeyPatch, *, cached: bool, reachable: bool) -> None:
    monkeypatch.setattr(model_source, "_cached", lambda model: cached)
    why = "" if reachable else "not in the Hugging Face cache and example is unreachable (x)"
    monkeypatch.setattr(model_source, "_probe", lambda model: (reachable, why))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_checkpoint_directory_is_served_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    source = resolve(str(tmp_path), offline_fallback=True)
    assert source.model == str(tmp_path) and not source.embedded


def test_a_directory_without_a_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="has no config"):
        resolve(str(tmp_path), offline_fallback=True)


def test_a_missing_path_is_refused_even_with_the_fallback(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="no such directory"):
        resolve(str(tmp_path / "missing"), offline_fallback=True)


def test_a_cached_hub_model_with_the_hub_down_is_served_offline(monkeypatch) -> None:
    _hub(monkeypatch, cached=True, reachable=False)
    source = resolve("Qwen/Qwen2.5-0.5B-Instruct", offline_fallback=True)
    assert source.model == "Qwen/Qwen2.5-0.5B-Instruct" and source.offline


def test_a_reachable_hub_model_is_downloaded_not_replaced(monkeypatch) -> None:
    _hub(monkeypatch, cached=False, reachable=True)
    source = resolve("Qwen/Qwen2.5-0.5B-Instruct", offline_fallback=True)
    assert source.model == "Qwen/Qwen2.5-0.5B-Instruct" and not source.embedded


def test_without_the_fallback_an_unreachable_model_is_one_line(monkeypatch) -> None:
    _hub(monkeypatch, cached=False, reachable=False)
    with pytest.raises(Unavailable) as caught:
        resolve("Qwen/Qwen2.5-0.5B-Instruct", offline_fallback=False)
    assert str(caught.value).startswith("cannot load model Qwen/Qwen2.5-0.5B-Instruct: ")
    assert "\n" not in str(caught.value)


def test_with_the_fallback_the_embedded_model_is_served_and_the_reason_said(
    monkeypatch, tmp_path: Path
) -> None:
    _hub(monkeypatch, cached=False, reachable=False)
    monkeypatch.setattr("server.engine.model_source.ensure_embedded", lambda: tmp_path)
    source = resolve("Qwen/Qwen2.5-0.5B-Instruct", offline_fallback=True)
    assert source.embedded and source.model == str(tmp_path)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in source.why and "unreachable" in source.why


def test_hf_hub_offline_means_no_probe(monkeypatch) -> None:
    monkeypatch.setattr(model_source, "_cached", lambda model: False)

    def probe(model: str) -> tuple[bool, str]:
        raise AssertionError("probed the hub with HF_HUB_OFFLINE set")

    monkeypatch.setattr(model_source, "_probe", probe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Unavailable, match="HF_HUB_OFFLINE is set"):
        resolve("Qwen/Qwen2.5-0.5B-Instruct", offline_fallback=False)
