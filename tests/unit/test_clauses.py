"""The first clause of a reply (`server/text/clauses.py`): where it ends, whatever the split."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.text.clauses import FirstClause, first_clause_end


@pytest.mark.parametrize(
    ("reply", "clause"),
    [
        ("Hello, how can I help?", "Hello,"),
        ("Sure. Your order ships today.", "Sure."),
        ("It costs 3.5 dollars, plus tax.", "It costs 3.5 dollars,"),
        ("We open at 10:30 tomorrow.", "We open at 10:30 tomorrow."),
        ("About 1,000 people called! Wow", "About 1,000 people called!"),
        ("Mr. Smith will call you back; thanks", "Mr. Smith will call you back;"),
        ("See example.com for hours. Bye", "See example.com for hours."),
        ("Really?! Yes", "Really?"),
        ("No. I cannot do that.", "No."),
        ("...well, maybe", "...well,"),  # marks before any words end nothing
        ("One moment\nplease", "One moment\n"),
        ("no punctuation at all", "no punctuation at all"),
        ("ends on a mark.", "ends on a mark."),
        ("您好，请问有什么可以帮您？", "您好，"),
        ("订单已发货。预计周四送达", "订单已发货。"),
        ("价格是3.5元，含税。", "价格是3.5元，"),
        ("稍等…我查一下", "稍等…"),
        ("好的,我来查一下", "好的,"),  # a half-width comma before Chinese ends a clause
        ("Thanks Dr.", "Thanks Dr."),  # the reply's end, not the abbreviation
    ],
)
def test_the_first_clause_of_a_reply(reply: str, clause: str) -> None:
    assert reply[: first_clause_end(reply)] == clause


@pytest.mark.parametrize("reply", ["", "   ", "...", "，。", "\n\n"])
def test_a_reply_without_words_has_no_clause(reply: str) -> None:
    assert first_clause_end(reply) is None


SPLIT_REPLIES = [
    "Hello, how can I help?",
    "It costs 3.5 dollars, plus tax.",
    "Mr. Smith will call you back; thanks",
    "We open at 10:30 tomorrow.",
    "您好，请问有什么可以帮您？",
    "价格是3.5元，含税。",
    "no punctuation at all",
]


def pieces_at(reply: str, cuts: tuple[int, ...]) -> list[str]:
    bounds = [0, *cuts, len(reply)]
    return [reply[a:b] for a, b in pairwise(bounds)]


def clause_piece(pieces: list[str]) -> tuple[int | None, int | None, bool]:
    """Stream `pieces`: the clause's piece, its end offset, and whether it was known before
    the reply's end."""
    clause = FirstClause()
    early = any(clause.feed(p) for p in pieces)
    clause.finish()
    return clause.end_piece, clause.end, early


def piece_holding(pieces: list[str], offset: int) -> int:
    """The index of the piece that holds character `offset` of the joined text."""
    at = 0
    for n, piece in enumerate(pieces):
        at += len(piece)
        if offset < at:
            return n
    raise AssertionError(offset)


@pytest.mark.parametrize("reply", SPLIT_REPLIES)
def test_split_at_every_offset_the_clause_ends_in_the_same_place(reply: str) -> None:
    end = first_clause_end(reply)
    assert end is not None
    for cut in range(len(reply) + 1):
        pieces = pieces_at(reply, (cut,))
        piece, found, _ = clause_piece(pieces)
        assert found == end, (cut, pieces)
        assert piece == piece_holding(pieces, end - 1), (cut, pieces)


@pytest.mark.parametrize("reply", SPLIT_REPLIES)
def test_one_character_a_piece(reply: str) -> None:
    end = first_clause_end(reply)
    assert end is not None
    piece, found, early = clause_piece(list(reply))
    assert (piece, found) == (end - 1, end)
    assert early == (end < len(reply))  # known as soon as the next character came


def test_an_ascii_mark_at_a_pieces_end_waits_for_the_next_character() -> None:
    clause = FirstClause()
    assert not clause.feed("It costs 3.")
    assert not clause.feed("5 dollars")  # a decimal, not a clause end
    assert not clause.feed(".")
    assert clause.feed(" Plus tax.")
    assert clause.end_piece == 2  # the `.` came in the third piece


def test_after_the_clause_further_pieces_change_nothing() -> None:
    clause = FirstClause()
    assert clause.feed("您好，")
    assert clause.feed("请问。") and clause.end_piece == 0 and clause.end == 3


@given(st.text(alphabet="ab 3.,!?;:\n，。Mr", max_size=40), st.data())
def test_any_split_gives_the_whole_texts_clause(reply: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(reply)), max_size=6).map(sorted))
    pieces = pieces_at(reply, tuple(cuts))
    end = first_clause_end(reply)
    piece, found, _ = clause_piece(pieces)
    assert found == end
    if end is not None:
        assert piece == piece_holding(pieces, end - 1)


def test_a_long_reply_without_punctuation_keeps_its_offsets() -> None:
    # Past the point where decided text is dropped (`TRIM_AT`), offsets and pieces still count
    # from the reply's start, and an abbreviation at the edge still reads its whole word.
    reply = "word " * 400 + "Mr. Smith will call, thanks"
    pieces = [reply[i : i + 7] for i in range(0, len(reply), 7)]
    end = first_clause_end(reply)
    assert end == reply.index(",") + 1
    piece, found, _ = clause_piece(pieces)
    assert (piece, found) == (piece_holding(pieces, end - 1), end)
