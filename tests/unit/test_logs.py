"""Text log lines cannot be forged by what a caller sends (issue 12, finding 12)."""

from __future__ import annotations

import logging

from server.logs import TextFormatter


def _line(**turn: object) -> str:
    record = logging.LogRecord("callgate.turn", logging.INFO, __file__, 1, "turn %s", ("r1",), None)
    record.turn = {"event": "turn", **turn}
    return TextFormatter().format(record)


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
