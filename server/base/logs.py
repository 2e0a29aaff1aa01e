"""Logging: stdlib `logging` with a JSON formatter (one object a line) or plain text.

A turn's log line carries its fields in `extra={"turn": {...}}`; the JSON formatter merges them
into the object. Message text and biz_params values appear only when `server.log_content` is
on; auth codes never reach a log record at all.

Whatever a caller sent stays on its own line in either format: besides `\n` (escaped by JSON),
U+0085, U+2028 and U+2029 end a line for Python's `splitlines`, JavaScript and many log viewers,
and `json.dumps(ensure_ascii=False)` leaves them raw; every line is written with them escaped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# Line breaks JSON leaves raw (it escapes only U+0000-U+001F), with the other C1 controls and
# DEL, which terminals act on: written as JSON's `\uXXXX`, valid inside a JSON string too.
_RAW_BREAKS = re.compile("[\x7f-\x9f\u2028\u2029]")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which front-end worker, with server.workers > 1
            "message": record.getMessage(),
        }
        turn = getattr(record, "turn", None)
        if isinstance(turn, dict):
            entry.update(turn)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return _escape_breaks(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        turn = getattr(record, "turn", None)
        if isinstance(turn, dict):
            line += " " + " ".join(f"{k}={_value(v)}" for k, v in turn.items() if k != "event")
        return _escape_breaks(line)


def _value(v: Any) -> str:
    """A field of a text log line: quoted and escaped unless it is one plain word, so that a
    caller's `session_id` with a newline or spaces cannot forge a line or a field."""
    text = str(v)
    if text and all(ch.isprintable() and not ch.isspace() and ch not in '"=' for ch in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _escape_breaks(line: str) -> str:
    return _RAW_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "vllm"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One line per turn is ours; uvicorn's access line would be a second, less useful one.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def one_line(e: BaseException) -> str:
    """An exception as one line for an operator: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
