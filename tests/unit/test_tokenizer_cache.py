"""The tokenizer caches are bounded by the bytes they hold, not by their number of entries."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from server.text.tokenizer import CACHE_MAX_CHARS, _ByteBoundedCache


class _CharTokenizer:
    """One id per character; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(ids=[ord(c) for c in text])


def test_entries_are_evicted_by_bytes_oldest_first() -> None:
    tok = _CharTokenizer()
    cache = _ByteBoundedCache(tok, max_bytes=200_000)  # type: ignore[arg-type]
    texts = [f"{i:05d}" + "x" * (CACHE_MAX_CHARS - 5) for i in range(100)]
    for text in texts:
        assert list(cache(text)) == [ord(c) for c in text]
    assert cache.bytes <= 200_000
    calls = tok.calls
    cache(texts[-1])  # recent: a hit
    assert tok.calls == calls
    cache(texts[0])  # long evicted: encoded again
    assert tok.calls == calls + 1


def test_worst_case_memory_is_the_byte_bound() -> None:
    tok = _CharTokenizer()
    cache = _ByteBoundedCache(tok, max_bytes=1_000_000)  # type: ignore[arg-type]
    for i in range(2000):  # about 100 MB of entries if they were all kept
        cache(f"{i}".ljust(CACHE_MAX_CHARS, "y"))
    assert cache.bytes <= 1_000_000


def test_threads_share_the_cache_safely() -> None:
    tok = _CharTokenizer()
    cache = _ByteBoundedCache(tok, max_bytes=50_000)  # type: ignore[arg-type]

    def work(offset: int) -> None:
        for i in range(500):
            text = f"{(i + offset) % 97}-text"
            assert list(cache(text)) == [ord(c) for c in text]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0 < cache.bytes <= 50_000
