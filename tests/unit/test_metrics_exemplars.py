"""TTFT exemplars kept per bucket for multiprocess mode, attached to the summed histogram."""

from __future__ import annotations

from prometheus_client.metrics_core import HistogramMetricFamily

from server.serving.metrics import TTFT_NAME, ExemplarStore


def test_latest_exemplar_goes_to_the_bucket_of_its_value() -> None:
    store = ExemplarStore()
    store.add("qwen-plus", 0.061, {"session_id": "a"})
    store.add("qwen-plus", 0.062, {"session_id": "b"})  # same bucket: the latest wins
    store.add("qwen-plus", 42.0, {"session_id": "c"})  # past every bound: +Inf
    family = HistogramMetricFamily(TTFT_NAME, "ttft", labels=["model"])
    family.add_metric(["qwen-plus"], [("0.05", 0), ("0.075", 2), ("+Inf", 3)], sum_value=42.1)
    (out,) = store.attach([family])
    by_le = {s.labels["le"]: s.exemplar for s in out.samples if s.name.endswith("_bucket")}
    assert by_le["0.05"] is None
    assert by_le["0.075"].labels == {"session_id": "b"} and by_le["0.075"].value == 0.062
    assert by_le["+Inf"].labels == {"session_id": "c"}
