"""The chunk encoder timing behind `python -m benchmarks.encoder_bench` and `make bench`.

Every generated token becomes one SSE chunk, so at 64 concurrent streams and ~30 tokens/s each
the encoder runs ~2000 times a second on the event loop that also reads the engine's output.
callgate renders chunks from a pre-built byte template plus one JSON string escape
(`server.wire.chunks.ChunkRenderer`); this measures that against the obvious alternatives, building
the chunk as a pydantic model and as a dict through `json.dumps`, per chunk, on this machine.
Target: under 2 µs per content chunk for the renderer.

The reference renderings are also the definition of "the same chunk": `same_chunk` compares the
renderer's bytes with the pydantic rendering (values and key order), and the tests use it.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from benchmarks.lib import machine
from server.wire.chunks import ChunkRenderer

TARGET_US = 2.0
MODEL = "qwen-plus"
REQUEST_ID = "chatcmpl-0f8c3a5e-7ae6-95f2-9b1c-4b26d1a290c5"
CREATED = 1732000523
# A typical English token, a Chinese one, and one that needs escaping.
TEXTS = {"english": " Hello", "chinese": "您好", "escapes": 'say "hi"\n\\'}


class _Choice(BaseModel):
    delta: dict[str, str]
    finish_reason: str | None = None
    index: int = 0
    logprobs: None = None


class _Chunk(BaseModel):
    """DashScope's chunk, field order included (pydantic dumps fields in declaration order)."""

    choices: list[_Choice]
    object: str = "chat.completion.chunk"
    usage: dict[str, Any] | None = None
    created: int
    system_fingerprint: str | None = None
    model: str
    id: str


def pydantic_content(text: str) -> bytes:
    chunk = _Chunk(
        choices=[_Choice(delta={"content": text})], created=CREATED, model=MODEL, id=REQUEST_ID
    )
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


def json_content(text: str) -> bytes:
    chunk = {
        "choices": [
            {"delta": {"content": text}, "finish_reason": None, "index": 0, "logprobs": None}
        ],
        "object": "chat.completion.chunk",
        "usage": None,
        "created": CREATED,
        "system_fingerprint": None,
        "model": MODEL,
        "id": REQUEST_ID,
    }
    return (
        b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


def _ordered(data: bytes) -> Any:
    """Parse one `data: {...}\\n\\n` event keeping key order (pairs lists, recursively)."""
    if not (data.startswith(b"data: ") and data.endswith(b"\n\n")):
        raise ValueError(f"not one SSE data event: {data[:40]!r}")
    return json.loads(data[6:-2], object_pairs_hook=lambda pairs: pairs)


def same_chunk(a: bytes, b: bytes) -> bool:
    """Equal as SSE events: same values, same key order (escaping style may differ)."""
    return bool(_ordered(a) == _ordered(b))


def renderer_content() -> Callable[[str], bytes]:
    """The server's renderer (`server.wire.chunks.ChunkRenderer`) for one stream's chunks."""
    return ChunkRenderer(MODEL, REQUEST_ID, CREATED).content


def time_per_call_us(fn: Callable[[str], bytes], text: str, number: int, repeat: int) -> float:
    """Best of `repeat` runs of `number` calls, in µs per call (best = least disturbed)."""
    timer = timeit.Timer(lambda: fn(text))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def run(number: int, repeat: int) -> dict[str, Any]:
    """Time every encoder on every text; check each renders the same chunk as pydantic."""
    impls: dict[str, Callable[[str], bytes]] = {
        "ChunkRenderer (server.wire.chunks)": renderer_content(),
        "pydantic model": pydantic_content,
        "dict + json.dumps": json_content,
    }
    rows: dict[str, dict[str, float]] = {}
    agree: dict[str, bool] = {}
    for name, fn in impls.items():
        rows[name] = {}
        for label, text in TEXTS.items():
            agree.setdefault(name, True)
            agree[name] &= same_chunk(fn(text), pydantic_content(text))
            rows[name][label] = round(time_per_call_us(fn, text, number, repeat), 3)
    return {
        "tool": "benchmarks.encoder_bench",
        "target_us": TARGET_US,
        "us_per_chunk": rows,
        "same_chunk_as_pydantic": agree,
        "machine": machine.describe(),
    }
