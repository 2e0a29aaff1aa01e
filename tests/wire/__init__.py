"""The tests' one wire toolkit: everything a test needs to talk to a real server process and
judge what came back, used by every tier (the server harness itself is `tests/conftest.py` on
`benchmarks/lib/servers.py`).

- `sse`: the strict SSE parser (`parse_chat_stream`): framing, JSON, `[DONE]` last;
- `metrics`: the one reader of `/metrics` (`samples`, `metric`), load and outcome counts, waits;
- `http`: request bodies, raw request heads and sockets, streams read in steps and dropped,
  the checks of a reply (`well_formed`, `assert_error`, `assert_error_shape`);
- `logs`: turn log lines, how soon a hang-up's turn was aborted (`assert_aborted_in_time`), the
  server's child processes and that they are gone (`assert_processes_gone`).

Import from here: `from tests.wire import parse_chat_stream, metric, drop_after`.
"""

from tests.wire.http import (
    FALLBACK,
    LEAK_MARKERS,
    STORY,
    RawStream,
    address,
    assert_error,
    assert_error_shape,
    async_client,
    drop_after,
    hang_up_raw,
    long_body,
    new_request_id,
    open_streams,
    read_response,
    read_to_end,
    request_head,
    response_json,
    well_formed,
)
from tests.wire.logs import (
    ABORT_WITHIN_S,
    ENGINE_EXIT_S,
    abort_delays,
    assert_aborted_in_time,
    assert_processes_gone,
    descendants,
    engine_core,
    log_since,
    logged_at,
    turn_lines,
)
from tests.wire.metrics import (
    IDLE_WITHIN_S,
    Load,
    delta,
    load,
    load_async,
    load_of,
    metric,
    outcomes,
    samples,
    scrape,
    scrape_async,
    wait_for,
    wait_idle,
)
from tests.wire.sse import (
    DONE,
    ChatStream,
    SSEError,
    json_chunks,
    loads,
    parse_chat_stream,
    parse_events,
)

__all__ = [
    "ABORT_WITHIN_S",
    "DONE",
    "ENGINE_EXIT_S",
    "FALLBACK",
    "IDLE_WITHIN_S",
    "LEAK_MARKERS",
    "STORY",
    "ChatStream",
    "Load",
    "RawStream",
    "SSEError",
    "abort_delays",
    "address",
    "assert_aborted_in_time",
    "assert_error",
    "assert_error_shape",
    "assert_processes_gone",
    "async_client",
    "delta",
    "descendants",
    "drop_after",
    "engine_core",
    "hang_up_raw",
    "json_chunks",
    "load",
    "load_async",
    "load_of",
    "loads",
    "log_since",
    "logged_at",
    "long_body",
    "metric",
    "new_request_id",
    "open_streams",
    "outcomes",
    "parse_chat_stream",
    "parse_events",
    "read_response",
    "read_to_end",
    "request_head",
    "response_json",
    "samples",
    "scrape",
    "scrape_async",
    "turn_lines",
    "wait_for",
    "wait_idle",
    "well_formed",
]
