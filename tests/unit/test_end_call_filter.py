"""The end-call marker is never spoken: the streaming filter against its whole-text reference.

The turn-level tests (the marker through `Turn`'s filter chain, split at every offset, and the
hang-up that follows) are in tests/unit/test_end_call.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.text.end_call import INSTRUCTION, MARKER, EndCallFilter, strip_marker
from tests.unit.splits import split_at


def feed_all(pieces: list[str]) -> tuple[str, EndCallFilter]:
    f = EndCallFilter()
    said = "".join(f.feed(p) for p in pieces) + f.finish()
    return said, f


@pytest.mark.parametrize(
    ("reply", "spoken", "signalled"),
    [
        ("Goodbye, have a nice day! [END_CALL]", "Goodbye, have a nice day!", True),
        ("[END_CALL] Goodbye!", "Goodbye!", True),
        ("Goodbye.[end_call]Thanks again.", "Goodbye. Thanks again.", True),  # ASCII case
        ("Bye! [END_CALL] [END_CALL]", "Bye!", True),  # repeated: removed, one signal
        ("  [END_CALL]  ", "", True),  # nothing said: the turn speaks the closing sentence
        ("再见！[END_CALL]", "再见！", True),
        ("No marker here, spaces stay  ", "No marker here, spaces stay  ", False),
        ("[END_CALL is not the marker", "[END_CALL is not the marker", False),
        ("[[END_CALL]", "[", True),
        ("[END_CAL] L]", "[END_CAL] L]", False),
    ],
)
def test_the_marker_and_its_whitespace_are_removed(
    reply: str, spoken: str, signalled: bool
) -> None:
    assert strip_marker(reply) == spoken
    for pieces in ([reply], list(reply)):  # whole, and one character a delta
        said, f = feed_all(pieces)
        assert said == spoken
        assert f.signalled is signalled


def test_the_marker_split_at_every_offset_is_never_spoken() -> None:
    reply = f"Thank you for calling, goodbye! {MARKER}"
    for cut in range(len(reply) + 1):
        for second in range(cut, len(reply) + 1):
            said, f = feed_all([reply[:cut], reply[cut:second], reply[second:]])
            assert said == "Thank you for calling, goodbye!", (cut, second)
            assert f.signalled


def test_at_most_a_markers_start_is_held_back() -> None:
    f = EndCallFilter()
    assert f.feed("Bye [END_") == "Bye"  # the space waits: the marker may take it
    assert f.feed("CALL") == ""
    assert f.feed("ED") == " [END_CALLED"  # not the marker after all
    assert not f.signalled
    assert f.feed(" and more") == " and more"


def test_the_prompt_instruction_names_the_marker() -> None:
    assert MARKER in INSTRUCTION


_PIECES = st.sampled_from(
    [MARKER, "[end_call]", "[", "END", "_", "CALL", "]", "[END_", "CALL]", " ", "\n", "a", "."]
)


@given(
    pieces=st.lists(_PIECES, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=12),
)
def test_any_split_into_deltas_speaks_what_the_whole_reply_speaks(
    pieces: list[str], cuts: list[int]
) -> None:
    reply = "".join(pieces)
    said, f = feed_all(split_at(reply, cuts))
    assert said == strip_marker(reply)
    assert f.signalled == (MARKER.lower() in reply.lower())


def test_the_work_is_linear_in_the_text() -> None:
    """A long reply fed one character a delta holds at most a marker's start at a time."""
    f = EndCallFilter()
    text = ("[END_CAL x " * 2000) + MARKER
    for ch in text:
        f.feed(ch)
        assert len(f._held) < len(MARKER)
    assert f.signalled
