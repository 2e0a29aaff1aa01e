"""Limits on what one request may hold: content parts in a dialog, the length of a stop string.

Each costs the server something per unit that the caller does not pay for: a content part about
what a message costs to validate (a 1 MiB body holds 65,000 empty ones), a stop string's length
the text vLLM holds back from the caller and scans at every step.
"""

from __future__ import annotations

import json

import pytest

from server.base.errors import InvalidRequest
from server.wire.schemas import MAX_CONTENT_PARTS, MAX_STOP, MAX_STOP_CHARS, parse_request


def _parts_body(*counts: int, part: str = '{"type":"text","text":"a"}') -> bytes:
    """One user message for each count, with that many content parts."""
    messages = [f'{{"role":"user","content":[{",".join([part] * n)}]}}' for n in counts]
    return f'{{"messages":[{",".join(messages)}]}}'.encode()


def test_content_parts_up_to_the_limit_are_joined() -> None:
    req = parse_request(_parts_body(MAX_CONTENT_PARTS // 2, MAX_CONTENT_PARTS // 2))
    assert [len(m.text) for m in req.messages] == [MAX_CONTENT_PARTS // 2] * 2


@pytest.mark.parametrize(
    "counts", [(MAX_CONTENT_PARTS + 1,), (MAX_CONTENT_PARTS // 2, MAX_CONTENT_PARTS // 2 + 1)]
)
def test_more_content_parts_in_a_dialog_are_a_400_naming_the_limit(counts: tuple[int]) -> None:
    with pytest.raises(InvalidRequest, match=f"at most {MAX_CONTENT_PARTS} content parts"):
        parse_request(_parts_body(*counts))


def test_too_many_parts_are_refused_before_any_part_is_validated() -> None:
    # Every part is of a refused type: the count is what answers, so no part was looked at.
    body = _parts_body(MAX_CONTENT_PARTS + 1, part='{"type":"image_url"}')
    with pytest.raises(InvalidRequest, match="content parts in all messages"):
        parse_request(body)


def test_the_65k_empty_parts_of_a_1_mib_body_are_a_400() -> None:
    body = _parts_body(65_000, part='{"type":"text"}')
    assert len(body) <= 1_048_576
    with pytest.raises(InvalidRequest, match=f"at most {MAX_CONTENT_PARTS} content parts"):
        parse_request(body)


def _with_stop(stop: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], "stop": stop}).encode()


def test_stop_strings_up_to_the_length_limit_are_kept() -> None:
    stops = ["x" * MAX_STOP_CHARS] * MAX_STOP
    assert parse_request(_with_stop(stops)).stop == stops


@pytest.mark.parametrize(
    "stop", ["x" * (MAX_STOP_CHARS + 1), ["END", "y" * (MAX_STOP_CHARS + 1)], ["z" * 64_000] * 16]
)
def test_a_longer_stop_string_is_a_400_naming_the_limit(stop: object) -> None:
    with pytest.raises(InvalidRequest, match=f"longer than {MAX_STOP_CHARS} characters"):
        parse_request(_with_stop(stop))
