"""Property-based cases: whatever a client sends, the answer is a declared one, and the server stays up.

Each example is one session. The expected outcome is computed from the
document's rules (a text message is invalid_message/1003, a binary message
that is not a JPEG is invalid_frame/1007, one over the limit is
frame_too_large/1009, frames before the bad message get their results), so a
hang, a 1011, an undeclared message or a wrong close fails the example.
Example counts are bounded and the seed is derived from each test's name
(derandomize), so the suite takes seconds and fails the same way twice.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.frames import EOI, SOI, jpeg, jpeg_of_size
from contracts.scenarios import Outcome, assert_serving, check_invariants, run_session
from contracts.targets import Target

CONTRACT_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JPEGS = [jpeg(48, 32, seed=1), jpeg(64, 48, seed=2, quality=50), jpeg(17, 9, seed=3)]


def is_jpeg_shaped(data: bytes) -> bool:
    """What the markers check accepts: starts FF D8, ends FF D9, at least 4 bytes."""
    return len(data) >= 4 and data.startswith(SOI) and data.endswith(EOI)


def session(target: Target, role: str, outgoing: list[bytes | str]) -> Outcome:
    outcome = asyncio.run(run_session(target, role, outgoing, lockstep=True, settle_timeout_s=15))
    check_invariants(outcome)
    return outcome


def expect_ended_by(outcome: Outcome, code: str, close_code: int, good_frames: int, *, names_frame: bool) -> None:
    """`good_frames` results, then the error `code` (the next frame's reply when it names one) and `close_code`."""
    expected = {index: "result" for index in range(good_frames)} | ({good_frames: f"error:{code}"} if names_frame else {})
    assert outcome.kinds() == expected, outcome.describe()
    assert outcome.error is not None and outcome.error.code == code, outcome.describe()
    assert outcome.error.frame_index == (good_frames if names_frame else None), outcome.describe()
    assert outcome.close_code == close_code, outcome.describe()


def signature(outcome: Outcome) -> tuple[object, ...]:
    """What a session came to, in a form to compare with the declared possibilities."""
    return (tuple(outcome.kinds().values()), outcome.error.code if outcome.error else None, outcome.close_code)


# Random messages ------------------------------------------------------------------------------

good_frame = st.sampled_from(JPEGS)
not_a_jpeg = st.binary(max_size=512).filter(lambda data: not is_jpeg_shaped(data))
text = st.text(max_size=200)


@CONTRACT_SETTINGS
@given(lead=st.lists(good_frame, max_size=3), bad=st.one_of(not_a_jpeg, text), tail=st.lists(st.one_of(good_frame, text), max_size=2))
def test_random_messages_get_the_declared_error_after_the_good_frames(target: Target, lead: list[bytes], bad: bytes | str, tail: list) -> None:
    outcome = session(target, "result", [*lead, bad, *tail])
    code, close_code, names_frame = ("invalid_message", 1003, False) if isinstance(bad, str) else ("invalid_frame", 1007, True)
    expect_ended_by(outcome, code, close_code, len(lead), names_frame=names_frame)


def test_the_server_survived_the_random_messages(target: Target) -> None:
    asyncio.run(assert_serving(target))


# Damaged JPEGs ---------------------------------------------------------------------------------


@CONTRACT_SETTINGS
@given(base=good_frame, data=st.data())
def test_a_truncated_jpeg_is_invalid_frame(target: Target, base: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(base) - 1).filter(lambda n: not base[:n].endswith(EOI)), label="cut")
    outcome = session(target, "result", [jpeg(), base[:cut]])
    expect_ended_by(outcome, "invalid_frame", 1007, 1, names_frame=True)


@CONTRACT_SETTINGS
@given(garbage=st.binary(min_size=0, max_size=2048).map(lambda data: data.replace(b"\xff", b"\x00")))
@example(garbage=b"")
def test_markers_around_garbage_do_not_decode_and_are_invalid_frame(target: Target, garbage: bytes) -> None:
    # No FF byte inside: no marker, so no image header, whatever the bytes.
    outcome = session(target, "decode", [jpeg(), SOI + garbage + EOI])
    expect_ended_by(outcome, "invalid_frame", 1007, 1, names_frame=True)


@CONTRACT_SETTINGS
@given(base=good_frame, data=st.data())
def test_a_corrupted_jpeg_gets_a_declared_answer_and_never_an_internal_error(target: Target, base: bytes, data: st.DataObject) -> None:
    # Bytes overwritten anywhere between the two end markers: the header may now lie about the
    # image, the entropy-coded data may be noise. A decoder may still make an image of it.
    damaged = bytearray(base)
    for _ in range(data.draw(st.integers(min_value=1, max_value=8), label="damages")):
        position = data.draw(st.integers(min_value=2, max_value=len(base) - 3), label="position")
        damaged[position] = data.draw(st.integers(min_value=0, max_value=255), label="byte")
    outcome = session(target, "decode", [bytes(damaged), jpeg()])
    # Decoded after all; or invalid_frame when it does not decode; or frame_too_large when its
    # header now declares more pixels than the server accepts. Never anything else.
    assert signature(outcome) in {
        (("result", "result"), None, 1000),
        (("error:invalid_frame",), "invalid_frame", 1007),
        (("error:frame_too_large",), "frame_too_large", 1009),
    }, outcome.describe()


def test_the_server_survived_the_damaged_jpegs(target: Target) -> None:
    asyncio.run(assert_serving(target))


# Sizes around the limit ---------------------------------------------------------------------------


@settings(CONTRACT_SETTINGS, max_examples=6)
@given(below=st.integers(min_value=0, max_value=4096))
@example(below=0)
@example(below=1)
def test_a_frame_up_to_the_size_limit_is_answered(target: Target, below: int) -> None:
    outcome = session(target, "result", [jpeg_of_size(target.max_frame_bytes - below), jpeg()])
    assert outcome.kinds() == {0: "result", 1: "result"}, outcome.describe()
    assert outcome.close_code == 1000


@settings(CONTRACT_SETTINGS, max_examples=6)
@given(above=st.integers(min_value=1, max_value=4096))
@example(above=1)
@example(above=2)
def test_a_frame_over_the_size_limit_is_frame_too_large(target: Target, above: int) -> None:
    outcome = session(target, "result", [jpeg(), jpeg_of_size(target.max_frame_bytes + above), jpeg()])
    expect_ended_by(outcome, "frame_too_large", 1009, 1, names_frame=True)
