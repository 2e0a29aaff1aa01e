"""Text log lines cannot be forged by what a caller sends (issue 12, finding 12)."""

from __future__ import annotations

import json
import logging

import pytest

from server.base.logs import JsonFormatter, TextFormatter

# Characters that end a line for str.splitlines(), JavaScript and log viewers, and that JSON
# (which escapes only U+0000-U+001F) would leave raw.
LINE_BREAKS = ["\u2028", "\u2029", "\x85"]


def _record(**turn: object) -> logging.LogRecord:
    record = logging.LogRecord("callgate.turn", logging.INFO, __file__, 1, "turn %s", ("r1",), None)
    record.turn = {"event": "turn", **turn}
    return record


def _line(**turn: object) -> str:
    return TextFormatter().format(_record(**turn))


def test_a_newline_in_a_session_id_stays_on_one_line() -> None:
    line = _line(session_id="abc\n2026-12-02 00:00:00 INFO callgate: forged", outcome="stop")
    assert "\n" not in line
    assert 'session_id="abc\\n2026-12-02 00:00:00 INFO callgate: forged"' in line


def test_spaces_and_equals_cannot_forge_a_field() -> None:
    line = _line(session_id="x outcome=stop", outcome="error")
    assert 'session_id="x outcome=stop"' in line
    assert line.endswith("outcome=error")


def test_plain_values_stay_bare() -> None:
    assert _line(session_id="sess-42", ttft_s=0.125).endswith("session_id=sess-42 ttft_s=0.125")


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_a_unicode_line_break_in_a_text_field_is_escaped(brk: str) -> None:
    line = _line(session_id=f"abc{brk}2026-12-02 00:00:00 INFO callgate: forged", outcome="stop")
    assert brk not in line and len(line.splitlines()) == 1
    assert f'session_id="abc\\u{ord(brk):04x}2026-12-02 00:00:00 INFO callgate: forged"' in line
    assert line.endswith("outcome=stop")


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_a_unicode_line_break_in_a_json_line_is_escaped(brk: str) -> None:
    said = [{"role": "user", "content": f'hi{brk}{{"level": "error"}}'}]
    line = JsonFormatter().format(_record(session_id=f"s{brk}1", messages=said))
    assert brk not in line and len(line.splitlines()) == 1
    entry = json.loads(line)  # still JSON, and the caller's text comes back as it was
    assert entry["session_id"] == f"s{brk}1" and entry["messages"] == said
