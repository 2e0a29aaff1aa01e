"""configs/gpu.yaml, the production settings: they load, and every alias's system prompt is in a
spoken style.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.tools.deploy.files import (
    ROOT,
)


def test_gpu_config_loads_with_the_server_settings() -> None:
    from server.base.settings import load_settings

    settings = load_settings(ROOT / "configs" / "gpu.yaml")
    engine = settings.engine
    assert engine.model == "Qwen/Qwen2.5-7B-Instruct"
    assert engine.gpu_memory_utilization == 0.90
    assert engine.max_num_seqs == 256
    assert engine.enable_prefix_caching and not engine.enforce_eager
    # Several GPUs behind the address: calls stay on their core, admission scales with the cores.
    assert engine.call_affinity and engine.data_parallel_size >= 1
    assert settings.limits.max_in_flight is None
    assert {"qwen-plus", "qwen-max", "qwen-turbo"} <= settings.models.aliases.keys()
    assert not settings.auth.codes or os.environ.get("CALLGATE_AUTH_CODES"), "no codes in git"


@pytest.mark.parametrize("biz", [{"city": "Hangzhou"}, {}, {"city": "Hangzhou", "name": "Li"}])
def test_gpu_config_system_prompt_is_spoken_style(biz: dict[str, str]) -> None:
    from server.base.settings import load_settings
    from server.text.prompt import SystemPrompts

    settings = load_settings(ROOT / "configs" / "gpu.yaml")
    prompts = SystemPrompts({a: s.system_prompt for a, s in settings.models.aliases.items()})
    for alias, alias_settings in settings.models.aliases.items():
        text = prompts.render(alias, biz)
        assert ("Hangzhou" in text) == ("city" in biz), text
        assert not re.search(r"[*#`]|^\s*[-•]\s", text, re.M), "markdown in a spoken prompt"
        assert "None" not in text and "{" not in text
        assert alias_settings.fallback_text.strip()
