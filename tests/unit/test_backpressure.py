"""The backpressure rule, driven by a fake clock: no sleeping, no wall-clock assertions."""

import pytest

from domain import BackpressurePolicy, BackpressureState, DropCause, Session
from tests.support.fakes import Clock


JPEG = b"\xff\xd8 frame \xff\xd9"


def make(**policy) -> tuple[Session, Clock]:
    clock = Clock()
    return Session(pipeline_id="p", policy=BackpressurePolicy(**policy), clock=clock), clock


def run_stream(session: Session, clock: Clock, *, interval: float, cost: float, frames: int) -> dict:
    """Simulate a client sending every `interval` ms to a pipeline costing `cost` ms."""
    replies: dict[int, str] = {}
    in_flight_until: float | None = None
    events = [(i * interval, "arrive") for i in range(frames)]
    time = 0.0
    arrivals = iter(range(frames))
    next_arrival = 0.0
    sent = 0
    base = clock.now
    while sent < frames or session.in_flight is not None:
        candidates = []
        if sent < frames:
            candidates.append((next_arrival, "arrive"))
        if in_flight_until is not None:
            candidates.append((in_flight_until, "done"))
        time, kind = min(candidates, key=lambda c: (c[0], c[1] == "arrive"))
        clock.now = base + time
        if kind == "arrive":
            next(arrivals)
            admission = session.receive_frame(JPEG)
            for drop in admission.dropped:
                assert drop.frame.index not in replies
                replies[drop.frame.index] = "dropped:" + drop.cause.value
            if admission.start is not None:
                in_flight_until = time + cost
            sent += 1
            next_arrival = sent * interval
        else:
            frame = session.in_flight
            assert frame is not None
            session.complete_frame(frame, processing_ms=cost)
            replies[frame.index] = "result"
            following = session.start_next()
            in_flight_until = time + cost if following is not None else None
    del events
    return replies


def test_no_drops_when_the_client_is_slower_than_the_pipeline() -> None:
    session, clock = make()
    replies = run_stream(session, clock, interval=50, cost=40, frames=60)
    assert set(replies.values()) == {"result"} and len(replies) == 60
    assert session.dropped_frames == 0
    assert session.backpressure_state is BackpressureState.NORMAL


def test_overload_drops_waiting_frames_latest_wins_and_answers_every_frame_once() -> None:
    session, clock = make()
    replies = run_stream(session, clock, interval=30, cost=90, frames=90)
    assert len(replies) == 90
    dropped = [i for i, r in replies.items() if r.startswith("dropped")]
    # Capacity is a third of the send rate: about two frames in three must go.
    assert 0.55 <= len(dropped) / 90 <= 0.75
    assert session.dropped_frames == len(dropped)
    assert replies[89] == "result", "the newest frame is never the one dropped"
    assert all(r in ("result", "dropped:lagging", "dropped:buffer_full") for r in replies.values())


def test_burst_within_threshold_waits_instead_of_dropping() -> None:
    session, clock = make(buffer_capacity=4)
    # Steady: one frame every 100 ms against a 50 ms pipeline.
    for _ in range(10):
        clock.now += 100
        admission = session.receive_frame(JPEG)
        assert admission.start is not None
        clock.now += 50
        session.complete_frame(admission.start, processing_ms=50)
    # Burst: three frames at once while the pipeline is busy.
    clock.now += 100
    first = session.receive_frame(JPEG)
    assert first.start is not None
    second = session.receive_frame(JPEG)
    third = session.receive_frame(JPEG)
    assert second.dropped == () and third.dropped == ()
    assert session.waiting_frames == 2


def test_buffer_overflow_drops_the_oldest_waiting_frame() -> None:
    session, clock = make(buffer_capacity=2)
    start = session.receive_frame(JPEG)
    assert start.start is not None
    waiting = [session.receive_frame(JPEG) for _ in range(2)]
    assert all(w.dropped == () for w in waiting)
    overflow = session.receive_frame(JPEG)
    assert [(d.frame.index, d.cause) for d in overflow.dropped] == [(1, DropCause.BUFFER_FULL)]


def test_recovers_within_a_second_after_the_client_slows_down() -> None:
    session, clock = make()
    run_stream(session, clock, interval=30, cost=90, frames=60)
    assert session.backpressure_state in (BackpressureState.LAGGING, BackpressureState.SLOW_DOWN)
    dropped_before = session.dropped_frames
    # The client now sends every 150 ms, slower than the 90 ms pipeline.
    replies = run_stream(session, clock, interval=150, cost=90, frames=20)
    assert session.dropped_frames == dropped_before
    assert all(r == "result" for r in replies.values())
    assert session.backpressure_state is BackpressureState.NORMAL
    assert session.recent_drop_rate() == 0.0
    # The cumulative rate still tells the truth about the whole session.
    assert session.drop_rate() == pytest.approx(dropped_before / session.frame_index)


def test_slow_down_is_sent_once_per_rise_and_repeats_only_after_the_interval() -> None:
    session, clock = make(slowdown_repeat_ms=5000)
    signals = []
    start = session.receive_frame(JPEG)
    assert start.start is not None
    session.processing_ms = 100.0  # a known pipeline cost, as if measured
    for _ in range(40):  # 40 frames at 10 ms while one frame stays in flight
        clock.now += 10
        session.receive_frame(JPEG)
        signal = session.take_slowdown_signal()
        if signal is not None:
            signals.append(signal)
    assert len(signals) == 1
    assert signals[0].drop_rate > 0.3
    assert signals[0].suggested_fps == pytest.approx(1000 / (100 * 1.1))
    # Still overloaded for another 5.1 s: exactly one repeat, after the documented interval.
    for _ in range(510):
        clock.now += 10
        session.receive_frame(JPEG)
        signal = session.take_slowdown_signal()
        if signal is not None:
            signals.append(signal)
    assert len(signals) == 2


def test_slow_down_re_arms_after_the_rate_falls() -> None:
    session, clock = make()
    session.receive_frame(JPEG)
    session.processing_ms = 100.0
    for _ in range(20):
        clock.now += 10
        session.receive_frame(JPEG)
    assert session.take_slowdown_signal() is not None
    assert session.take_slowdown_signal() is None
    # Quiet period: the drop window empties, the rate falls below the threshold.
    clock.now += 3000
    in_flight = session.in_flight
    assert in_flight is not None
    session.complete_frame(in_flight, processing_ms=100)
    nxt = session.start_next()
    assert nxt is not None
    for _ in range(20):
        clock.now += 10
        session.receive_frame(JPEG)
    assert session.take_slowdown_signal() is not None


def test_threshold_validation() -> None:
    with pytest.raises(ValueError, match="drop_threshold"):
        BackpressurePolicy(drop_threshold=1.5)
    with pytest.raises(ValueError, match="buffer_capacity"):
        BackpressurePolicy(buffer_capacity=0)


def test_lagging_rule_uses_the_drop_threshold() -> None:
    policy = BackpressurePolicy(drop_threshold=0.10)
    assert not policy.is_lagging(110.0, 100.0)
    assert policy.is_lagging(110.5, 100.0)
    assert not policy.is_lagging(None, 100.0)
    assert policy.should_drop(processing_ms=200.0, interval_ms=100.0, waiting=0) is None


def test_session_story_fields_and_delegation() -> None:
    session, clock = make(drop_threshold=0.2, slowdown_threshold=0.5)
    assert session.drop_threshold == 0.2 and session.slowdown_threshold == 0.5
    assert session.frame_index == 0 and session.dropped_frames == 0 and session.last_processed_ts is None
    assert session.increment_frame() == 0 and session.frame_index == 1
    session.mark_drop()
    assert session.dropped_frames == 1 and session.drop_rate() == 1.0
    clock.now += 100
    session.receive_frame(JPEG)
    clock.now += 100
    session.receive_frame(JPEG)
    assert session.should_drop_frame(500.0) is True
    assert session.should_drop_frame(100.0) is False
    assert session.now_ms() == clock.now
