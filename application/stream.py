"""The streaming use case: one client, one pipeline, frames in, exactly one reply per frame out.

The transport adapter hands over an accepted connection as a `Transport`; all
decisions (validation, backpressure, error codes, close codes) are made here
and in the domain, so another transport is only another adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from application.pipeline import PipelineExecutionError
from application.ports import (
    ConnectionClosed,
    Inbound,
    InboundKind,
    SendTimedOut,
    StreamObserver,
    Transport,
    WorkerPool,
    WorkGivenUp,
    WorkStillRunning,
)
from application.sessions import Admission, SessionManager
from application.video_service import VideoFilePipelineService
from domain import (
    CLOSE_CODE_FOR_ERROR,
    BackpressurePolicy,
    CloseCode,
    DropCause,
    ErrorCode,
    Frame,
    FrameValidationError,
    Session,
    SessionState,
    StreamError,
    validate_jpeg,
)
from domain.errors import GENERIC_INTERNAL_DETAIL
from domain.session import Drop, SlowDownSignal

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    policy: BackpressurePolicy
    frame_timeout_s: float
    max_frame_bytes: int
    idle_timeout_s: float = 60.0


class FrameTimeoutError(StreamError):
    """The pipeline did not finish a frame within the frame timeout: a pipeline_failure for that frame."""

    def __init__(self, pipeline_id: str, frame_index: int, timeout_s: float) -> None:
        super().__init__(
            ErrorCode.PIPELINE_FAILURE,
            f"pipeline {pipeline_id!r} did not finish frame {frame_index} within the {round(timeout_s * 1000)} ms frame timeout",
        )


class _Ending(StrEnum):
    PEER_GONE = "peer_gone"
    SEND_TIMEOUT = "send_timeout"
    CLIENT_ERROR = "client_error"
    INTERNAL = "internal"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class _Close:
    ending: _Ending
    error: StreamError | None = None
    frame_index: int | None = None
    peer_code: int | None = None


# Nothing to send on: the peer left, or stopped reading and the transport cut it off.
_CUT_OFF = (_Ending.PEER_GONE, _Ending.SEND_TIMEOUT)
# What the peer sees when the transport cuts the connection without a close frame.
_ABNORMAL_CLOSURE = 1006


def _closed(gone: ConnectionClosed) -> _Close:
    return _Close(_Ending.SEND_TIMEOUT if isinstance(gone, SendTimedOut) else _Ending.PEER_GONE)


def dropped_message(drop: Drop) -> dict[str, Any]:
    return {"frame_index": drop.frame.index, "dropped": True, "cause": drop.cause.value}


def slowdown_message(signal: SlowDownSignal) -> dict[str, Any]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "warning": "slow_down",
        "drop_rate": round(signal.drop_rate, 4),
        "suggested_fps": rounded(signal.suggested_fps),
        "processing_ms": rounded(signal.processing_ms),
        "interval_ms": rounded(signal.interval_ms),
    }


def error_message(error: StreamError, frame_index: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = error.to_message()
    if frame_index is not None:
        message["frame_index"] = frame_index
    return message


class StreamService:
    """Runs sessions over transports; the one place that knows the stream protocol."""

    def __init__(
        self,
        video: VideoFilePipelineService,
        pool: WorkerPool,
        sessions: SessionManager,
        observer: StreamObserver,
        settings: StreamSettings,
    ) -> None:
        self._video = video
        self._pool = pool
        self._sessions = sessions
        self._observer = observer
        self._settings = settings

    @property
    def sessions(self) -> SessionManager:
        return self._sessions

    def check_pipeline(self, pipeline_id: str | None) -> None:
        self._video.check_pipeline(pipeline_id)

    def busy_workers(self) -> int:
        return self._pool.busy_workers()

    async def run_frame(self, pipeline_id: str, frame_bytes: bytes, frame_index: int = 0) -> dict[str, Any]:
        """One frame outside any stream (the HTTP endpoint): same validation, pool and timeout as a stream."""
        self.check_pipeline(pipeline_id)
        timeout_s = self._settings.frame_timeout_s
        try:
            return await self._execute(pipeline_id, lambda: self._video.run_on_frame(pipeline_id, frame_index, frame_bytes))
        except TimeoutError:
            raise FrameTimeoutError(pipeline_id, frame_index, timeout_s) from None

    async def _execute(
        self, pipeline_id: str, work: Callable[[], dict[str, Any]], give_up: asyncio.Future[Any] | None = None
    ) -> dict[str, Any]:
        """Run a frame's work: in the worker pool, or on the loop when the pipeline is header-only.

        Pooled work raises WorkGivenUp when `give_up` completes first; header-only
        work takes microseconds and is never given up.
        """
        if self._video.runs_inline(pipeline_id):
            return work()
        return await self._pool.run(work, timeout_s=self._settings.frame_timeout_s, give_up=give_up)

    async def serve(self, transport: Transport, pipeline_id: str | None) -> None:
        """Serve one accepted connection until it closes, whoever closes it."""
        try:
            self.check_pipeline(pipeline_id)
        except StreamError as error:
            await self._reject(transport, pipeline_id, error)
            return

        assert pipeline_id is not None
        session = Session(pipeline_id=pipeline_id, policy=self._settings.policy)
        admission, handle = self._sessions.register(session)
        if admission is Admission.FULL:
            await self._reject(
                transport,
                pipeline_id,
                StreamError(
                    ErrorCode.SERVER_BUSY,
                    f"the server is at its limit of {self._sessions.max_sessions} concurrent sessions; retry later",
                ),
            )
            return
        if admission is Admission.SHUTTING_DOWN:
            await self._reject(
                transport, pipeline_id, StreamError(ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect later")
            )
            return
        assert handle is not None

        transport.attach_session(session)
        self._video.open_stream(session.session_id)
        session.transition(SessionState.OPEN)
        self._observer.session_opened(session, transport.client)
        run = _SessionRun(self, transport, session, handle.stop_requested, handle.deadline_passed)
        close_code, reason = int(CloseCode.INTERNAL_ERROR), "internal_error"
        try:
            close_code, reason = await run.run()
        except asyncio.CancelledError:
            # Cut off by the shutdown deadline (the transport then closes the connection with 1012),
            # or by the host cancelling the connection's task.
            close_code = int(CloseCode.SERVICE_RESTART)
            reason = "shutdown_deadline" if self._sessions.shutting_down else "cancelled"
            raise
        finally:
            self._sessions.unregister(session.session_id)
            self._video.release_stream(session.session_id)
            session.transition(SessionState.CLOSED)
            self._observer.session_closed(session, transport.client, close_code, reason)

    async def _reject(self, transport: Transport, pipeline_id: str | None, error: StreamError) -> None:
        self._observer.session_rejected(pipeline_id, transport.client, error.code, error.detail)
        try:
            await transport.send_json(error.to_message())
            self._observer.error_sent(None, error.code)
            await transport.close(int(CLOSE_CODE_FOR_ERROR[error.code]), error.code.value)
        except ConnectionClosed:
            return


class _SessionRun:
    """The two loops of one session: receiving frames and processing them, one at a time."""

    def __init__(
        self, service: StreamService, transport: Transport, session: Session, stop: asyncio.Event, deadline: asyncio.Event
    ) -> None:
        self._service = service
        self._transport = transport
        self._deadline = deadline
        self._session = session
        self._stop = stop
        self._send_lock = asyncio.Lock()
        self._to_start: asyncio.Queue[Frame] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        # Clear while the receive loop handles a message it has read: the frame is admitted, its
        # displaced frames answered and it is handed on (or answered inline) before the loop may stop.
        self._receiver_free = asyncio.Event()
        self._receiver_free.set()
        self._ending: asyncio.Future[_Close] = asyncio.get_running_loop().create_future()
        self._last_message_at = asyncio.get_running_loop().time()
        self._idle_check: asyncio.TimerHandle | None = None

    def _end(self, close: _Close) -> None:
        if not self._ending.done():
            self._ending.set_result(close)

    def _fail(self, where: str, error: Exception, frame: Frame | None) -> None:
        """A bug in serving this session: the log gets the traceback, the client a generic internal_error."""
        logger.exception("%s of session %s failed", where, self._session.session_id, exc_info=error)
        self._end(
            _Close(
                _Ending.INTERNAL,
                StreamError(ErrorCode.INTERNAL_ERROR, GENERIC_INTERNAL_DETAIL, log_message=repr(error)),
                frame_index=frame.index if frame is not None else None,
            )
        )

    async def run(self) -> tuple[int, str]:
        # Completes when the shutdown deadline passes; every pooled frame's work is raced against it.
        self._deadline_passed = asyncio.ensure_future(self._deadline.wait())
        receiver = asyncio.create_task(self._receive_loop(), name=f"receive-{self._session.session_id}")
        processor = asyncio.create_task(self._process_loop(), name=f"process-{self._session.session_id}")
        stop_waiter = asyncio.create_task(self._stop.wait())
        self._arm_idle_check(self._service._settings.idle_timeout_s)
        try:
            await asyncio.wait({self._ending, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not self._ending.done():
                self._end(_Close(_Ending.SHUTDOWN, StreamError(ErrorCode.SHUTTING_DOWN, "the server is shutting down; reconnect later")))
            close = self._ending.result()
            if close.ending not in _CUT_OFF:
                # A frame the receive loop has read is taken all the way (admitted, displaced frames
                # answered, handed on) before the loop stops: stopping it halfway could lose a frame.
                await self._receiver_free.wait()
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            if close.ending is _Ending.PEER_GONE:
                return close.peer_code or int(CloseCode.GOING_AWAY), "peer_gone"
            if close.ending is _Ending.SEND_TIMEOUT:
                return _ABNORMAL_CLOSURE, close.ending.value
            self._session.transition(SessionState.CLOSING)
            return await self._close_gracefully(close, processor)
        finally:
            if self._idle_check is not None:
                self._idle_check.cancel()
            for task in (receiver, processor, stop_waiter):
                task.cancel()
            self._deadline_passed.cancel()
            await asyncio.gather(receiver, processor, stop_waiter, return_exceptions=True)

    async def _close_gracefully(self, close: _Close, processor: asyncio.Task[None]) -> tuple[int, str]:
        """Answer the in-flight frame, answer waiting frames as dropped, send the error, close."""
        assert close.error is not None
        cause = DropCause.SHUTDOWN if close.ending is _Ending.SHUTDOWN else DropCause.CLOSING
        try:
            # The frame in flight finishes within the frame timeout, which the worker pool enforces,
            # or is answered as failed when the shutdown deadline passes first (see _process); the
            # processor starts no further frame once the session is ending.
            await self._idle.wait()
            processor.cancel()
            await asyncio.gather(processor, return_exceptions=True)
            for drop in self._session.drain_waiting(cause):
                await self._send(dropped_message(drop))
                self._service._observer.frame_dropped(self._session, drop.frame.index, drop.cause)
            await self._send(error_message(close.error, close.frame_index))
            self._service._observer.error_sent(self._session, close.error.code)
            code = int(CLOSE_CODE_FOR_ERROR[close.error.code])
            await self._transport.close(code, close.error.code.value)
            return code, close.error.code.value
        except SendTimedOut:
            return _ABNORMAL_CLOSURE, _Ending.SEND_TIMEOUT.value
        except ConnectionClosed:
            return int(CloseCode.GOING_AWAY), "peer_gone"

    def _arm_idle_check(self, delay_s: float) -> None:
        self._idle_check = asyncio.get_running_loop().call_later(delay_s, self._check_idle)

    def _check_idle(self) -> None:
        """End the session when no message came for the idle timeout and no frame is being worked on.

        One timer per idle period rather than a timeout around every receive:
        the receive loop only stamps the time of each message.
        """
        timeout_s = self._service._settings.idle_timeout_s
        quiet_s = asyncio.get_running_loop().time() - self._last_message_at
        if self._ending.done():
            return
        if not self._idle.is_set():
            self._arm_idle_check(timeout_s)  # a frame is in flight: the client is waiting, not idle
        elif quiet_s < timeout_s:
            self._arm_idle_check(timeout_s - quiet_s)
        else:
            self._end(
                _Close(
                    _Ending.CLIENT_ERROR,
                    StreamError(ErrorCode.IDLE_TIMEOUT, f"no frame arrived for {timeout_s:g} s; the session is closed"),
                )
            )

    async def _send(self, message: Mapping[str, Any]) -> None:
        async with self._send_lock:
            await self._transport.send_json(message)

    # Receiving -----------------------------------------------------------------

    async def _receive_loop(self) -> None:
        session = self._session
        max_bytes = self._service._settings.max_frame_bytes
        loop = asyncio.get_running_loop()
        try:
            inline = self._service._video.runs_inline(session.pipeline_id)
            while not self._ending.done():
                inbound = await self._transport.receive()
                self._last_message_at = loop.time()
                self._receiver_free.clear()
                try:
                    await self._handle_inbound(inbound, inline, max_bytes)
                finally:
                    self._receiver_free.set()
        except ConnectionClosed as gone:
            self._end(_closed(gone))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail("receive loop", exc, None)

    async def _handle_inbound(self, inbound: Inbound, inline: bool, max_bytes: int) -> None:
        """One message from the client, taken all the way: a frame is admitted and handed on, or the session ends."""
        session = self._session
        observer = self._service._observer
        if inbound.kind is InboundKind.DISCONNECT:
            self._end(_Close(_Ending.PEER_GONE, peer_code=inbound.close_code))
            return
        if inbound.kind is InboundKind.TEXT:
            self._end(
                _Close(
                    _Ending.CLIENT_ERROR,
                    StreamError(
                        ErrorCode.INVALID_MESSAGE,
                        "expected a binary message holding one JPEG image, got a text message",
                    ),
                )
            )
            return
        data = inbound.data
        assert isinstance(data, bytes)
        try:
            validate_jpeg(data, max_bytes)
        except FrameValidationError as error:
            index = session.increment_frame()
            observer.frame_received(session, index, len(data))
            self._end(_Close(_Ending.CLIENT_ERROR, error, frame_index=index))
            return
        admission = session.receive_frame(data)
        observer.frame_received(session, admission.frame.index, len(data))
        if admission.start is not None:
            self._idle.clear()
            if not inline:
                self._to_start.put_nowait(admission.start)  # the pipeline starts before the drop notices go out
        for drop in admission.dropped:
            await self._send(dropped_message(drop))
            observer.frame_dropped(session, drop.frame.index, drop.cause)
        if admission.start is not None and inline:
            await self._answer_inline(admission.start)
        if admission.dropped:
            signal = session.take_slowdown_signal()
            if signal is not None:
                await self._send(slowdown_message(signal))
                observer.slowdown_sent(session, signal.drop_rate, signal.suggested_fps)

    async def _answer_inline(self, frame: Frame) -> None:
        """Answer a header-only frame right here, without handing it to the processing task.

        The work is a header read, so nothing else could have arrived meanwhile;
        skipping the hand-off saves an event-loop round per frame, which is most
        of what a cheap frame costs. Frames of every other pipeline go through
        the processing task, so that the receive loop keeps reading while they run.
        """
        try:
            next_frame: Frame | None = frame
            while next_frame is not None:
                await self._process(next_frame)
                next_frame = None if self._ending.done() else self._session.start_next()
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception as exc:
            self._fail(f"answering frame {frame.index}", exc, frame)
        finally:
            if self._to_start.empty():
                self._idle.set()

    # Processing ----------------------------------------------------------------

    async def _process_loop(self) -> None:
        session = self._session
        frame: Frame | None = None
        try:
            while True:
                frame = await self._to_start.get()
                while frame is not None:
                    await self._process(frame)
                    frame = None if self._ending.done() else session.start_next()
                    if frame is not None:
                        self._idle.clear()
                # A frame admitted while the last reply was being sent is already queued here.
                if self._to_start.empty():
                    self._idle.set()
        except ConnectionClosed as gone:
            self._end(_closed(gone))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail("processing loop", exc, frame)
        finally:
            self._idle.set()

    async def _process(self, frame: Frame) -> None:
        """Run one frame off the event loop and send its one reply."""
        service = self._service
        session = self._session
        video = service._video
        started = session.now_ms()
        queue_ms = started - frame.received_ms
        pipeline_id = session.pipeline_id
        session_id = session.session_id
        reply: dict[str, Any]
        succeeded = False
        fatal: _Close | None = None
        straggler: WorkStillRunning | None = None
        try:
            reply = await service._execute(
                pipeline_id,
                lambda: video.run_on_frame(pipeline_id, frame.index, frame.data, stream_id=session_id),
                give_up=self._deadline_passed,
            )
            succeeded = True
        except WorkGivenUp:
            # The shutdown deadline passed first (also when it had passed as the frame started): the
            # work is cancelled if still queued; a thread already running it finishes unobserved.
            failure = StreamError(
                ErrorCode.PIPELINE_FAILURE,
                f"the server shut down before frame {frame.index} finished",
                log_message=f"frame {frame.index} of pipeline {pipeline_id!r} cut off by the shutdown deadline",
            )
            service._observer.frame_failed(session, frame.index, failure, code=failure.code)
            reply = error_message(failure, frame.index)
        except PipelineExecutionError as error:
            service._observer.frame_failed(session, frame.index, error, code=error.code)
            reply = error_message(error, frame.index)
        except TimeoutError as error:
            failure = FrameTimeoutError(pipeline_id, frame.index, service._settings.frame_timeout_s)
            service._observer.frame_failed(session, frame.index, error, code=failure.code)
            reply = error_message(failure, frame.index)
            if isinstance(error, WorkStillRunning):
                straggler = error
        except FrameValidationError as error:
            # Markers were fine but the image does not decode (or declares too many pixels).
            fatal = _Close(_Ending.CLIENT_ERROR, error, frame_index=frame.index)
            reply = {}
        except StreamError as error:
            # The pipeline became unavailable or unknown mid-stream: this frame fails, the stream goes on.
            failure = StreamError(ErrorCode.PIPELINE_FAILURE, error.detail, log_message=error.log_message)
            service._observer.frame_failed(session, frame.index, error, code=failure.code)
            reply = error_message(failure, frame.index)
        if straggler is not None:
            # The client gets its answer at the deadline, but this session starts nothing new until
            # the thread returns: a stuck tool then holds one worker, never the whole pool, and one
            # stream's tool state is never used by two threads at once.
            await self._send(reply)
            service._observer.error_sent(session, ErrorCode.PIPELINE_FAILURE)
            self._idle.set()
            await asyncio.wait({straggler.finished})
            session.complete_frame(frame, processing_ms=session.now_ms() - started, succeeded=False)
            return
        processing_ms = session.now_ms() - started
        session.complete_frame(frame, processing_ms=processing_ms, succeeded=succeeded)
        if fatal is not None:
            self._end(fatal)
            return
        await self._send(reply)
        if succeeded:
            service._observer.frame_processed(
                session,
                frame.index,
                queue_ms=queue_ms,
                processing_ms=processing_ms,
                latency_ms=session.now_ms() - frame.received_ms,
            )
        else:
            service._observer.error_sent(session, ErrorCode.PIPELINE_FAILURE)
