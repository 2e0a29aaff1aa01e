"""Qwen3 thinking, kept from the caller: only the answer after `</think>` is spoken.

With `sampling.enable_thinking` on, a Qwen3 checkpoint first reasons,
`<think>\\n...\\n</think>\\n\\n`, then answers. Nobody on a call may hear the reasoning, so
the reply text of such a turn passes through a `ThinkingFilter`, which follows Qwen's own
parsing of a reply: everything up to and including the first `</think>` is reasoning and
dropped, as are the newlines right after it; everything after that is the answer, unchanged.
The opening `<think>` needs no case of its own: it is part of the reasoning (and later Qwen3
templates put it in the prompt, so the reply starts inside the reasoning).

The filter is a pure function of the whole text, computed as it streams: any split of the text
into deltas gives the same output as filtering it in one piece (a property test holds it to
that). While reasoning it keeps only the last few characters, which might be the start of a
`</think>` split across deltas; it never holds back answer text. A reply that ends before
`</think>` has said nothing; `Turn` then speaks the alias's fallback sentence (see `turn.py`).

When thinking is off there is no filter on the path at all.
"""

from __future__ import annotations

END_THINK = "</think>"
_KEEP = len(END_THINK) - 1  # the longest part of the marker that can end a delta


class ThinkingFilter:
    """Feed the reply's text deltas in order; each call returns what may be spoken now."""

    __slots__ = ("_tail", "answering", "speaking")

    def __init__(self) -> None:
        self._tail = ""  # the end of the reasoning so far: a split `</think>` may start here
        self.answering = False  # `</think>` has been seen
        self.speaking = False  # answer text (past the newlines after `</think>`) has begun

    def feed(self, text: str) -> str:
        if self.speaking:
            return text
        if not self.answering:
            seen = self._tail + text
            at = seen.find(END_THINK)
            if at < 0:
                self._tail = seen[-_KEEP:]
                return ""
            self.answering = True
            self._tail = ""
            text = seen[at + len(END_THINK) :]
        text = text.lstrip("\n")
        if text:
            self.speaking = True
        return text

    def finish(self) -> str:
        """The end of the reply: nothing is held back that could still be spoken."""
        return ""
