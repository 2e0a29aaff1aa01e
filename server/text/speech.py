"""What a voice can say: a streaming filter for the reply text, before it reaches the TTS.

Models answer with markdown, emoji, URLs and code, which a TTS voice reads as "asterisk
asterisk", spells out or skips with an audible gap. `SpeechFilter` removes emphasis and heading
markers, turns list markers into sentence breaks, drops code fences with their contents and the
backticks of inline code, turns markdown links into their text and bare URLs into the alias's
phrase, removes emoji and other symbols a voice cannot say, and collapses whitespace (no space
is put next to Chinese text; full-width punctuation stays).

It is a character machine with a small look-ahead: only a possible marker that is split across
deltas (a `1.` or a fence's first backticks at a line start, the `htt` of a URL) is held, at most
`MAX_HELD` characters, and the rest of each delta passes through at once. A run of one marker
character (`####`, `---`, `**`), whose meaning waits on its length and the character after it,
is counted rather than held: a model can write such runs without end (SmolLM2 has single tokens
of 80 `#`), and holding them made each delta rescan the run, seconds of stall per turn. The
machine walks each delta once by index, so its work is linear in the text. Feeding any split of
a text and then `finish()` gives exactly `speak(text)` (property-tested). Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
import unicodedata

_URL_STARTS = ("https://", "http://", "www.")
_SENTENCE_END = frozenset(".!?;:…。！？；：")
_NO_SPACE_BEFORE = frozenset(",.!?;:)]}%…，。！？；：、）」』》")
_NO_SPACE_AFTER = frozenset("([{¿¡（「『《")
_KEEP_SYMBOLS = frozenset("°℃℉№")  # symbols (category So) a voice reads well
_DROP_CATEGORIES = frozenset({"So", "Sk", "Me", "Co", "Cs", "Cn"})
_DROP_CHARS = frozenset("\u200d\ufe0e\ufe0f*|")  # joiners, variation selectors, * and table pipes
_URL_END = frozenset(")]>\"'<，。、！？；：（）")
_LIST_BULLETS = frozenset("-*+•")
# Characters spoken as they are, in runs: ASCII letters and digits, common Chinese characters.
_PLAIN_RUN = re.compile(r"[A-Za-z0-9]+|[\u4e00-\u9fff]+")
# A whole delta that needs no filtering: words, common punctuation, single spaces before a
# word (not before punctuation, not after an opening bracket), maybe one trailing space.
_PLAIN_DELTA = re.compile(
    r"(?:[A-Za-z0-9,.!?'\";:%$&+=/@)]|(?<![( ]) (?=[A-Za-z0-9\"'$&+=/@(]))+ ?"
)
_LAST_WORD = re.compile(r"(?:^|[^a-z0-9])([a-z]+)$")  # a word that may start a URL
_FENCES = ("```", "~~~")
_MARKER_RUNS = {ch: re.compile(re.escape(ch) + "+") for ch in "#*_~`-"}
_DIGITS = re.compile("[0-9]{0,4}")  # a list number: more than 3 digits is not one
_INDENT = re.compile("[ \t]*")
# The longest text ever held between deltas: the start of "https://" less its last character.
MAX_HELD = 7


def is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


def _droppable(ch: str) -> bool:
    if ch in _DROP_CHARS:
        return True
    if ch in _KEEP_SYMBOLS or ch.isascii():
        return False
    return unicodedata.category(ch) in _DROP_CATEGORIES or "\u2190" <= ch <= "\u21ff"  # arrows


class SpeechFilter:
    """Feed the reply's text deltas; each call returns what can be spoken now."""

    def __init__(self, url_phrase: str = "the link") -> None:
        self._url_phrase = url_phrase
        self._buf = ""  # raw text not decided yet (at most MAX_HELD characters between deltas)
        self._run_ch = ""  # a run of one marker character, counted instead of held
        self._run_n = 0
        self._out: list[str] = []
        self._last = ""  # the last character spoken
        self._line_start = True
        self._in_fence = False
        self._indent = False  # only spaces so far on this line of a code block
        self._in_url = False
        self._link_depth = 0  # inside the "(target)" of a markdown link
        self._space = False  # whitespace seen since the last character spoken
        self._break = False  # a new line or list item: a sentence break before the next word
        self.filtered = 0  # characters removed or replaced (markup, symbols, URLs, code)

    def feed(self, text: str) -> str:
        if not self._buf and not self._run_n and self._plain(text):
            # Nothing to filter, no marker split across the delta: spoken as it came.
            body = text.rstrip(" ")
            self._space = len(body) < len(text)
            self._last = body[-1]
            return body
        self._buf += text
        self._run(final=False)
        return self._take()

    def _plain(self, text: str) -> bool:
        """The delta is ordinary words and punctuation, and the machine is between words in
        running text: the characters come out exactly as the machine would give them."""
        if (
            self._in_fence
            or self._in_url
            or self._link_depth
            or self._line_start
            or self._break
            or self._space
            or not self._last
            or self._last in _NO_SPACE_AFTER
            or is_cjk(self._last)
        ):
            return False
        if not _PLAIN_DELTA.fullmatch(text) or text.isspace():
            return False
        lower = text.lower()
        if "http" in lower or "www" in lower:
            return False
        tail = _LAST_WORD.search(lower)
        return not (tail and any(u.startswith(tail.group(1)) for u in ("https", "www")))

    def finish(self) -> str:
        self._run(final=True)
        return self._take()

    @property
    def held(self) -> int:
        """Characters received and not yet decided (a counted run aside): at most `MAX_HELD`."""
        return len(self._buf)

    def _take(self) -> str:
        out = "".join(self._out)
        self._out.clear()
        return out

    def _run(self, final: bool) -> None:
        buf, at = self._buf, 0
        while at < len(buf):
            used = self._step(buf, at, final)
            if used == 0:
                break  # the rest may be a split marker: wait for more text
            at += used
        self._buf = buf[at:]
        if final and self._run_n:
            self._end_run(None)

    # -- the machine: each step consumes text from buf[at]; 0 = wait for more text --------------

    def _step(self, buf: str, at: int, final: bool) -> int:
        if self._run_n:
            more = _length(_MARKER_RUNS[self._run_ch], buf, at)
            if more:  # the run goes on
                self._run_n += more
                return more
            if self._end_run(buf[at]):
                return 1
        ch = buf[at]
        if ch == "\r":
            if self._indent:  # a code block's "  \r": no closing fence on this line
                self._line_start = self._indent = False
            return 1
        if self._in_fence:
            return self._fenced(buf, at, final)
        if self._link_depth:
            self._link_depth += (ch == "(") - (ch == ")")
            return self._drop(1)
        if self._in_url:
            if self._url_ends(buf, at, final):
                self._in_url = False
                return self._step(buf, at, final)
            return 0 if at + 1 == len(buf) and ch in ".,;:!?" and not final else self._drop(1)
        if ch == "\n":
            self._line_start, self._space, self._break = True, True, bool(self._last)
            return 1
        if ch in " \t":
            self._space = True
            return 1
        if self._line_start:
            used = self._line_marker(buf, at, final)
            if used is not None:
                return used
            self._line_start = False
        return self._inline(buf, at, final)

    def _line_marker(self, buf: str, at: int, final: bool) -> int | None:
        """A marker at the start of a line (fence, heading, quote, list item); None: none."""
        for fence in _FENCES:
            if buf.startswith(fence, at):
                self._in_fence = True
                return self._drop(len(fence))
            if fence.startswith(buf[at : at + 3]) and not final:
                return 0
        ch, left = buf[at], len(buf) - at
        if ch == "#":  # a heading's `###`, or text: the character after the run says
            return self._count_run(buf, at)
        if ch == ">":
            return self._drop(1)
        if ch in _LIST_BULLETS:
            if left == 1:
                return 0 if not final else None
            return self._list_item(2) if buf[at + 1] in " \t" else None
        if ch.isdigit():
            n = _length(_DIGITS, buf, at)
            if n > 3:
                return None
            if n == left or (n + 1 == left and buf[at + n] in ".)"):
                return 0 if not final else None
            if buf[at + n] == "、":
                return self._list_item(n + 1)
            if buf[at + n] in ".)" and buf[at + n + 1] in " \t":
                return self._list_item(n + 2)
        return None

    def _list_item(self, used: int) -> int:
        self._line_start = False
        self._break = bool(self._last)
        return self._drop(used)

    def _count_run(self, buf: str, at: int) -> int:
        """Start counting a run of one marker character; `_end_run` decides it."""
        self._run_ch = buf[at]
        self._run_n = _length(_MARKER_RUNS[self._run_ch], buf, at)
        return self._run_n

    def _end_run(self, after: str | None) -> int:
        """Decide the counted run now that the character after it is known (None: the text
        ended); 1 when that character belongs to the marker (a heading's space)."""
        ch, n = self._run_ch, self._run_n
        self._run_n = 0
        if self._line_start:  # `#`s opening a line
            if after is None:
                self._drop(n)
                return 0
            self._line_start = False
            if after in " \t":
                self._drop(n + 1)
                return 1
            self._say(ch * n)  # "#1 in sales"
            return 0
        word_start = self._space or not self._last.isalnum()
        if ch == "_" and not word_start and after is not None and after.isalnum():
            self._say(ch * n)  # snake_case: part of a word
        elif ch in "~-" and n == 1:
            self._say(ch)  # "~5 minutes", "well-known", "3-5"
        else:
            if ch == "-":
                self._space = True  # "--" and rules: a pause
            self._drop(n)
        return 0

    def _inline(self, buf: str, at: int, final: bool) -> int:
        ch = buf[at]
        word_start = self._space or not self._last.isalnum()
        if ch in "*_~`-":
            return self._count_run(buf, at)
        if ch == "[":
            return self._drop(1)
        if ch == "]":
            if at + 1 == len(buf) and not final:
                return 0
            if buf[at + 1 : at + 2] == "(":
                self._link_depth = 1
                return self._drop(2)
            return self._drop(1)
        if not (word_start and ch in "hHwW"):
            run = _PLAIN_RUN.match(buf, at)
            if run:  # the common case: a word (or Chinese text) with nothing in it to filter
                self._say(run.group())
                return run.end() - at
        if word_start and ch in "hHwW":
            lower = buf[at : at + 8].lower()
            for start in _URL_STARTS:
                if lower.startswith(start):
                    self._in_url = True
                    self.filtered += len(start)
                    self._say(self._url_phrase)
                    return len(start)
                if start.startswith(lower) and not final:
                    return 0
        if _droppable(ch):
            self._space = True
            return self._drop(1)
        self._say(ch)
        return 1

    def _fenced(self, buf: str, at: int, final: bool) -> int:
        """Inside a code block: drop everything up to and including the closing fence."""
        if self._line_start:
            if buf[at] in " \t":  # an indented fence may follow: the line is still open
                self._indent = True
                return self._drop(_length(_INDENT, buf, at))
            for fence in _FENCES:
                if buf.startswith(fence, at):
                    self._in_fence = self._line_start = self._indent = False
                    self._space = True
                    return self._drop(len(fence))
                if fence.startswith(buf[at : at + 3]) and not final:
                    return 0
            self._indent = False
        self._line_start = buf[at] == "\n"
        return self._drop(1)

    def _url_ends(self, buf: str, at: int, final: bool) -> bool:
        ch = buf[at]
        if ch.isspace() or ch in _URL_END or is_cjk(ch):
            return True
        if ch in ".,;:!?":  # sentence punctuation after the URL is spoken
            if at + 1 == len(buf):
                return final
            return buf[at + 1].isspace() or is_cjk(buf[at + 1])
        return False

    # -- output ----------------------------------------------------------------------------

    def _drop(self, n: int) -> int:
        self.filtered += n
        return n

    def _say(self, text: str) -> None:
        if not text:
            return
        first = text[0]
        if self._break and self._last and first not in _NO_SPACE_BEFORE:
            if self._last not in _SENTENCE_END:
                self._out.append("。" if is_cjk(self._last) else ".")
                self._last = "."
            self._space = True
        if self._space and self._last and self._spaced(first):
            self._out.append(" ")
        self._out.append(text)
        self._last = text[-1]
        self._space = self._break = False

    def _spaced(self, first: str) -> bool:
        last = self._last
        if is_cjk(last) or is_cjk(first):
            return False
        return first not in _NO_SPACE_BEFORE and last not in _NO_SPACE_AFTER


def _length(pattern: re.Pattern[str], buf: str, at: int) -> int:
    """How many characters from buf[at] the pattern matches (0: none)."""
    match = pattern.match(buf, at)
    return match.end() - at if match else 0


def speak(text: str, url_phrase: str = "the link") -> str:
    """The whole text at once: what the streaming filter gives for any split of it."""
    f = SpeechFilter(url_phrase)
    return f.feed(text) + f.finish()
