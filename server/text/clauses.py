"""Where the first clause of a reply ends: what a clause-by-clause voice speaks first.

Alibaba's text-to-speech speaks whole clauses, so on a call the silence lasts until the first
clause of the answer is complete, not until its first token. `FirstClause` finds that point in
text that arrives in pieces (the reply after the thinking and speech filters), and says in which
piece it ended, so the turn can time it (`callgate_time_to_first_clause_seconds`).

A clause ends at clause punctuation after some words (a letter or digit, in any script):

* Chinese (full-width) `，。！？；：、` and `…`: at once; they are never part of a number or a
  word.
* ASCII `, . ! ? ; :` only when the next character is not an ASCII letter or digit, so `3.5`,
  `1,000`, `10:30` and `example.com` do not split a clause, and `Hi,there` does not either
  (a voice reads it as one). Such a mark at the end of the text so far waits for the next
  character, or for the reply's end.
* A `.` after a short title or abbreviation (`Mr.`, `Dr.`, `e.g.`: `ABBREVIATIONS`) does not
  end one: "Mr. Smith" is one clause. Other abbreviations are taken as ends, a little early
  (`No.` is not in the list: on a call it is far more often the answer "No." than a number).
* A newline.

Punctuation before any words (a reply that starts with `"` or `...`) ends nothing. A reply that
ends without clause punctuation has its first clause at its end (`finish`). The result is a pure
function of the whole text: any split into pieces gives the same clause end (a test holds it to
that, at every offset).
"""

from __future__ import annotations

import re
from bisect import bisect_right

CJK_ENDS = frozenset("，。！？；：、…")
ASCII_ENDS = frozenset(",.!?;:")
# Lower-cased, without their final dot: a `.` after one of these is not a clause end.
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e", "approx"}
)
LOOKBACK = 16  # characters kept before the undecided text: the longest abbreviation and more
TRIM_AT = 512  # decided characters held before they are dropped
_MARK = re.compile("[" + re.escape("".join(sorted(CJK_ENDS | ASCII_ENDS))) + "\n]")
_WORD = re.compile(r"[^\W_]")  # a letter or digit, in any script


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


class FirstClause:
    """Feed the reply's pieces in order; `feed` is True once the first clause is known to have
    ended, and `end_piece` is then the index of the piece in which it ended (the piece before
    the current one when an ASCII mark had to wait for the next character)."""

    __slots__ = ("_base", "_content", "_ends", "_pos", "_text", "end", "end_piece")

    def __init__(self) -> None:
        # The text not yet decided, with a few characters before it (an abbreviation's word):
        # kept short (`TRIM_AT`), so a long reply without punctuation costs each piece about
        # its own length.
        self._text = ""
        self._base = 0  # offset of `_text` in the whole reply
        self._ends: list[int] = []  # cumulative end offset of each piece fed
        self._pos = 0  # first character not yet decided, in `_text`
        self._content = False  # a letter or digit has been seen
        self.end: int | None = None  # offset just past the first clause in the whole text
        self.end_piece: int | None = None

    def feed(self, piece: str) -> bool:
        """The next piece of the reply; True once the first clause has ended."""
        if self.end is not None:
            return True
        text = self._text = self._text + piece
        self._ends.append(self._base + len(text))
        at = self._scan(text, final=False)
        if at is not None:
            return self._found(at)
        if self._pos > TRIM_AT:  # drop the decided text, now and then
            keep = self._pos - LOOKBACK
            self._text, self._base, self._pos = text[keep:], self._base + keep, LOOKBACK
        return False

    def finish(self) -> bool:
        """The reply has ended: its end counts as the first clause's when none ended before.
        False only for a reply without a letter or digit in it."""
        if self.end is not None:
            return True
        at = self._scan(self._text, final=True)
        if at is None and self._content:
            at = len(self._text) - 1
        return at is not None and self._found(at)

    def _found(self, mark: int) -> bool:
        """The clause ends with the character at `mark` (of `_text`)."""
        mark += self._base
        self.end = mark + 1
        self.end_piece = bisect_right(self._ends, mark)
        return True

    def _scan(self, text: str, final: bool) -> int | None:
        """The offset of the character that ends the first clause, if it is decided. Regular
        expressions find the next word character and the next mark, so that text without
        punctuation costs one search a piece, not a step per character."""
        n = len(text)
        i = self._pos
        while True:
            if not self._content:
                word = _WORD.search(text, i)
                if word is None:
                    self._pos = n
                    return None
                self._content, i = True, word.start()
            mark = _MARK.search(text, i)
            if mark is None:
                self._pos = n
                return None
            i = self._pos = mark.start()
            if text[i] in ASCII_ENDS:
                if i + 1 == n:  # decided by the next character, or by the reply's end
                    return i if final and not self._abbreviation(text, i) else None
                if _ascii_alnum(text[i + 1]) or self._abbreviation(text, i):
                    i += 1
                    continue
            return i

    @staticmethod
    def _abbreviation(text: str, i: int) -> bool:
        """`text[i]` is a `.` right after a word in `ABBREVIATIONS`."""
        if text[i] != ".":
            return False
        start = i
        while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "."):
            start -= 1
        return text[start:i].lower() in ABBREVIATIONS


def first_clause_end(text: str) -> int | None:
    """The offset just past the first clause of a whole reply (None: no words in it)."""
    clause = FirstClause()
    clause.feed(text)
    clause.finish()
    return clause.end
