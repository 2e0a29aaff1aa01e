"""Dialog -> prompt token ids, through the checkpoint's own chat template.

Three promises live here:

* **The system prompt.** Each alias has a sandboxed Jinja2 template rendered with the request's
  `biz_params` as `biz`. The request's own `system` messages follow it, in order, in the one
  system message at the head of the dialog. Static text first, per-call values last: the
  prefix cache then covers what all calls share.
* **Text is text.** A caller who says `<|im_end|>` must not end the turn for the model. The
  template is rendered with unguessable placeholders in place of message text; the template's
  own parts are tokenized with special tokens recognised and every message text with special
  tokens split into plain pieces.
* **Long calls keep working.** When the dialog does not fit, the oldest turns go first (the
  system message and the latest turns stay). Only a single message too long for the context is
  an error.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from jinja2 import ChainableUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.base.errors import ContextTooLong, InvalidRequest
from server.text.end_call import INSTRUCTION as END_CALL_INSTRUCTION

if TYPE_CHECKING:
    from server.base.settings import AliasSettings

Message = tuple[str, str]  # (role, text): one message of the dialog


class Encoder(Protocol):
    """What prompt building needs from a tokenizer; `tokenizer.py` adapts Hugging Face's."""

    def render(self, messages: list[dict[str, str]], *, thinking: bool) -> str: ...
    def encode_template(self, text: str) -> Sequence[int]: ...
    def encode_text(self, text: str) -> Sequence[int]: ...


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    dropped_turns: int


class SystemPrompts:
    """Per-alias system prompt templates, compiled once."""

    def __init__(self, templates: Mapping[str, str]) -> None:
        env = ImmutableSandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
        self._templates = {alias: env.from_string(src) for alias, src in templates.items()}

    def render(self, alias: str, biz: Mapping[str, Any] | None) -> str:
        return self._render(alias, dict(biz or {}))

    def fixed_prefix(self, alias: str) -> str:
        """The start of the alias's system prompt that is the same for every call: the text
        before its first per-call value (all of it when it has none), for start-up warming.

        Found by rendering with no biz_params and with two probes whose every value is a
        different marker, and keeping what the three have in common. A condition on a value's
        content (`{% if biz.tier == "gold" %}`) can hide from the probes; a prefix found too
        long only wastes the warming, it changes no call. A template that fails on the probes
        (arithmetic on a value) has no prefix known: ""."""
        try:
            probes: tuple[dict[str, Any], ...] = ({}, _Probe("\x1fa"), _Probe("\x1fb"))
            renders = [self._render(alias, biz) for biz in probes]
        except InvalidRequest:
            return ""
        first = renders[0]
        end = next(
            (i for i, chars in enumerate(zip(*renders, strict=False)) if len(set(chars)) > 1), None
        )
        return first[: min(map(len, renders)) if end is None else end]

    def _render(self, alias: str, biz: Mapping[str, Any]) -> str:
        try:
            return self._templates[alias].render(biz=biz).strip()
        except (TemplateError, TypeError, ValueError, ArithmeticError, RecursionError) as e:
            # The operator's template met this call's data and could not cope: the request's
            # biz_params are the variable part, so the caller gets a 400 naming the alias.
            raise InvalidRequest(
                f"biz_params do not fit the system prompt of model {alias!r}: {e}"
            ) from None


class _Probe(dict[str, Any]):
    """biz_params whose every value is `marker` (`SystemPrompts.fixed_prefix`)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self._marker = marker

    def __missing__(self, key: str) -> str:
        return self._marker

    def get(self, key: str, default: Any = None) -> str:  # type: ignore[override]
        return self._marker


def alias_template(template: str, end_call: bool) -> str:
    """The alias's system prompt template, and after it, when the alias may end calls, how to
    (`server/text/end_call.py`): its role first, then the rule and its examples."""
    if not end_call:
        return template
    if not template.strip():
        return END_CALL_INSTRUCTION
    return f"{template.rstrip()}\n\n{END_CALL_INSTRUCTION}"


def alias_prompts(aliases: Mapping[str, AliasSettings]) -> SystemPrompts:
    """The aliases' system prompt templates as their turns and their warm-ups render them."""
    return SystemPrompts(
        {a: alias_template(s.system_prompt, s.end_call) for a, s in aliases.items()}
    )


def assemble(system_prompt: str, turns: Sequence[Message]) -> list[Message]:
    """One system message first (alias prompt, then the request's own), then the dialog."""
    system = [system_prompt] if system_prompt else []
    system += [text for role, text in turns if role == "system" and text]
    dialog = [(role, text) for role, text in turns if role != "system"]
    return ([("system", "\n\n".join(system))] if system else []) + dialog


class PromptBuilder:
    """Token ids for a dialog, fitted into the context."""

    def __init__(
        self, encoder: Encoder, max_model_len: int, reserve: int, *, thinking: bool
    ) -> None:
        self._encoder = encoder
        self._thinking = thinking  # the template's: an empty think block when off (Qwen3)
        self._max_len = max_model_len
        # Keep room for a full reply when history must be dropped anyway.
        self._budget = max(1, max_model_len - reserve)
        self._nonce = secrets.token_hex(8)
        self._split = re.compile(f"\x1f{self._nonce}:(\\d+)\x1f")

    def build(self, dialog: Sequence[Message]) -> Prompt:
        texts = [self._encoder.encode_text(text) for _, text in dialog]
        keep_head = 1 if dialog and dialog[0][0] == "system" else 0

        def fit(first: int) -> list[int]:
            chosen = list(range(keep_head)) + list(range(first, len(dialog)))
            return self._render(dialog, texts, chosen)

        ids = fit(keep_head)
        dropped = 0
        if len(ids) > self._budget and len(dialog) - keep_head > 1:
            # Token count falls as the start moves later: binary search the earliest start
            # that fits, keeping at least the last message.
            lo, hi = keep_head + 1, len(dialog) - 1
            best = fit(hi)
            best_first = hi
            while lo < hi:
                mid = (lo + hi) // 2
                candidate = fit(mid)
                if len(candidate) <= self._budget:
                    best, best_first, hi = candidate, mid, mid
                else:
                    lo = mid + 1
            ids, dropped = best, best_first - keep_head
        if len(ids) >= self._max_len:
            raise ContextTooLong(
                f"the latest message needs {len(ids)} tokens with the system prompt; "
                f"the context holds {self._max_len}"
            )
        return Prompt(ids, dropped)

    def _render(
        self, dialog: Sequence[Message], texts: list[Sequence[int]], chosen: list[int]
    ) -> list[int]:
        messages = [{"role": dialog[i][0], "content": f"\x1f{self._nonce}:{i}\x1f"} for i in chosen]
        try:
            rendered = self._encoder.render(messages, thinking=self._thinking)
        except TemplateError as e:
            # The checkpoint's chat template refused this dialog (`raise_exception`, e.g.
            # roles that do not alternate): the dialog is the caller's part, so a 400.
            why = str(e)[:200]
            raise InvalidRequest(f"the model's chat template refused this dialog: {why}") from None
        ids: list[int] = []
        parts = self._split.split(rendered)
        # split() alternates: template text, message index, template text, ...
        for n, part in enumerate(parts):
            if n % 2:
                ids += texts[int(part)]
            elif part:
                ids += self._encoder.encode_template(part)
        return ids
