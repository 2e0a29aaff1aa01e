"""The checkpoint's tokenizer and chat template, adapted to what `prompt.py` needs.

Hugging Face's fast tokenizer recognises special tokens anywhere in the text it is given. That
is right for the chat template's own markers and wrong for what a caller said, so this keeps two
copies of the Rust tokenizer: one that parses special tokens (template parts) and one with
`encode_special_tokens` set, which treats `<|im_end|>` in a message as plain text.

Every turn of a call resends the whole dialog, so encodings are cached: a turn tokenizes only
what is new (measured with the test checkpoint, a 121-message dialog: 12.6 ms uncached, see
`benchmarks/README.md`). The template's own pieces repeat in every prompt and are cached too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer


class ChatTokenizer:
    def __init__(self, hf_tokenizer: Any, *, enable_thinking: bool) -> None:
        if not getattr(hf_tokenizer, "chat_template", None):
            raise ValueError("the checkpoint has no chat template")
        self._hf = hf_tokenizer
        self._template_kwargs = {"enable_thinking": enable_thinking}
        backend: Tokenizer = hf_tokenizer.backend_tokenizer
        self._special = Tokenizer.from_str(backend.to_str())
        self._special.encode_special_tokens = False
        self._plain = Tokenizer.from_str(backend.to_str())
        self._plain.encode_special_tokens = True
        self._template_ids = _cached(self._special, TEMPLATE_CACHE)
        self._text_ids = _cached(self._plain, TEXT_CACHE)

    @classmethod
    def load(cls, model: str, *, trust_remote_code: bool, enable_thinking: bool) -> ChatTokenizer:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        return cls(hf, enable_thinking=enable_thinking)

    def render(self, messages: list[dict[str, str]]) -> str:
        text = self._hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self._template_kwargs
        )
        assert isinstance(text, str)
        return text

    def encode_template(self, text: str) -> Sequence[int]:
        return self._template_ids(text)

    def encode_text(self, text: str) -> Sequence[int]:
        return self._text_ids(text) if text else ()

    def token_ids(self, *tokens: str) -> tuple[int, ...]:
        """Ids of the given tokens that exist as single tokens in this vocabulary."""
        vocab = self._hf.get_vocab()
        return tuple(vocab[t] for t in tokens if t in vocab)


TEMPLATE_CACHE = 1024  # distinct template pieces: a handful per role
TEXT_CACHE = 32768  # message texts: the histories of the calls in flight
CACHE_MAX_CHARS = 4096  # longer texts are rare; encoding them again is cheaper than the memory


def _cached(tokenizer: Tokenizer, size: int) -> Callable[[str], Sequence[int]]:
    @lru_cache(maxsize=size)
    def encode_short(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False).ids)

    def encode(text: str) -> Sequence[int]:
        if len(text) > CACHE_MAX_CHARS:
            ids: list[int] = tokenizer.encode(text, add_special_tokens=False).ids
            return ids
        return encode_short(text)

    return encode
