"""What a session sends and reports, as typed values: the stream protocol's outbox.

Each server message of `asyncapi.yaml` is one class here (a named tuple:
one or more is made for every frame, and a tuple is the cheapest value to
make); `to_json()` renders
it as the document declares (tests/test_asyncapi_contract.py validates every
kind against the document's schemas). The outbox also carries reports that
only the observer hears (`ArrivalsDue`), so that everything a session tells
the world, the client and the observer alike, leaves in one order from one
queue: the pump sends what has a wire form and hands each item back to the
protocol (`StreamProtocol.delivered`), which tells the observer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from domain import DropCause, ErrorCode, Frame, StreamError
from domain.session import SlowDownSignal


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class FrameResult(NamedTuple):
    """A frame's pipeline result (`FrameResult` in the document); the timings are for the observer only."""

    frame: Frame
    result: dict[str, Any]
    processing_ms: float
    queue_ms: float
    # The frame's RTP timestamp, for a frame that came on a media track (ports.DecodedPicture).
    rtp_timestamp: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.rtp_timestamp is None:
            return {"frame_index": self.frame.index, "result": self.result}
        return {"frame_index": self.frame.index, "result": self.result, "rtp_timestamp": self.rtp_timestamp}


class FrameDropped(NamedTuple):
    """A frame answered without being run, and why (`FrameDropped`)."""

    frame: Frame
    cause: DropCause
    rtp_timestamp: int | None = None

    def to_json(self) -> dict[str, Any]:
        message: dict[str, Any] = {"frame_index": self.frame.index, "dropped": True, "cause": self.cause.value}
        if self.rtp_timestamp is not None:
            message["rtp_timestamp"] = self.rtp_timestamp
        return message


class SlowDown(NamedTuple):
    """The sender should slow down (`SlowDownWarning`)."""

    signal: SlowDownSignal

    def to_json(self) -> dict[str, Any]:
        signal = self.signal
        return {
            "warning": "slow_down",
            "drop_rate": round(signal.drop_rate, 4),
            "suggested_fps": _rounded(signal.suggested_fps, 3),
            "processing_ms": _rounded(signal.processing_ms, 3),
            "interval_ms": _rounded(signal.interval_ms, 3),
        }


class FrameFailure(NamedTuple):
    """Why a frame failed, for the observer: the error as raised (the log keeps its cause), and the frame."""

    frame_index: int
    cause: Exception


class ErrorReply(NamedTuple):
    """An error the client is told (one of the document's error messages), with the frame it concerns if any.

    `failure` is set when the error answers a frame whose work failed: the
    observer then hears of the failure before it hears the error went out.
    """

    error: StreamError
    frame_index: int | None = None
    failure: FrameFailure | None = None
    # The failed frame's RTP timestamp, for a pipeline_failure about a frame that came on a media track.
    rtp_timestamp: int | None = None

    @property
    def code(self) -> ErrorCode:
        return self.error.code

    def to_json(self) -> dict[str, Any]:
        message: dict[str, Any] = self.error.to_message()
        if self.frame_index is not None:
            message["frame_index"] = self.frame_index
        if self.rtp_timestamp is not None:
            message["rtp_timestamp"] = self.rtp_timestamp
        return message


class ArrivalsDue(NamedTuple):
    """Observer only: report the frames admitted so far, now that what had to go out first has gone."""

    def to_json(self) -> None:
        return None


ARRIVALS_DUE = ArrivalsDue()

ServerMessage = FrameResult | FrameDropped | SlowDown | ErrorReply
Outgoing = ServerMessage | ArrivalsDue
