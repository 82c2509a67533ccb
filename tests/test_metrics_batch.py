"""A histogram fed a batch of values at once reads as if each value had been observed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from ticker.metrics import observe_all

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = [0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 7.0, 0.0005]


def samples(histogram: Histogram) -> dict:
    return {(s.name, s.labels.get("le")): s.value for m in histogram.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_observe_all_equals_observing_one_by_one():
    one_by_one = Histogram("one", "one by one", buckets=BUCKETS, registry=CollectorRegistry())
    batched = Histogram("batched", "batched", buckets=BUCKETS, registry=CollectorRegistry())
    for value in VALUES:
        one_by_one.observe(value)
    observe_all(batched, VALUES)
    observe_all(batched, [])

    expected = {(name.replace("one", "batched", 1), le): v for (name, le), v in samples(one_by_one).items()}
    assert samples(batched) == expected
