"""application.live_streams fed reports by hand, on a clock the test moves: counts, rates, percentiles, bounds."""

from __future__ import annotations

import contextvars
import threading
import tracemalloc

import pytest

from application.connection import ConnectionFacts, connection_facts
from application.live_streams import BASE_BYTES, RATE_SECONDS, RING_BYTES, SAMPLE_BYTES, WINDOW, LiveStreams
from domain import DropCause, Session


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def opened(streams: LiveStreams, pipeline_id: str = "p", facts: ConnectionFacts | None = None) -> tuple[Session, contextvars.Context]:
    """A session opened in a context of its own, as a connection's task is; the context is returned for the node reports."""
    session = Session(pipeline_id=pipeline_id)
    context = contextvars.copy_context()

    def open_it() -> None:
        if facts is None:
            streams.session_opened(session, "10.0.0.1:5000")
        else:
            with connection_facts(facts):
                streams.session_opened(session, "10.0.0.1:5000")

    context.run(open_it)
    return session, context


def test_a_session_is_listed_from_open_to_close_with_its_connection_facts() -> None:
    clock = Clock()
    streams = LiveStreams(clock=clock, timer=False)
    session, _ = opened(streams, facts=ConnectionFacts("websockets", "camera-7", None))
    clock.now += 2.5
    (listed,) = streams.snapshot()
    assert (listed.session_id, listed.pipeline_id, listed.transport, listed.key_name) == (session.session_id, "p", "websockets", "camera-7")
    assert listed.remote_address == "10.0.0.1:5000" and listed.age_s == 2.5
    assert listed.latency is None and listed.nodes == [] and listed.fps_in == 0
    streams.session_closed(session, "10.0.0.1:5000", 1000, "peer_gone")
    assert streams.snapshot() == [] and streams.get(session.session_id) is None


def test_counts_are_the_sessions_latency_follows_the_reports_and_drops_are_kept_by_cause() -> None:
    streams = LiveStreams(clock=Clock(), timer=False)
    session, _ = opened(streams)
    session.frame_index, session.processed_frames, session.failed_frames = 10, 6, 1
    for index in range(6):
        streams.frame_processed(session, index, queue_ms=0, processing_ms=1, latency_ms=float(index + 1))
    streams.frame_dropped(session, 6, DropCause.LAGGING)
    streams.frame_dropped(session, 7, DropCause.LAGGING)
    streams.frame_dropped(session, 8, DropCause.BUFFER_FULL)
    snapshot = streams.get(session.session_id)
    assert snapshot is not None
    assert (snapshot.frames_received, snapshot.frames_answered, snapshot.frames_failed) == (10, 6, 1)
    assert snapshot.frames_dropped == {"lagging": 2, "buffer_full": 1, "shutdown": 0, "closing": 0}
    assert snapshot.latency is not None and (snapshot.latency.p50_ms, snapshot.latency.p95_ms, snapshot.latency.samples) == (3.0, 6.0, 6)


def test_fps_counts_the_last_ten_seconds_of_the_counts_read_once_a_second() -> None:
    clock = Clock()
    streams = LiveStreams(clock=clock, timer=False)
    session, _ = opened(streams)
    for second in range(30):
        session.frame_index += 5 if second < 15 else 20
        session.processed_frames += 3
        clock.now += 1.0
        streams.tick()
    snapshot = streams.get(session.session_id)
    assert snapshot is not None and snapshot.fps_in == 20.0 and snapshot.fps_out == 3.0
    # A stream that went quiet falls to 0 once its last frames leave the window.
    for _ in range(RATE_SECONDS + 1):
        clock.now += 1.0
        streams.tick()
    quiet = streams.get(session.session_id)
    assert quiet is not None and quiet.fps_in == 0.0 and quiet.frames_received == 15 * 5 + 15 * 20


def test_the_timer_reads_the_counts_on_the_running_loop_while_a_session_is_open() -> None:
    import asyncio

    async def scenario() -> tuple[float, float]:
        streams = LiveStreams()
        session, _ = opened(streams)
        session.frame_index = 50
        await asyncio.sleep(1.3)  # one reading by the timer
        session.frame_index = 80
        await asyncio.sleep(1.0)
        snapshot = streams.get(session.session_id)
        assert snapshot is not None
        streams.session_closed(session, "c", 1000, "peer_gone")
        return snapshot.fps_in, snapshot.age_s

    fps_in, age = asyncio.run(scenario())
    # Since the oldest reading kept (the one at open): 80 frames over the session's age.
    assert fps_in == pytest.approx(80 / age, rel=0.05)


def test_the_latency_window_keeps_the_last_frames_only() -> None:
    streams = LiveStreams(clock=Clock(), timer=False)
    session, _ = opened(streams)
    for index in range(WINDOW):
        streams.frame_processed(session, index, queue_ms=0, processing_ms=1, latency_ms=1000.0)
    for index in range(WINDOW):
        streams.frame_processed(session, index, queue_ms=0, processing_ms=1, latency_ms=float(index % 100))
    snapshot = streams.get(session.session_id)
    assert snapshot is not None and snapshot.latency is not None
    assert snapshot.latency.samples == WINDOW and snapshot.latency.p95_ms < 100


def test_node_reports_reach_the_session_whose_context_runs_them_from_a_worker_thread() -> None:
    streams = LiveStreams(clock=Clock(), timer=False)
    first, first_context = opened(streams, "p")
    second, second_context = opened(streams, "p")

    def run(context: contextvars.Context, duration: float) -> None:
        # As ThreadFrameExecutor runs work: in a copy of the submitting task's context.
        thread = threading.Thread(target=context.copy().run, args=(streams.node_finished, "p", "detect", duration), kwargs={"failed": False})
        thread.start()
        thread.join()

    for _ in range(4):
        run(first_context, 10.0)
        run(second_context, 50.0)
    streams.node_finished("p", "detect", 999.0, failed=False)  # outside any session (a one-off frame): nobody's
    one, two = streams.get(first.session_id), streams.get(second.session_id)
    assert one is not None and two is not None
    assert [(n.node_id, n.duration.p95_ms, n.duration.samples) for n in one.nodes] == [("detect", 10.0, 4)]
    assert [(n.node_id, n.duration.p95_ms, n.duration.samples) for n in two.nodes] == [("detect", 50.0, 4)]


@pytest.mark.parametrize("nodes", [1, 4])
def test_a_sessions_memory_stays_within_the_documented_formula_however_long_it_runs(nodes: int) -> None:
    streams = LiveStreams(clock=Clock(), timer=False)
    formula = BASE_BYTES + (8 * WINDOW + RING_BYTES) * (1 + nodes) + SAMPLE_BYTES * (RATE_SECONDS + 1)

    def feed(session: Session, context: contextvars.Context, frames: int) -> None:
        for index in range(frames):
            if index % 10 == 0:
                streams.tick()
            for node in range(nodes):
                context.run(streams.node_finished, "p", f"n{node}", 1.5, failed=False)
            streams.frame_processed(session, index, queue_ms=0, processing_ms=1, latency_ms=2.0)
            streams.frame_dropped(session, index, DropCause.LAGGING)

    session = Session(pipeline_id="p")  # the stream's own object, not the statistics'
    context = contextvars.copy_context()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        context.run(streams.session_opened, session, "10.0.0.1:5000")
        feed(session, context, WINDOW)
        after_window = tracemalloc.get_traced_memory()[0]
        feed(session, context, 20 * WINDOW)
        after_long = tracemalloc.get_traced_memory()[0]
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown <= formula, f"one session holds {grown} bytes; the documented bound is {formula}"
    # Twenty windows more frames, no more memory: nothing grows with the stream's length.
    assert after_long - after_window < 1024, (after_window, after_long)


def test_the_fan_outs_skip_ignored_events_and_isolate_a_failing_pipeline_observer() -> None:
    from application.observers import FanOutPipelineObserver, FanOutStreamObserver

    calls: list[tuple[str, str]] = []

    class Counting:
        ignored_events = frozenset({"pipeline_finished"})

        def __init__(self, name: str) -> None:
            self.name = name

        def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
            calls.append((self.name, "node_finished"))
            if self.name == "broken":
                raise RuntimeError("observer bug")

        def node_skipped(self, pipeline_id: str, node_id: str) -> None:
            calls.append((self.name, "node_skipped"))

        def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
            calls.append((self.name, "pipeline_finished"))

    fan_out = FanOutPipelineObserver(Counting("broken"), Counting("second"))
    fan_out.node_finished("p", "n", 1.0, failed=False)
    fan_out.pipeline_finished("p", 1.0, failed=False)
    assert calls == [("broken", "node_finished"), ("second", "node_finished")]

    streams = LiveStreams(timer=False)
    stream_fan_out = FanOutStreamObserver(streams)
    assert stream_fan_out._received == [] and [name for name, _ in stream_fan_out._processed] == ["LiveStreams"]
