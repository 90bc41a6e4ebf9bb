"""The keep-every-Nth backpressure policy, through the session with a fake clock (the simulation of test_backpressure)."""

import pytest

from domain import BackpressurePolicy, Session
from domain.sampling import KeepEveryNthPolicy
from tests.unit.test_backpressure import Clock, run_stream


def simulate(policy: BackpressurePolicy, *, interval: float, cost: float, frames: int) -> dict[int, str]:
    clock = Clock()
    return run_stream(Session(pipeline_id="p", policy=policy, clock=clock), clock, interval=interval, cost=cost, frames=frames)


def test_under_three_times_overload_the_frames_that_run_are_the_every_third_sample() -> None:
    replies = simulate(KeepEveryNthPolicy(keep_every=3), interval=20, cost=60, frames=90)
    assert len(replies) == 90, "exactly one answer per frame"
    ran = sorted(index for index, reply in replies.items() if reply == "result")
    off_sample = [index for index in ran if index % 3]
    assert len(off_sample) <= 2, f"only a frame that found the pipeline idle may run off the sample: {off_sample}"
    assert len(ran) >= 25, "the pipeline stays busy: about one frame in three runs"


def test_the_default_policy_under_the_same_load_runs_frames_off_any_grid() -> None:
    """The contrast that makes the sampling policy worth having (and shows the simulation can tell them apart)."""
    replies = simulate(BackpressurePolicy(), interval=20, cost=70, frames=90)
    ran = [index for index, reply in replies.items() if reply == "result"]
    assert any(index % 3 for index in ran)


def test_below_capacity_nothing_is_dropped() -> None:
    replies = simulate(KeepEveryNthPolicy(keep_every=4), interval=50, cost=20, frames=40)
    assert set(replies.values()) == {"result"}


def test_an_off_sample_frame_is_dropped_on_arrival_once_frames_must_go() -> None:
    clock = Clock()
    session = Session(pipeline_id="p", policy=KeepEveryNthPolicy(keep_every=2, buffer_capacity=1), clock=clock)
    jpeg = b"\xff\xd8 frame \xff\xd9"
    assert session.receive_frame(jpeg).start is not None  # frame 0 runs
    assert session.receive_frame(jpeg).dropped == ()  # frame 1 waits: nothing has to go yet
    admission = session.receive_frame(jpeg)  # frame 2: the buffer is full
    assert [(drop.frame.index, drop.cause.value) for drop in admission.dropped] == [(1, "buffer_full")]
    admission = session.receive_frame(jpeg)  # frame 3 is off the sample and the buffer is full: it goes itself
    assert [(drop.frame.index, drop.cause.value) for drop in admission.dropped] == [(3, "buffer_full")]
    assert session.waiting_frames == 1 and session.start_next() is None  # frame 2 waits for frame 0


@pytest.mark.parametrize("keep_every", [0, 1, -3])
def test_keep_every_must_be_at_least_two(keep_every: int) -> None:
    with pytest.raises(ValueError, match="keep_every"):
        KeepEveryNthPolicy(keep_every=keep_every)
