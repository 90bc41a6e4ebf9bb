"""The stream's rules as a state machine without I/O: events in, decisions out.

Like python-websockets' `Protocol`, this object never awaits, sleeps or reads
a clock of its own: the session's clock stamps events, the pump
(application.stream) feeds it what happened and performs what it decided.

Events: a message arrived (`message_received`), a frame's work finished or
failed (`frame_finished`, `frame_failed`; a timeout, a give-up at the shutdown
deadline and a broken tool are failures of different kinds), the work is
still running past its deadline (`frame_still_running`, then
`straggler_returned`), the idle timer fired (`idle_check`), a stop was
requested (`stop_requested`), the peer left or stopped reading
(`connection_lost`), a bug in serving (`internal_failure`).

Decisions: what goes out (`outbox`: the typed messages of
application.messages and the observer's reports, in one order; the pump
sends each that has a wire form and hands every item back through
`delivered`), the frame to start (the return value of the events that can start
one) and where (`runs_inline`), whether a wait for the client's next message
is cut short (`interrupt_receive`), and the ending (`ending`, then `closing_messages` and
`close_code`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from application.errors import JobGivenUp, JobTimedOut, FrameTimeoutError, PipelineExecutionError
from application.messages import (
    ARRIVALS_DUE,
    ArrivalsDue,
    ErrorReply,
    FrameDropped,
    FrameFailure,
    FrameResult,
    Outgoing,
    SlowDown,
)
from application.ports import ConnectionClosed, DecodedPicture, FrameReply, Inbound, InboundKind, SendTimedOut, StreamObserver
from domain import DEFAULT_MAX_FRAME_PIXELS, CLOSE_CODE_FOR_ERROR, CloseCode, DropCause, ErrorCode, Frame, FrameValidationError, Session, SessionState, StreamError, validate_jpeg
from domain.errors import GENERIC_INTERNAL_DETAIL
from domain.session import FrameAdmission

logger = logging.getLogger(__name__)

# What the peer sees when the transport cuts the connection without a close frame.
ABNORMAL_CLOSURE = 1006


class Ending(StrEnum):
    """Why a session ends; the first decided ending wins."""

    PEER_GONE = "peer_gone"
    SEND_TIMEOUT = "send_timeout"
    CLIENT_ERROR = "client_error"
    INTERNAL = "internal"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class Close:
    """The decision to end: why, the error the client is told (none when it is cut off), the frame it concerns."""

    ending: Ending
    error: StreamError | None = None
    frame_index: int | None = None
    peer_code: int | None = None

    @property
    def cut_off(self) -> bool:
        """Nothing more can be sent: the peer left, or stopped reading and the transport cut it off."""
        return self.ending is Ending.PEER_GONE or self.ending is Ending.SEND_TIMEOUT


SHUTTING_DOWN_DETAIL = "the server is shutting down; reconnect later"


class StreamProtocol:
    """One session's stream protocol: which reply each event gets, what starts next, how the session ends."""

    __slots__ = (
        "_frame_timeout_s",
        "_idle_timeout_s",
        "_inline",
        "_last_message_ms",
        "_max_frame_bytes",
        "_max_frame_pixels",
        "_observer",
        "_pictures",
        "_started_ms",
        "_straggler",
        "_unreported",
        "ending",
        "outbox",
        "session",
    )

    def __init__(
        self,
        session: Session,
        observer: StreamObserver,
        *,
        frame_timeout_s: float,
        max_frame_bytes: int,
        idle_timeout_s: float,
        runs_inline: bool = False,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
    ) -> None:
        self.session = session
        self._inline = runs_inline
        self._observer = observer
        self._frame_timeout_s = frame_timeout_s
        self._max_frame_bytes = max_frame_bytes
        self._max_frame_pixels = max_frame_pixels
        self._idle_timeout_s = idle_timeout_s
        self.outbox: deque[Outgoing] = deque()
        self.ending: Close | None = None
        self._last_message_ms = session.now_ms()
        # When the frame in flight started (session clock, ms), for its processing time.
        self._started_ms = 0.0
        # The frame answered at its deadline whose work still runs: nothing starts until it returns.
        self._straggler: Frame | None = None
        # Admitted frames not yet reported to the observer (index, bytes): see _report_arrivals.
        self._unreported: list[tuple[int, int]] = []
        # The decoded pictures of the frames not yet answered that came on a media track, by frame index:
        # the session keeps the frames, this their pictures, until each is answered (at most the session's).
        self._pictures: dict[int, DecodedPicture] = {}

    # Events -----------------------------------------------------------------

    def message_received(self, inbound: Inbound) -> Frame | None:
        """A message from the client; returns the frame to start now, if any.

        The frame is admitted, and the frames it displaces answered as dropped,
        before anything else can happen: the event is one synchronous step.
        """
        session = self.session
        if inbound.kind is not InboundKind.BINARY:
            if inbound.kind is InboundKind.PICTURE:
                return self._picture_received(inbound.data)  # type: ignore[arg-type]
            self._last_message_ms = session.now_ms()
            if inbound.kind is InboundKind.DISCONNECT:
                self._end(Close(Ending.PEER_GONE, peer_code=inbound.close_code))
            else:
                self._end(
                    Close(
                        Ending.CLIENT_ERROR,
                        StreamError(ErrorCode.INVALID_MESSAGE, "expected a binary message holding one JPEG image, got a text message"),
                    )
                )
            return None
        data = inbound.data
        assert isinstance(data, bytes)
        if self.ending is not None:
            self._arrived_late(data, len(data), None)
            return None
        try:
            validate_jpeg(data, self._max_frame_bytes)
        except FrameValidationError as error:
            self._refused(len(data), error)
            return None
        return self._admitted(session.receive_frame(data), len(data))

    def _arrived_late(self, data: bytes, size: int, rtp_timestamp: int | None) -> None:
        """A frame read just as the session began to end: it is answered, as dropped, and never started."""
        assert self.ending is not None
        if self.ending.cut_off:
            return
        session = self.session
        now = session.now_ms()
        late = Frame(index=session.increment_frame(), data=data, received_ms=now)
        self._unreported.append((late.index, size))
        session.mark_drop(now)
        cause = DropCause.SHUTDOWN if self.ending.ending is Ending.SHUTDOWN else DropCause.CLOSING
        self.outbox.append(FrameDropped(late, cause, rtp_timestamp))

    def _refused(self, size: int, error: FrameValidationError) -> None:
        """A frame that fails its checks: it is numbered, and the session ends with its error."""
        session = self.session
        self._last_message_ms = session.now_ms()
        index = session.increment_frame()
        self._unreported.append((index, size))
        self.outbox.append(ARRIVALS_DUE)
        self._end(Close(Ending.CLIENT_ERROR, error, frame_index=index))

    def _picture_received(self, picture: DecodedPicture) -> Frame | None:
        """A frame the transport decoded: admitted like a message's frame, its picture kept beside it until it is answered.

        It decoded, so only its size is checked, on arrival: a larger frame ends
        the session with frame_too_large before it is kept waiting, as a JPEG
        declaring too many pixels does.
        """
        if self.ending is not None:
            self._arrived_late(b"", picture.nbytes, picture.rtp_timestamp)
            return None
        pixels = picture.width * picture.height
        if pixels > self._max_frame_pixels:
            detail = f"frame is {picture.width}x{picture.height} = {pixels} pixels; the limit is {self._max_frame_pixels} pixels"
            self._refused(picture.nbytes, FrameValidationError(ErrorCode.FRAME_TOO_LARGE, detail))
            return None
        admission = self.session.receive_frame(b"")
        self._pictures[admission.frame.index] = picture
        return self._admitted(admission, picture.nbytes)

    def _admitted(self, admission: FrameAdmission, size: int) -> Frame | None:
        session = self.session
        outbox = self.outbox
        frame = admission.frame
        self._last_message_ms = frame.received_ms
        self._unreported.append((frame.index, size))
        start = admission.start
        if admission.dropped:
            for drop in admission.dropped:
                outbox.append(FrameDropped(drop.frame, drop.cause, self._let_go(drop.frame)))
            signal = session.take_slowdown_signal()
            if signal is not None:
                outbox.append(SlowDown(signal))
        if start is None:
            outbox.append(ARRIVALS_DUE)
            return None
        self._started_ms = frame.received_ms if start is frame else session.now_ms()
        if not self._inline:
            # Reported once the drop notices are out; a frame answered at once is reported after its reply instead.
            outbox.append(ARRIVALS_DUE)
        return start

    def frame_finished(self, frame: Frame, reply: FrameReply) -> Frame | None:
        """The frame's work returned its reply; returns the next frame to start, if any."""
        session = self.session
        started_ms = self._started_ms
        now = session.now_ms()
        processing_ms = now - started_ms
        session.complete_frame(frame, processing_ms=processing_ms, succeeded=True, now=now)
        self.outbox.append(FrameResult(frame, reply.result, processing_ms, started_ms - frame.received_ms, self._let_go(frame)))
        return self._next()

    def frame_failed(self, frame: Frame, error: BaseException) -> Frame | None:
        """The frame's work failed; the kind of failure decides the reply. Returns the next frame to start."""
        session = self.session
        session.complete_frame(frame, processing_ms=session.now_ms() - self._started_ms, succeeded=False)
        rtp_timestamp = self._let_go(frame)
        if isinstance(error, FrameValidationError):
            # Markers were fine but the image does not decode (or declares too many pixels): the client sent it.
            self.outbox.append(ARRIVALS_DUE)
            self._end(Close(Ending.CLIENT_ERROR, error, frame_index=frame.index))
            return None
        failure: StreamError
        cause: Exception
        if isinstance(error, JobGivenUp):
            # The shutdown deadline passed first: queued work never runs, running work finishes unobserved.
            failure = cause = StreamError(
                ErrorCode.PIPELINE_FAILURE,
                f"the server shut down before frame {frame.index} finished",
                log_message=f"frame {frame.index} of pipeline {session.pipeline_id!r} cut off by the shutdown deadline",
            )
        elif isinstance(error, PipelineExecutionError):
            failure = cause = error
        elif isinstance(error, JobTimedOut):
            failure, cause = FrameTimeoutError(session.pipeline_id, frame.index, self._frame_timeout_s), error
        elif isinstance(error, StreamError):
            # The pipeline became unavailable or unknown mid-stream: this frame fails, the stream goes on.
            failure, cause = StreamError(ErrorCode.PIPELINE_FAILURE, error.detail, log_message=error.log_message), error
        else:
            self.outbox.append(ARRIVALS_DUE)
            self.internal_failure(f"frame {frame.index}", error, frame)
            return None
        self.outbox.append(ErrorReply(failure, frame.index, FrameFailure(frame.index, cause), rtp_timestamp))
        return self._next()

    def frame_still_running(self, frame: Frame, error: JobTimedOut) -> None:
        """The deadline passed but the work could not be stopped: the client is answered now.

        Nothing else starts until `straggler_returned`: a stuck tool then holds
        one worker, never the whole pool, and one stream's tool state is never
        used by two runs at once.
        """
        failure = FrameTimeoutError(self.session.pipeline_id, frame.index, self._frame_timeout_s)
        self._straggler = frame
        self.outbox.append(ErrorReply(failure, frame.index, FrameFailure(frame.index, error), self._let_go(frame)))

    def straggler_returned(self, frame: Frame) -> Frame | None:
        """The work answered at its deadline has returned; returns the next frame to start."""
        session = self.session
        self._straggler = None
        session.complete_frame(frame, processing_ms=session.now_ms() - self._started_ms, succeeded=False)
        return self._next()

    def idle_check(self) -> float | None:
        """The idle timer fired: seconds until the next check, or None when no further check is needed.

        A frame in flight means the client is waiting, not idle.
        """
        if self.ending is not None:
            return None
        timeout_s = self._idle_timeout_s
        if self.busy:
            return timeout_s
        quiet_s = (self.session.now_ms() - self._last_message_ms) / 1000.0
        if quiet_s < timeout_s:
            return timeout_s - quiet_s
        self._end(
            Close(Ending.CLIENT_ERROR, StreamError(ErrorCode.IDLE_TIMEOUT, f"no frame arrived for {timeout_s:g} s; the session is closed"))
        )
        return None

    def stop_requested(self) -> None:
        """The server is shutting down: finish the frame in flight, answer the rest, close with 1012."""
        self._end(Close(Ending.SHUTDOWN, StreamError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_DETAIL)))

    def connection_lost(self, gone: ConnectionClosed) -> None:
        """The peer left, or stopped reading and was cut off: nothing more goes out, a graceful close included.

        What was queued is still reported (the observer hears of arrivals and
        failures), but not as sent.
        """
        if self.ending is None or not self.ending.cut_off:
            self.ending = Close(Ending.SEND_TIMEOUT if isinstance(gone, SendTimedOut) else Ending.PEER_GONE)
        self._report_unsent()

    def internal_failure(self, where: str, error: BaseException, frame: Frame | None) -> None:
        """A bug in serving this session: the log gets the traceback, the client a generic internal_error."""
        logger.error("%s of session %s failed", where, self.session.session_id, exc_info=error)
        self._end(
            Close(
                Ending.INTERNAL,
                StreamError(ErrorCode.INTERNAL_ERROR, GENERIC_INTERNAL_DETAIL, log_message=repr(error)),
                frame_index=frame.index if frame is not None else None,
            )
        )

    def session_ended(self) -> None:
        """The pump is done: whatever was never delivered (the connection was cut) is reported, arrivals included."""
        self._report_unsent()
        self._report_arrivals()
        self._pictures.clear()

    def delivered(self, outgoing: Outgoing) -> None:
        """An item of the outbox has been dealt with (sent, where it has a wire form): tell the observer.

        Every report about a frame's outcome comes after the report of its
        arrival, so pending arrivals go first.
        """
        if self._unreported:
            self._report_arrivals()
        kind = type(outgoing)
        if kind is ArrivalsDue:
            return
        session = self.session
        observer = self._observer
        if type(outgoing) is FrameResult:
            frame = outgoing.frame
            observer.frame_processed(
                session,
                frame.index,
                queue_ms=outgoing.queue_ms,
                processing_ms=outgoing.processing_ms,
                latency_ms=session.now_ms() - frame.received_ms,
            )
        elif type(outgoing) is FrameDropped:
            observer.frame_dropped(session, outgoing.frame.index, outgoing.cause)
        elif type(outgoing) is ErrorReply:
            self._report_failure(outgoing)
            observer.error_sent(session, outgoing.code)
        elif type(outgoing) is SlowDown:
            observer.slowdown_sent(session, outgoing.signal.drop_rate, outgoing.signal.suggested_fps)

    # Queries ------------------------------------------------------------------

    @property
    def cut_off(self) -> bool:
        """The session has ended without a way to tell the client: nothing more is sent."""
        return self.ending is not None and self.ending.cut_off

    def picture_of(self, frame: Frame) -> DecodedPicture | None:
        """The decoded picture of a frame that came on a media track (the decoded-frame job's input); None for a message's frame."""
        pictures = self._pictures
        return pictures.get(frame.index) if pictures else None

    @property
    def idle_timeout_s(self) -> float:
        return self._idle_timeout_s

    @property
    def runs_inline(self) -> bool:
        """Whether the frames this protocol starts are run where they were read.

        A header-only pipeline's work is bounded by the JPEG header, so running
        it on the spot saves a hand-off per frame and nothing else can arrive
        meanwhile; any other work runs on the executor while receiving goes on.
        """
        return self._inline

    def interrupt_receive(self, waiting_for_message: bool) -> bool:
        """Once the session has ended: whether the pump's receiving must be cancelled now.

        A wait for the client's next message is cut short; a message being taken
        in is finished first (admitted, displaced frames answered, handed on or
        answered inline), unless nothing more can be sent.
        """
        close = self.ending
        return close is not None and (close.cut_off or waiting_for_message)

    @property
    def busy(self) -> bool:
        """A frame is in flight and not yet answered (work answered at its deadline that runs on does not count)."""
        return self.session.in_flight is not None and self._straggler is None

    def closing_messages(self) -> None:
        """Queue the graceful close: waiting frames answered as dropped, then the error. Call once the frame in flight is answered."""
        close = self.ending
        assert close is not None and close.error is not None
        session = self.session
        if session.state is SessionState.OPEN:
            session.transition(SessionState.CLOSING)
        cause = DropCause.SHUTDOWN if close.ending is Ending.SHUTDOWN else DropCause.CLOSING
        outbox = self.outbox
        for drop in session.drain_waiting(cause):
            outbox.append(FrameDropped(drop.frame, drop.cause, self._let_go(drop.frame)))
        outbox.append(ErrorReply(close.error, close.frame_index))

    def close_code(self) -> tuple[int, str]:
        """The close code and reason the session ends with, as decided."""
        close = self.ending
        assert close is not None
        if close.ending is Ending.PEER_GONE:
            return close.peer_code or int(CloseCode.GOING_AWAY), "peer_gone"
        if close.ending is Ending.SEND_TIMEOUT:
            return ABNORMAL_CLOSURE, close.ending.value
        assert close.error is not None
        return int(CLOSE_CODE_FOR_ERROR[close.error.code]), close.error.code.value

    # Internals ------------------------------------------------------------------

    def _end(self, close: Close) -> None:
        if self.ending is None:
            self.ending = close

    def _next(self) -> Frame | None:
        if self.ending is not None:
            return None
        start = self.session.start_next()
        if start is None:
            return None
        self._started_ms = self.session.now_ms()
        return start

    def _let_go(self, frame: Frame) -> int | None:
        """The frame is answered: its picture (a media track's frame) is let go; its RTP timestamp, for the reply."""
        picture = self._pictures.pop(frame.index, None) if self._pictures else None
        return None if picture is None else picture.rtp_timestamp

    def _report_arrivals(self) -> None:
        unreported = self._unreported
        if unreported:
            session = self.session
            observer = self._observer
            for index, size in unreported:
                observer.frame_received(session, index, size)
            unreported.clear()

    def _report_failure(self, reply: ErrorReply) -> None:
        failure = reply.failure
        if failure is not None:
            self._observer.frame_failed(self.session, failure.frame_index, failure.cause, code=reply.code)

    def _report_unsent(self) -> None:
        """Items that will never go out: their arrivals and failures still count; nothing is reported as sent."""
        outbox = self.outbox
        while outbox:
            outgoing = outbox.popleft()
            self._report_arrivals()
            if type(outgoing) is ErrorReply:
                self._report_failure(outgoing)

