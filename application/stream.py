"""The streaming use case: one client, one pipeline, frames in, exactly one reply per frame out.

The rules live in application.protocol (`StreamProtocol`, a state machine
without I/O); this module only pumps: it reads the transport, feeds the
protocol each event, sends what the protocol queued, and starts on the frame
executor the frames the protocol starts. It makes no decision of its own, so
another transport is only another adapter and the rules are tested by
feeding events to the protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from application.errors import JobStillRunning
from application.messages import ErrorReply
from application.ports import ConnectionClosed, FrameExecutor, FrameJob, StreamObserver, Transport
from application.protocol import SHUTTING_DOWN_DETAIL, StreamProtocol
from application.sessions import Registration, SessionManager
from application.frame_service import FramePipelineService
from domain import (
    CLOSE_CODE_FOR_ERROR,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_FRAME_PIXELS,
    BackpressurePolicy,
    CloseCode,
    ErrorCode,
    Frame,
    Session,
    SessionState,
    StreamError,
)

logger = logging.getLogger(__name__)

DEFAULT_FRAME_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class StreamSettings:
    policy: BackpressurePolicy = BackpressurePolicy()
    frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    # Checked on frames a transport decoded, when they arrive (a JPEG's is checked on its header, in the engine).
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS


class StreamService:
    """Admits connections and runs each session's pump."""

    def __init__(
        self,
        frames: FramePipelineService,
        executor: FrameExecutor,
        sessions: SessionManager,
        observer: StreamObserver,
        settings: StreamSettings,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._frames = frames
        # The sessions' clock (ms); the process's monotonic clock unless a test drives one by hand.
        self._clock = clock
        self._executor = executor
        self._sessions = sessions
        self._observer = observer
        self._settings = settings

    @property
    def sessions(self) -> SessionManager:
        return self._sessions

    def busy_workers(self) -> int:
        return self._executor.busy_workers()

    def executor_health(self) -> dict[str, Any]:
        return self._executor.health()

    async def serve(self, transport: Transport, pipeline_id: str | None) -> None:
        """Serve one accepted connection until it closes, whoever closes it."""
        if not self._frames.is_valid_pipeline(pipeline_id):
            error = self._frames.pipeline_error(pipeline_id)
            if error is not None:  # None: it became available in between, so it is served
                await self._reject(transport, pipeline_id, error)
                return
        assert pipeline_id is not None  # a missing id is never valid

        session = (
            Session(pipeline_id=pipeline_id, policy=self._settings.policy)
            if self._clock is None
            else Session(pipeline_id=pipeline_id, policy=self._settings.policy, clock=self._clock)
        )
        registration, handle = self._sessions.register(session)
        if registration is Registration.FULL:
            await self._reject(
                transport,
                pipeline_id,
                StreamError(
                    ErrorCode.SERVER_BUSY,
                    f"the server is at its limit of {self._sessions.max_sessions} concurrent sessions; retry later",
                ),
            )
            return
        if registration is Registration.SHUTTING_DOWN:
            await self._reject(transport, pipeline_id, StreamError(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_DETAIL))
            return
        assert handle is not None

        transport.attach_session(session)
        self._executor.open_stream(session.session_id)
        session.transition(SessionState.OPEN)
        self._observer.session_opened(session, transport.client)
        settings = self._settings
        protocol = StreamProtocol(
            session,
            self._observer,
            frame_timeout_s=settings.frame_timeout_s,
            max_frame_bytes=settings.max_frame_bytes,
            idle_timeout_s=settings.idle_timeout_s,
            runs_inline=self._executor.runs_inline(pipeline_id),
            max_frame_pixels=settings.max_frame_pixels,
        )
        pump = _Pump(protocol, transport, self._executor, settings.frame_timeout_s)
        close_code, reason = int(CloseCode.INTERNAL_ERROR), "internal_error"
        try:
            close_code, reason = await pump.run(handle.stop_requested, handle.deadline_passed)
        except asyncio.CancelledError:
            # Cut off by the shutdown deadline (the transport then closes the connection with 1012),
            # or by the host cancelling the connection's task.
            close_code = int(CloseCode.SERVICE_RESTART)
            reason = "shutdown_deadline" if self._sessions.shutting_down else "cancelled"
            raise
        finally:
            self._sessions.unregister(session.session_id)
            self._executor.release_stream(session.session_id)
            session.transition(SessionState.CLOSED)
            self._observer.session_closed(session, transport.client, close_code, reason)

    async def _reject(self, transport: Transport, pipeline_id: str | None, error: StreamError) -> None:
        self._observer.session_rejected(pipeline_id, transport.client, error.code, error.detail)
        try:
            await transport.send_json(ErrorReply(error).to_json())
            self._observer.error_sent(None, error.code)
            await transport.close(int(CLOSE_CODE_FOR_ERROR[error.code]), error.code.value)
        except ConnectionClosed:
            return


# Parks the processing task once the session ends.
_NO_MORE_FRAMES = None


class _Pump:
    """One session's I/O: a receiving task, a processing task, sends, timers; every decision is the protocol's.

    Sends go out in the order the protocol queued them, whichever task
    performs them (`_flush`). A frame the protocol starts inline is run by
    the receiving task; other frames go to the processing task, so that
    receiving goes on while they run.
    """

    def __init__(self, protocol: StreamProtocol, transport: Transport, executor: FrameExecutor, frame_timeout_s: float) -> None:
        self._protocol = protocol
        self._transport = transport
        self._executor = executor
        self._frame_timeout_s = frame_timeout_s
        session = protocol.session
        self._pipeline_id = session.pipeline_id
        self._stream_id = session.session_id
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._ended: asyncio.Future[None] = loop.create_future()
        # True while a task sends the outbox; `_sent` completes when it is done, made only when another task waits.
        self._sending = False
        self._sent: asyncio.Future[None] | None = None
        self._to_start: asyncio.Queue[Frame | None] = asyncio.Queue()
        # True while the receiving task waits for the client's next message (see StreamProtocol.interrupt_receive).
        self._receiving = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._give_up: asyncio.Future[Any] | None = None

    async def run(self, stop: asyncio.Event, deadline: asyncio.Event) -> tuple[int, str]:
        protocol = self._protocol
        # Completes when the shutdown deadline passes; every pooled frame's work is raced against it.
        self._give_up = give_up = asyncio.ensure_future(deadline.wait())
        receiver = asyncio.create_task(self._receive_loop(), name=f"receive-{self._stream_id}")
        processor = asyncio.create_task(self._process_loop(), name=f"process-{self._stream_id}")
        stop_waiter = asyncio.create_task(stop.wait())
        self._idle_timer = self._loop.call_later(protocol.idle_timeout_s, self._idle_fired)
        try:
            waiters: set[asyncio.Future[Any]] = {self._ended, stop_waiter}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if protocol.ending is None:
                protocol.stop_requested()
                self._fed()  # also releases a processing task waiting on work that outlived its timeout
            close = protocol.ending
            assert close is not None
            if protocol.interrupt_receive(self._receiving):
                receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            if close.cut_off:
                return protocol.close_code()
            # The frame in flight is answered first (within the frame timeout, or at the shutdown deadline).
            self._to_start.put_nowait(_NO_MORE_FRAMES)
            await asyncio.gather(processor, return_exceptions=True)
            if not protocol.cut_off:
                protocol.closing_messages()
                await self._flush()
            if not protocol.cut_off:
                try:
                    await self._transport.close(*protocol.close_code())
                except ConnectionClosed as gone:
                    protocol.connection_lost(gone)
            return protocol.close_code()
        finally:
            protocol.session_ended()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            for task in (receiver, processor, stop_waiter):
                task.cancel()
            give_up.cancel()
            await asyncio.gather(receiver, processor, stop_waiter, return_exceptions=True)

    def _fed(self) -> None:
        """After each event: wake `run` once the protocol has decided to end."""
        if self._protocol.ending is not None and not self._ended.done():
            self._ended.set_result(None)

    def _idle_fired(self) -> None:
        delay_s = self._protocol.idle_check()
        self._idle_timer = None if delay_s is None else self._loop.call_later(delay_s, self._idle_fired)
        self._fed()

    async def _flush(self) -> None:
        """Send what the protocol queued, in order, and tell it each message went out.

        One task sends at a time and sends everything queued, whoever queued
        it; a task that finds another sending waits until that one is done,
        so that each caller goes on only once its messages are out.
        """
        if self._sending:
            if self._sent is None:
                self._sent = self._loop.create_future()
            await asyncio.shield(self._sent)
            return
        protocol = self._protocol
        outbox = protocol.outbox
        send_json = self._transport.send_json
        self._sending = True
        try:
            while outbox:
                outgoing = outbox.popleft()
                message = outgoing.to_json()
                if message is not None:
                    await send_json(message)
                protocol.delivered(outgoing)
        except ConnectionClosed as gone:
            protocol.connection_lost(gone)
            self._fed()
        finally:
            self._sending = False
            sent, self._sent = self._sent, None
            if sent is not None and not sent.done():
                sent.set_result(None)

    def _job(self, frame: Frame) -> FrameJob:
        return FrameJob(self._pipeline_id, frame.index, frame.data, self._stream_id, True, self._protocol.picture_of(frame))

    # Receiving -----------------------------------------------------------------

    async def _receive_loop(self) -> None:
        protocol = self._protocol
        transport = self._transport
        to_start = self._to_start
        executor = self._executor
        pipeline_id = self._pipeline_id
        stream_id = self._stream_id
        inline = protocol.runs_inline
        try:
            while protocol.ending is None:
                self._receiving = True
                inbound = await transport.receive()
                self._receiving = False
                start = protocol.message_received(inbound)
                if start is not None and not inline:
                    to_start.put_nowait(start)  # the pipeline starts before the drop notices go out
                if protocol.outbox:
                    await self._flush()
                while start is not None and inline:
                    try:
                        reply = executor.run_inline(FrameJob(pipeline_id, start.index, start.data, stream_id, True, protocol.picture_of(start)))
                    except Exception as error:
                        start = protocol.frame_failed(start, error)
                    else:
                        start = protocol.frame_finished(start, reply)
                    await self._flush()
                self._fed()
        except ConnectionClosed as gone:
            protocol.connection_lost(gone)
            self._fed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            protocol.internal_failure("receive loop", exc, None)
            self._fed()

    # Processing ----------------------------------------------------------------

    async def _process_loop(self) -> None:
        protocol = self._protocol
        executor = self._executor
        frame: Frame | None = None
        start: Frame | None
        try:
            while (start := await self._to_start.get()) is not _NO_MORE_FRAMES:
                while start is not None:
                    frame = start
                    try:
                        reply = await executor.run(self._job(frame), timeout_s=self._frame_timeout_s, give_up=self._give_up)
                    except JobStillRunning as running:
                        protocol.frame_still_running(frame, running)
                        await self._flush()
                        # Nothing else starts until the work returns; the session may end meanwhile.
                        await asyncio.wait({running.finished, self._ended}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
                        if self._ended.done():
                            return
                        start = protocol.straggler_returned(frame)
                    except Exception as error:
                        start = protocol.frame_failed(frame, error)
                    else:
                        start = protocol.frame_finished(frame, reply)
                    await self._flush()
                    self._fed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            protocol.internal_failure("processing loop", exc, frame)
            self._fed()
