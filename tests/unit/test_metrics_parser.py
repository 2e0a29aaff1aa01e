"""The tests' one `/metrics` reader (`tests/wire/metrics.py`) must read what the server exposes,
in both formats, or a metric assertion would compare zeros."""

from __future__ import annotations

import pytest

from tests.wire import metric, samples

TEXT = """\
# HELP callgate_requests_total Turns by outcome.
# TYPE callgate_requests_total counter
callgate_requests_total{model="qwen-plus",outcome="length"} 3.0
callgate_requests_total{model="qwen-max",outcome="length"} 2.0
callgate_requests_total{model="qwen-plus",outcome="client_gone"} 1.0
vllm:num_requests_running{engine="0",model_name="/tmp/x {y}"} 4.0
callgate_engine_up 1
"""

OPENMETRICS = """\
# TYPE callgate_time_to_first_token_seconds histogram
callgate_time_to_first_token_seconds_bucket{le="0.1",model="qwen-plus"} 3.0 # {session_id="a}b"} 0.05 1.7e9
callgate_time_to_first_token_seconds_bucket{le="+Inf",model="qwen-plus"} 4.0
callgate_time_to_first_token_seconds_count{model="qwen-plus"} 4.0
# EOF
"""  # noqa: E501


def test_samples_name_labels_and_value() -> None:
    found = list(samples(TEXT))
    assert found[0] == ("callgate_requests_total", {"model": "qwen-plus", "outcome": "length"}, 3)
    assert found[3] == ("vllm:num_requests_running", {"engine": "0", "model_name": "/tmp/x {y}"}, 4)
    assert found[4] == ("callgate_engine_up", {}, 1.0)
    assert len(found) == 5


@pytest.mark.parametrize(
    ("labels", "total"),
    [({}, 6.0), ({"outcome": "length"}, 5.0), ({"model": "qwen-plus", "outcome": "length"}, 3.0),
     ({"outcome": "deadline"}, 0.0)],
)  # fmt: skip
def test_metric_sums_the_samples_whose_labels_include_the_given(
    labels: dict[str, str], total: float
) -> None:
    assert metric(TEXT, "callgate_requests_total", **labels) == total


def test_an_openmetrics_exemplar_is_not_read_as_the_value() -> None:
    found = list(samples(OPENMETRICS))
    assert [(name, labels.get("le"), value) for name, labels, value in found] == [
        ("callgate_time_to_first_token_seconds_bucket", "0.1", 3.0),
        ("callgate_time_to_first_token_seconds_bucket", "+Inf", 4.0),
        ("callgate_time_to_first_token_seconds_count", None, 4.0),
    ]
