from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.base.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_shipped_configs_load(name: str) -> None:
    settings = load_settings(ROOT / "configs" / name)
    assert settings.models.default in settings.models.aliases


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  modle: typo\n")
    with pytest.raises(ValidationError):
        load_settings(bad)


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine:\n  max_model_len: 2048\n  model: m\n")
    monkeypatch.setenv("CALLGATE_ENGINE__MAX_MODEL_LEN", "1024")
    monkeypatch.setenv("CALLGATE_LIMITS__MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("CALLGATE_AUTH_CODES", "a, b")
    s = load_settings(cfg)
    assert s.engine.max_model_len == 1024 and s.engine.model == "m"
    assert s.limits.max_in_flight == 7
    assert [c.get_secret_value() for c in s.auth.codes] == ["a", "b"]


def test_auth_codes_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLGATE_AUTH_CODES", "sk-secret-123")
    s = load_settings(None)
    assert "sk-secret-123" not in repr(s) and "sk-secret-123" not in str(s.model_dump())


def test_default_alias_must_exist(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  default: nope\n  aliases:\n    qwen-plus: {}\n")
    with pytest.raises(ValidationError):
        load_settings(cfg)


def test_keepalive_pings_need_sse_starlette(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLGATE_SERVER__SSE_PING_S", "15")
    with pytest.raises(ValidationError):
        load_settings(None)
    monkeypatch.setenv("CALLGATE_SERVER__SSE", "sse-starlette")
    assert load_settings(None).server.sse_ping_s == 15


def test_an_alias_may_name_a_lora_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  aliases:\n    qwen-plus: {}\n    qwen-plus-hotel:\n      lora: /a\n")
    aliases = load_settings(cfg).models.aliases
    assert aliases["qwen-plus"].lora is None and aliases["qwen-plus-hotel"].lora == "/a"
    monkeypatch.setenv("CALLGATE_MODELS__ALIASES", '{"qwen-plus": {"lora": "acme/hotel"}}')
    assert load_settings(None).models.aliases["qwen-plus"].lora == "acme/hotel"
