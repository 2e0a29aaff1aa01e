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


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("engine:\n  modle: typo\n", "engine.modle: Extra inputs are not permitted"),
        ("engine:\n  max_num_seqs: 0\n", "engine.max_num_seqs: Input should be greater than"),
        ("server:\n  port: sk-not-a-port-0123456789\n", "server.port: Input should be a valid"),
        ("engine: [1,\n", "not valid YAML settings"),
        ("- a list\n", "top level must be a mapping"),
    ],
)
def test_a_settings_file_that_does_not_load_refuses_to_start_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, why: str
) -> None:
    """Exit 2 (a setting the server will not run with), one line naming the field and the
    reason, no traceback, and never the value given: it may be an auth code."""
    from server.__main__ import main

    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callgate: refusing to start: ") and err.count("\n") == 1, err
    assert why in err
    assert "sk-not-a-port" not in err and "Traceback" not in err


def test_a_missing_settings_file_refuses_to_start_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import main

    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == (
        "callgate: refusing to start: cannot read the settings file: No such file or directory "
        f"({tmp_path / 'missing.yaml'})\n"
    )
