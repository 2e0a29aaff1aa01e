"""The checkpoint's tokenizer and chat template, adapted to what `prompt.py` needs.

Hugging Face's fast tokenizer recognises its added tokens anywhere in the text it is given. That
is right for the chat template's own markers and wrong for what a caller said, so this keeps two
copies of the Rust tokenizer: one that parses added tokens (template parts) and one for message
texts, in which every added token is marked special and `encode_special_tokens` is set, so a
caller's `<|im_end|>` is plain text. Marking them all matters: `encode_special_tokens` splits
only tokens marked special, and Qwen's tokenizers add `<think>`, `</think>`, `<tool_call>` and
the FIM tokens as non-special, so without it those would reach the model as control ids.

Every turn of a call resends the whole dialog, so encodings are cached: a turn tokenizes only
what is new (measured with the test checkpoint, a 121-message dialog: 12.6 ms uncached, see
`benchmarks/README.md`). The template's own pieces repeat in every prompt and are cached too.
Both caches are bounded by the bytes they hold.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer


class ChatTokenizer:
    def __init__(self, hf_tokenizer: Any) -> None:
        if not getattr(hf_tokenizer, "chat_template", None):
            raise ValueError("the checkpoint has no chat template")
        self._hf = hf_tokenizer
        backend: Tokenizer = hf_tokenizer.backend_tokenizer
        self._special = Tokenizer.from_str(backend.to_str())
        self._special.encode_special_tokens = False
        self._plain = Tokenizer.from_str(_all_added_special(backend.to_str()))
        self._plain.encode_special_tokens = True
        self._template_ids = _ByteBoundedCache(self._special, TEMPLATE_CACHE_BYTES)
        self._text_ids = _ByteBoundedCache(self._plain, TEXT_CACHE_BYTES)

    @classmethod
    def load(cls, model: str, *, trust_remote_code: bool) -> ChatTokenizer:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        return cls(hf)

    def render(self, messages: list[dict[str, str]], *, thinking: bool) -> str:
        """The chat template's text; `thinking` is Qwen3's `enable_thinking` (other templates
        ignore it)."""
        text = self._hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
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


def _all_added_special(tokenizer_json: str) -> str:
    """The same tokenizer with every added token marked special (ids unchanged)."""
    data = json.loads(tokenizer_json)
    for token in data.get("added_tokens", []):
        token["special"] = True
    return json.dumps(data)


TEMPLATE_CACHE_BYTES = 8 * 2**20  # distinct template pieces: a handful per role
TEXT_CACHE_BYTES = 128 * 2**20  # message texts: the histories of the calls in flight
CACHE_MAX_CHARS = 4096  # longer texts are rare; encoding them again is cheaper than the memory


def _cost(text: str, ids: tuple[int, ...]) -> int:
    """About what one entry holds in memory: the string, the tuple and its int objects."""
    return sys.getsizeof(text) + sys.getsizeof(ids) + 32 * len(ids)


class _ByteBoundedCache:
    """Least-recently-used, bounded by the bytes its entries hold rather than their number
    (by number, 32768 entries of up to 4096 characters could hold gigabytes). Thread-safe:
    large requests are planned off the event loop."""

    def __init__(self, tokenizer: Tokenizer, max_bytes: int) -> None:
        self._tokenizer = tokenizer
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()

    def __call__(self, text: str) -> Sequence[int]:
        if len(text) > CACHE_MAX_CHARS:
            ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
            return ids
        with self._lock:
            hit = self._entries.get(text)
            if hit is not None:
                self._entries.move_to_end(text)
                return hit
        encoded = tuple(self._tokenizer.encode(text, add_special_tokens=False).ids)
        with self._lock:
            if text not in self._entries:
                self._entries[text] = encoded
                self.bytes += _cost(text, encoded)
                while self.bytes > self._max_bytes:
                    old_text, old_ids = self._entries.popitem(last=False)
                    self.bytes -= _cost(old_text, old_ids)
        return encoded
