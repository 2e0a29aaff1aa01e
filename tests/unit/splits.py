"""A text cut into deltas at given offsets: the streaming text filters' property tests (thinking,
speech, end-call) feed every split hypothesis finds and compare with the whole text's answer."""

from __future__ import annotations

from collections.abc import Iterable


def split_at(text: str, cuts: Iterable[int]) -> list[str]:
    """`text` cut at each offset in `cuts` (clamped to its length; order and repeats do not
    matter); the pieces join back to `text`."""
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert "".join(pieces) == text
    return pieces
