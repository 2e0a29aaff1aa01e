"""Start-up warming: each alias's fixed system prompt in the engine's prefix cache before `/ready`.

Every call of an alias starts with the same system prompt, and every turn resends it. Without
warming, the first calls after a start (or after a scale-up adds a replica) pay its whole prefill
on their first turn, while the caller waits in silence; a long prompt on a busy engine makes that
hundreds of milliseconds. So at start-up, once the engine is up and before the server says ready,
each alias's fixed prefix (`SystemPrompts.fixed_prefix`: the system prompt up to its first
per-call value) is run through the engine once, as the one system message of a dialog, in exactly
the token ids a turn's prompt starts with, generating one token that nobody reads. Its KV blocks
stay in vLLM's prefix cache, where the first turns of the first calls find them.

Once per engine, not per front-end process: with several workers (`server.workers`) they share
one engine core and only worker 0 warms (`Runtime(warms=...)`); the others' `/ready` waits for
it. With several engine cores the adapter's `Engine.warm` runs the prompt on each. Aliases whose
prefix and adapter are the same are run once. Warming goes to the back of vLLM's queue
(`PRIORITY_WARM`), behind any call. A failure is logged and the server serves anyway: warming
only saves time, it changes no reply.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.base.errors import CallgateError
from server.text.prompt import Encoder, PromptBuilder, alias_prompts, assemble

if TYPE_CHECKING:
    from server.base.settings import Settings
    from server.engine.api import Engine

log = logging.getLogger("callgate")


@dataclass(frozen=True)
class WarmPrompt:
    """One prompt to warm and the aliases that start with it."""

    aliases: tuple[str, ...]
    token_ids: list[int]
    adapter: str | None  # the aliases' LoRA adapter: its prefix cache is its own


def warm_prompts(settings: Settings, encoder: Encoder, engine: Engine) -> list[WarmPrompt]:
    """The distinct fixed prompt prefixes of the configured aliases, as token ids (aliases
    without a fixed system prompt have nothing to warm)."""
    aliases = settings.models.aliases
    prompts = alias_prompts(aliases)
    reserve = settings.sampling.max_tokens
    adapters = {alias: adapter.name for alias, adapter in engine.adapters.by_alias.items()}
    found: dict[tuple[tuple[int, ...], str | None], list[str]] = {}
    for alias in aliases:
        prefix = prompts.fixed_prefix(alias)
        if not prefix:
            continue
        try:
            builder = PromptBuilder(
                encoder, engine.max_model_len, reserve, thinking=settings.thinking(alias)
            )
            ids = builder.build(assemble(prefix, [])).token_ids
        except CallgateError as e:  # the chat template wants more than a system message
            log.warning("alias %s: its system prompt cannot be warmed: %s", alias, e.message)
            continue
        found.setdefault((tuple(ids), adapters.get(alias)), []).append(alias)
    return [WarmPrompt(tuple(names), list(ids), adapter) for (ids, adapter), names in found.items()]


async def warm(settings: Settings, encoder: Encoder, engine: Engine, priority: int) -> int:
    """Run every alias's fixed prompt prefix once through the engine; the prompts warmed."""
    prompts = warm_prompts(settings, encoder, engine)
    for prompt in prompts:
        started = time.perf_counter()
        cached = await engine.warm(prompt.token_ids, prompt.adapter, priority)
        log.info(
            "warmed the system prompt of %s: %d tokens (%d already cached) in %.0f ms",
            ", ".join(prompt.aliases),
            len(prompt.token_ids),
            cached,
            (time.perf_counter() - started) * 1000,
        )
    return len(prompts)
