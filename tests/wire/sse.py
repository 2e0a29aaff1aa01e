"""A strict parser for the server's Server-Sent Events stream.

Browsers and the `openai` client forgive sloppy framing (CR line ends, missing blank lines,
multi-line `data:` fields); the gateway's parser is unknown, so the tests do not forgive
anything. The server must emit exactly `data: <payload>\\n\\n` per event, JSON payloads with
no duplicate keys and no NaN, and `data: [DONE]` last. Any deviation raises `SSEError`, so a
broken stream fails the test that reads it instead of being silently repaired.

JSON objects keep their key order (`json.loads` builds ordered dicts), so tests can compare
`list(chunk)` against the protocol's field order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"
_PREFIX = "data: "


class SSEError(ValueError):
    """The bytes are not a well-framed event stream of the shape the protocol requires."""


def parse_events(body: bytes | str, *, allow_comments: bool = False) -> list[str]:
    """Return the raw `data:` payloads of a complete stream, in order.

    Every event must be exactly one line `data: <payload>` followed by one empty line, with `\\n`
    line ends. Comment lines (`: ping`) are refused unless `allow_comments` (keep-alives are off
    by default in the server); a comment must then be its own event (`: ...\\n\\n`).
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEError(f"stream is not valid UTF-8: {exc}") from exc
    else:
        text = body
    if "\r" in text:
        raise SSEError("stream contains a carriage return; events must use bare \\n line ends")
    if not text:
        raise SSEError("empty stream")
    if not text.endswith("\n\n"):
        raise SSEError(f"stream does not end with a blank line: ...{text[-80:]!r}")
    payloads: list[str] = []
    # Splitting on the separator leaves one trailing empty string after the last event.
    blocks = text[:-2].split("\n\n")
    for index, block in enumerate(blocks):
        if block == "":
            raise SSEError(f"event {index} is empty (extra blank line)")
        if "\n" in block:
            raise SSEError(f"event {index} has several lines (missing blank line?): {block!r}")
        if block.startswith(":"):
            if not allow_comments:
                raise SSEError(f"event {index} is a comment, which is not expected: {block!r}")
            continue
        if not block.startswith(_PREFIX):
            raise SSEError(f"event {index} is not a `data: ` line: {block!r}")
        payloads.append(block[len(_PREFIX) :])
    return payloads


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise SSEError(f"duplicate keys in JSON object: {keys}")
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise SSEError(f"non-standard JSON constant {name}")


def loads(payload: str) -> Any:
    """Parse JSON strictly: no duplicate keys, no NaN/Infinity; key order is preserved."""
    try:
        return json.loads(
            payload, object_pairs_hook=_strict_object, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        raise SSEError(f"payload is not JSON: {payload!r}: {exc}") from exc


def json_chunks(payloads: list[str]) -> list[dict[str, Any]]:
    """Check that `[DONE]` is the last payload and only there; parse the others as objects."""
    if not payloads or payloads[-1] != DONE:
        raise SSEError(f"stream does not end with data: [DONE]: {payloads[-1:]!r}")
    chunks: list[dict[str, Any]] = []
    for payload in payloads[:-1]:
        if payload == DONE:
            raise SSEError("data: [DONE] before the end of the stream")
        chunk = loads(payload)
        if not isinstance(chunk, dict):
            raise SSEError(f"payload is not a JSON object: {payload!r}")
        chunks.append(chunk)
    return chunks


@dataclass(frozen=True)
class ChatStream:
    """A parsed chat-completion stream: payloads, chunk objects and what they add up to."""

    payloads: list[str]
    chunks: list[dict[str, Any]]

    @property
    def choice_chunks(self) -> list[dict[str, Any]]:
        """Chunks that carry a choice (everything but a trailing usage-only chunk)."""
        return [c for c in self.chunks if c.get("choices")]

    @property
    def content(self) -> str:
        """The concatenated `delta.content` of all chunks."""
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.choice_chunks)

    @property
    def finish_reason(self) -> str | None:
        """The last non-null `finish_reason` in the stream."""
        reasons = [c["choices"][0].get("finish_reason") for c in self.choice_chunks]
        reasons = [r for r in reasons if r is not None]
        return reasons[-1] if reasons else None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The last non-null `usage` object (present with `stream_options.include_usage`)."""
        usages = [c.get("usage") for c in self.chunks if c.get("usage") is not None]
        return usages[-1] if usages else None


def parse_chat_stream(body: bytes | str, *, allow_comments: bool = False) -> ChatStream:
    """Parse a whole chat-completion SSE body strictly (framing, JSON, `[DONE]` last)."""
    payloads = parse_events(body, allow_comments=allow_comments)
    return ChatStream(payloads=payloads, chunks=json_chunks(payloads))
