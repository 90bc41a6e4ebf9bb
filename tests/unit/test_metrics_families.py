"""The in-process per-frame metric families render exactly as prometheus-client's own objects would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from adapters.observability.metrics import DURATION_BUCKETS_S, _LocalFamily, new_registry

VALUES = [0.0, 0.0005, 0.001, 0.0011, 0.0025, 0.007, 0.05, 0.3, 2.5, 9.99, 10.0, 11.0, 250.0]


def _pair(kind: str) -> tuple[CollectorRegistry, CollectorRegistry]:
    ours, theirs = new_registry(), new_registry()
    labels = ["pipeline_id", "node_id"]
    if kind == "counter":
        local = _LocalFamily("counter", "stream_things", "Things counted", labels)
        reference = Counter("stream_things", "Things counted", labels, registry=theirs)
    else:
        local = _LocalFamily("histogram", "stream_thing_seconds", "Things timed", labels, DURATION_BUCKETS_S)
        reference = Histogram("stream_thing_seconds", "Things timed", labels, registry=theirs, buckets=DURATION_BUCKETS_S)
    ours.register(local)
    for family in (local, reference):
        family.labels("probe", "never")  # a series that exists at 0
        for value in VALUES:
            child = family.labels("probe", "n")
            if kind == "counter":
                child.inc(value)
            else:
                child.observe(value)
    return ours, theirs


@pytest.mark.parametrize("kind", ["counter", "histogram"])
def test_a_local_family_renders_as_prometheus_client_does(kind: str) -> None:
    ours, theirs = _pair(kind)
    assert generate_latest(ours) == generate_latest(theirs)
    assert generate_openmetrics(ours) == generate_openmetrics(theirs)


def test_a_local_counter_refuses_to_go_down_and_labels_must_match() -> None:
    family = _LocalFamily("counter", "stream_things", "Things counted", ["pipeline_id"])
    with pytest.raises(ValueError, match="only goes up"):
        family.labels("probe").inc(-1)
    with pytest.raises(ValueError, match="label values"):
        family.labels("probe", "extra")
