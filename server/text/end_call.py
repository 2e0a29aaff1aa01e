"""The model ends the call: a marker it writes after its goodbye, kept out of what is spoken.

The gateway protocol carries text only, so the model says that the conversation is over with a
short marker, `[END_CALL]`, that the alias's system prompt defines (`INSTRUCTION`, added when the
alias has `end_call` on). A marker fits every checkpoint the same way, Qwen's and the embedded
SmolLM2 alike (Qwen's native tool call would need the chat template's tool section and a JSON
parse, and SmolLM2's template has none); the serving layer then asks Alibaba's engine to hang up
after the reply has been played (`server/serving/hangup.py`).

`EndCallFilter` removes every marker from the reply as it streams and records that one was
seen (`signalled`). The marker is matched without regard to ASCII case, and the whitespace around
it goes with it: "Goodbye! [END_CALL]" is spoken "Goodbye!", "[END_CALL] Bye" is "Bye", and text
on both sides of a marker is joined by one space. Text without a marker comes out unchanged.
Feeding any split of a text and then `finish()` gives exactly `strip_marker(text)` (property
tested): only a possible marker split across deltas is held (at most `len(MARKER) - 1`
characters), and trailing whitespace, which a marker may yet remove; each delta is searched once,
so the work is linear in the text. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re

MARKER = "[END_CALL]"
_PATTERN = re.compile(re.escape(MARKER), re.IGNORECASE | re.ASCII)
_LOWER = MARKER.lower()

# Added to the alias's system prompt when its `end_call` is on: the rule, then three short
# examples (two goodbyes, one question). A rule alone was never followed by the embedded
# SmolLM2-135M (0 of 6 goodbyes, greedy); with the examples after the alias's own prompt it ended
# 22 of 32 goodbye dialogs and none of 32 question dialogs (benchmarks/results/end_call.md).
INSTRUCTION = f"""To end the call, write {MARKER} after your goodbye. End the call only when the \
caller says goodbye or asks to end the call.

User: Bye!
Assistant: Goodbye! {MARKER}

User: Thanks, that is all.
Assistant: You are welcome, goodbye! {MARKER}

User: What is your name?
Assistant: I am the assistant."""


def _prefix_held(text: str) -> int:
    """Length of the longest end of `text` that is the start of a marker (not a whole one)."""
    for n in range(min(len(text), len(MARKER) - 1), 0, -1):
        if text[-n:].lower() == _LOWER[:n] and text[-n:].isascii():
            return n
    return 0


class EndCallFilter:
    """Feed the reply's text deltas in order; each call returns what may be spoken now."""

    __slots__ = ("_gap", "_held", "_said", "_skip", "_space", "markers")

    def __init__(self) -> None:
        self._held = ""  # the possible start of a marker split across deltas
        self._space = ""  # trailing whitespace not spoken yet: a marker after it removes it
        self._skip = False  # just after a marker: whitespace is dropped
        self._gap = False  # a marker came between spoken text and what follows: one space
        self._said = False  # text has been spoken
        self.markers = 0  # markers seen (removed)

    @property
    def signalled(self) -> bool:
        """The model has written the marker: it ends the call."""
        return self.markers > 0

    def feed(self, text: str) -> str:
        if not self._held and "[" not in text:
            # The common delta: no marker can start in it. Spoken, less any trailing whitespace
            # (which a marker in a later delta would take).
            body = text.rstrip()
            if body and not self._skip and not self._gap:
                spoken = self._space + body
                self._space = text[len(body) :]
                self._said = True
                return spoken
            out: list[str] = []
            self._text(text, out)
            return "".join(out)
        buf = self._held + text
        out = []
        at = 0
        for match in _PATTERN.finditer(buf):
            self._text(buf[at : match.start()], out)
            self.markers += 1
            self._space = ""
            self._skip = True
            self._gap = self._said
            at = match.end()
        held = _prefix_held(buf[at:]) if at < len(buf) else 0
        self._text(buf[at : len(buf) - held], out)
        self._held = buf[len(buf) - held :]
        return "".join(out)

    def finish(self) -> str:
        """The end of the reply: a held part of a marker was text after all."""
        out: list[str] = []
        self._text(self._held, out)
        self._held = ""
        out.append(self._space)
        self._space = ""
        return "".join(out)

    def _text(self, piece: str, out: list[str]) -> None:
        """Text between markers: spoken, less the whitespace a marker next to it takes."""
        if self._skip:
            piece = piece.lstrip()
            if not piece:
                return
            self._skip = False
        body = piece.rstrip()
        if not body:
            self._space += piece
            return
        if self._gap:
            out.append(" ")
            self._gap = False
        else:
            out.append(self._space)
        out.append(body)
        self._space = piece[len(body) :]
        self._said = True


def strip_marker(text: str) -> str:
    """The whole text at once: what the streaming filter gives for any split of it."""
    parts = _PATTERN.split(text)
    last = len(parts) - 1
    kept = []
    for i, part in enumerate(parts):
        if i > 0:
            part = part.lstrip()
        if i < last:
            part = part.rstrip()
        if part:
            kept.append(part)
    return " ".join(kept) if last else text
