"""The series operators' alerts compare against: the session limit and whether the executor can run frames.

Read at scrape time from the settings and the executor's own health (what
/health shows), so they cost nothing per frame. deploy/prometheus/rules.yml
alerts on them: sessions near the limit, the executor unreachable.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from application.ports import FrameExecutor

# The executor's states (/health executor.cluster; threads have none and are always ready).
EXECUTOR_STATES = ("ok", "degraded", "starting", "unreachable")


class OperatorMetrics:
    """A collector of `stream_sessions_limit`, `stream_executor_up` and `stream_executor_state`."""

    def __init__(self, registry: CollectorRegistry, executor: FrameExecutor, max_sessions: int) -> None:
        self._executor = executor
        self._max_sessions = max_sessions
        registry.register(self)

    def describe(self) -> list[Metric]:
        return list(self._families("ok"))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(str(self._executor.health().get("cluster", "ok")))

    def _families(self, state: str) -> Iterator[Metric]:
        limit = GaugeMetricFamily("stream_sessions_limit", "Sessions the server admits at once (FORGESYTE_STREAM_MAX_SESSIONS)")
        limit.add_metric([], float(self._max_sessions))
        yield limit
        up = GaugeMetricFamily(
            "stream_executor_up", "1 when the frame executor can run frames (threads, or a Ray cluster ok or degraded), else 0"
        )
        up.add_metric([], 1.0 if state in ("ok", "degraded") else 0.0)
        yield up
        states = GaugeMetricFamily("stream_executor_state", "The frame executor's state as /health reports it: 1 for the current one", labels=["state"])
        for name in EXECUTOR_STATES:
            states.add_metric([name], 1.0 if name == state else 0.0)
        yield states
