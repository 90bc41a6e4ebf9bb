"""StreamService's pump against fakes at its ports, driven step by step.

The fakes never sleep: a pooled frame's work waits until the test settles it
(`work.finish`, `work.fail`), a send the test holds waits until it is let go
(`transport.release`), and `turns()` lets the pump's tasks run until each
waits on something the test controls. No time passes unless a test asks for
a deadline, and then it is a deadline of 0: the order of events, not a
machine's speed, decides every outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from application.errors import JobGivenUp, JobStillRunning
from application.ports import ConnectionClosed, FrameJob, FrameReply, Inbound, InboundKind
from application.sessions import SessionManager
from application.stream import StreamService, StreamSettings
from domain import BackpressurePolicy, DropCause, ErrorCode, Session
from domain.errors import GENERIC_INTERNAL_DETAIL
from tests.support.fakes import Clock, RecordingObserver
from tests.support.media import jpeg

FRAME = jpeg()
BINARY = Inbound(InboundKind.BINARY, FRAME)
BYE = Inbound(InboundKind.DISCONNECT, close_code=1000)


async def turns(count: int = 50) -> None:
    """Let every other task run until it waits on the test again (each turn is one pass of the event loop)."""
    for _ in range(count):
        await asyncio.sleep(0)


class FakeTransport:
    """Messages the test puts in are received in order; a send the test holds (`hold`) waits for `release`."""

    def __init__(self, *inbound: Inbound) -> None:
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue()
        self.put(*inbound)
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.session: Session | None = None
        self.client = "fake:1"
        self._hold: Callable[[dict[str, Any]], bool] | None = None
        self._released = asyncio.Event()
        self.holding: dict[str, Any] | None = None

    def put(self, *inbound: Inbound) -> None:
        for item in inbound:
            self.inbound.put_nowait(item)

    def hold(self, which: Callable[[dict[str, Any]], bool]) -> None:
        """The first message `which` picks is not written until `release()`: a reader that is slow once."""
        self._hold = which

    def release(self) -> None:
        self._released.set()

    async def receive(self) -> Inbound:
        return await self.inbound.get()

    async def send_json(self, message: dict[str, Any]) -> None:
        if self.closed is not None:
            raise ConnectionClosed()
        if self._hold is not None and self._hold(message):
            self._hold = None
            self.holding = dict(message)
            await self._released.wait()
            self.holding = None
        self.sent.append(dict(message))

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    def attach_session(self, session: Session) -> None:
        self.session = session


class ScriptedWork:
    """The pipeline checks and the frame executor in one fake.

    A pooled frame's work runs until the test settles it, unless `answer` is
    given: then every frame is answered by it as soon as it starts. Inline
    (header-only) frames are answered by `answer` on the spot.
    """

    def __init__(self, answer: Callable[[FrameJob], FrameReply] | None = None, *, inline: bool = False) -> None:
        self._answer = answer
        self._inline = inline
        self.running: dict[int, asyncio.Future[FrameReply]] = {}
        self.started: list[int] = []
        self.inline_calls = 0
        self.opened: list[str] = []
        self.released: list[str] = []

    def finish(self, index: int, result: dict[str, Any] | None = None) -> None:
        self.running[index].set_result(FrameReply(index, result or {}))

    def fail(self, index: int, error: BaseException) -> None:
        self.running[index].set_exception(error)

    # FramePipelineService's pipeline checks
    def is_valid_pipeline(self, pipeline_id: str | None) -> bool:
        return True

    def pipeline_error(self, pipeline_id: str | None) -> None:
        return None

    # FrameExecutor
    def runs_inline(self, pipeline_id: str) -> bool:
        return self._inline

    def run_inline(self, job: FrameJob) -> FrameReply:
        assert self._answer is not None, "inline work needs an answer"
        self.inline_calls += 1
        return self._answer(job)

    async def run(self, job: FrameJob, *, timeout_s: float, give_up: asyncio.Future[Any] | None = None) -> FrameReply:
        work: asyncio.Future[FrameReply] = asyncio.get_running_loop().create_future()
        self.running[job.frame_index] = work
        self.started.append(job.frame_index)
        if self._answer is not None:
            try:
                work.set_result(self._answer(job))
            except Exception as error:
                work.set_exception(error)
        waited: set[asyncio.Future[Any]] = {work} if give_up is None else {work, give_up}
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise JobGivenUp()
        return work.result()

    def open_stream(self, stream_id: str) -> None:
        self.opened.append(stream_id)

    def release_stream(self, stream_id: str) -> None:
        self.released.append(stream_id)

    def busy_workers(self) -> int:
        return len([work for work in self.running.values() if not work.done()])

    def shutdown(self) -> None:
        return None


def empty(job: FrameJob) -> FrameReply:
    return FrameReply(job.frame_index, {})


def service(
    work: ScriptedWork,
    sessions: SessionManager | None = None,
    observer: Any = None,
    *,
    policy: BackpressurePolicy | None = None,
) -> StreamService:
    return StreamService(
        frames=work,  # type: ignore[arg-type]
        executor=work,
        sessions=sessions or SessionManager(4),
        observer=observer or RecordingObserver(),
        settings=StreamSettings(policy=policy or BackpressurePolicy(), frame_timeout_s=2.0, max_frame_bytes=1_000_000),
        clock=Clock(),
    )


def replies(transport: FakeTransport) -> dict[int, list[str]]:
    per_frame: dict[int, list[str]] = {}
    for message in transport.sent:
        if "frame_index" in message:
            kind = "result" if "result" in message else message.get("cause") or message["error"]
            per_frame.setdefault(message["frame_index"], []).append(kind)
    return per_frame


@pytest.mark.parametrize("inline", [False, True], ids=["in the pool", "on the receive loop"])
def test_an_unexpected_failure_is_internal_error_1011_without_detail(inline: bool) -> None:
    def explode(job: FrameJob) -> FrameReply:
        raise ZeroDivisionError("secret /srv/models/weights.onnx")

    async def scenario() -> tuple[FakeTransport, ScriptedWork, SessionManager]:
        transport = FakeTransport(BINARY)
        work = ScriptedWork(explode, inline=inline)
        sessions = SessionManager(4)
        await service(work, sessions).serve(transport, "p")
        return transport, work, sessions

    transport, work, sessions = asyncio.run(scenario())
    assert transport.sent == [{"error": "internal_error", "detail": GENERIC_INTERNAL_DETAIL, "frame_index": 0}]
    assert transport.closed == (1011, "internal_error")
    assert sessions.active_count() == 0
    assert transport.session is not None and work.released == [transport.session.session_id]


def test_frames_waiting_when_the_client_errs_are_answered_as_dropped_before_the_close() -> None:
    async def scenario() -> FakeTransport:
        transport = FakeTransport(BINARY, BINARY, Inbound(InboundKind.TEXT, "hello"))
        work = ScriptedWork()
        task = asyncio.create_task(service(work).serve(transport, "p"))
        await turns()
        assert work.started == [0] and not transport.sent, "frame 1 waits; the text has ended the session"
        work.finish(0)
        await task
        return transport

    transport = asyncio.run(scenario())
    assert transport.sent == [
        {"frame_index": 0, "result": {}},
        {"frame_index": 1, "dropped": True, "cause": DropCause.CLOSING.value},
        {"error": "invalid_message", "detail": transport.sent[-1]["detail"]},
    ]
    assert transport.closed == (1003, "invalid_message")


def test_peer_disconnect_ends_the_session_and_releases_state() -> None:
    async def scenario() -> tuple[FakeTransport, ScriptedWork, SessionManager, RecordingObserver]:
        transport = FakeTransport(BINARY, Inbound(InboundKind.DISCONNECT, close_code=1001))
        work = ScriptedWork()
        sessions = SessionManager(4)
        observer = RecordingObserver()
        await service(work, sessions, observer).serve(transport, "p")
        return transport, work, sessions, observer

    transport, work, sessions, observer = asyncio.run(scenario())
    assert work.started == [0] and not work.running[0].done(), "the session did not wait for work nobody will read"
    assert sessions.active_count() == 0
    assert len(work.released) == 1
    closed = [args for name, args in observer.events if name == "session_closed"]
    assert closed and closed[0][2] == 1001
    assert transport.closed is None, "nothing is sent to a peer that has gone"
    assert [name for name, _ in observer.events if name.startswith("frame_")] == ["frame_received"], "its arrival still counts"


def test_the_session_is_attached_to_the_transport_and_registered_while_open() -> None:
    seen: dict[str, Any] = {}
    sessions = SessionManager(4)

    def record(job: FrameJob) -> FrameReply:
        seen["active"] = sessions.active_count()
        return empty(job)

    async def scenario() -> FakeTransport:
        transport = FakeTransport(BINARY, BYE)
        await service(ScriptedWork(record), sessions).serve(transport, "p")
        return transport

    transport = asyncio.run(scenario())
    assert seen["active"] == 1
    assert transport.session is not None and transport.session.pipeline_id == "p"
    assert transport.session.processed_frames == 1


def test_shutdown_cancels_sessions_that_cannot_send_their_last_messages() -> None:
    async def scenario() -> tuple[int, int]:
        sessions = SessionManager(4)
        transport = FakeTransport()
        transport.hold(lambda message: True)  # a peer that never reads again
        task = asyncio.create_task(service(ScriptedWork(empty), sessions).serve(transport, "p"))
        await turns()
        assert sessions.active_count() == 1
        cancelled = await sessions.shutdown(0.0, final_grace_s=0.0)
        await asyncio.gather(task, return_exceptions=True)
        return cancelled, sessions.active_count()

    assert asyncio.run(scenario()) == (1, 0)


def test_shutdown_while_a_drop_notice_is_being_sent_still_answers_every_frame() -> None:
    """Stopping the receive loop while it sends a drop notice must not lose the frame it was admitting."""

    async def scenario() -> FakeTransport:
        sessions = SessionManager(4)
        transport = FakeTransport(BINARY, BINARY, BINARY)
        transport.hold(lambda message: bool(message.get("dropped")))
        work = ScriptedWork()
        task = asyncio.create_task(service(work, sessions, policy=BackpressurePolicy(buffer_capacity=1)).serve(transport, "p"))
        await turns()
        assert transport.holding == {"frame_index": 1, "dropped": True, "cause": "buffer_full"}, "frame 2 displaced frame 1"
        shutdown = asyncio.create_task(sessions.shutdown(5.0))
        await turns()
        transport.release()
        await turns()
        work.finish(0)
        await task
        await shutdown
        return transport

    transport = asyncio.run(scenario())
    assert replies(transport) == {0: ["result"], 1: ["buffer_full"], 2: ["shutdown"]}
    assert transport.sent[-1]["error"] == "shutting_down" and transport.closed == (1012, "shutting_down")


def test_at_the_shutdown_deadline_the_frame_in_flight_is_answered_as_failed() -> None:
    async def scenario() -> tuple[int, FakeTransport, RecordingObserver]:
        sessions = SessionManager(4)
        transport = FakeTransport(BINARY)
        observer = RecordingObserver()
        task = asyncio.create_task(service(ScriptedWork(), sessions, observer=observer).serve(transport, "p"))
        await turns()
        cancelled = await sessions.shutdown(0.0, final_grace_s=2.0)  # the deadline passes at once, frame 0 still running
        await task
        return cancelled, transport, observer

    cancelled, transport, observer = asyncio.run(scenario())
    assert cancelled == 0, "the session closed by itself once told the deadline had passed"
    assert transport.sent[0]["error"] == "pipeline_failure" and transport.sent[0]["frame_index"] == 0
    assert "shut down before frame 0 finished" in transport.sent[0]["detail"]
    assert transport.sent[1:] == [{"error": "shutting_down", "detail": "the server is shutting down; reconnect later"}]
    assert transport.closed == (1012, "shutting_down")
    assert [name for name, _ in observer.events if name == "frame_failed"] == ["frame_failed"]


def test_a_new_session_during_shutdown_is_refused_with_1012() -> None:
    async def scenario() -> FakeTransport:
        sessions = SessionManager(4)
        await sessions.shutdown(0.1)
        transport = FakeTransport()
        await service(ScriptedWork(empty), sessions).serve(transport, "p")
        return transport

    transport = asyncio.run(scenario())
    assert transport.sent[0]["error"] == ErrorCode.SHUTTING_DOWN.value
    assert transport.closed == (1012, "shutting_down")


@pytest.mark.parametrize("inline", [True, False], ids=["header-only", "decoding"])
def test_header_only_frames_are_answered_where_they_were_read_and_others_in_the_executor(inline: bool) -> None:
    async def scenario() -> tuple[ScriptedWork, FakeTransport]:
        work = ScriptedWork(empty, inline=inline)
        transport = FakeTransport(BINARY, BINARY)
        task = asyncio.create_task(service(work).serve(transport, "p"))
        await turns()
        transport.put(BYE)
        await task
        return work, transport

    work, transport = asyncio.run(scenario())
    assert (work.inline_calls, len(work.started)) == ((2, 0) if inline else (0, 2))
    assert transport.sent == [{"frame_index": 0, "result": {}}, {"frame_index": 1, "result": {}}]


def test_a_frame_admitted_while_a_reply_is_being_sent_runs_exactly_once() -> None:
    """The reply's send suspends (a slow reader); a frame arriving then starts at once and must not run twice."""

    async def scenario() -> tuple[ScriptedWork, FakeTransport]:
        work = ScriptedWork(empty)
        transport = FakeTransport(BINARY)
        transport.hold(lambda message: message.get("frame_index") == 0)
        task = asyncio.create_task(service(work).serve(transport, "p"))
        await turns()
        assert transport.holding == {"frame_index": 0, "result": {}}
        transport.put(BINARY)
        await turns()
        transport.release()
        await turns()
        transport.put(BYE)
        await task
        return work, transport

    work, transport = asyncio.run(scenario())
    assert work.started == [0, 1]
    assert transport.sent == [{"frame_index": 0, "result": {}}, {"frame_index": 1, "result": {}}]
    assert transport.closed is None


def test_after_a_timeout_the_next_frame_waits_for_the_work_still_running() -> None:
    """The late frame is answered at the deadline, but two runs of one stream never overlap."""

    async def scenario() -> tuple[ScriptedWork, FakeTransport]:
        work = ScriptedWork()
        transport = FakeTransport(BINARY)
        task = asyncio.create_task(service(work).serve(transport, "p"))
        await turns()
        returned: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        work.fail(0, JobStillRunning("not within 2.0 s", returned))
        await turns()
        assert transport.sent[0]["error"] == "pipeline_failure" and transport.sent[0]["frame_index"] == 0
        transport.put(BINARY)
        await turns()
        assert work.started == [0], "frame 1 waits while frame 0's work still runs"
        returned.set_result(None)
        await turns()
        assert work.started == [0, 1]
        work.finish(1)
        transport.put(BYE)
        await task
        return work, transport

    work, transport = asyncio.run(scenario())
    assert transport.sent[1:] == [{"frame_index": 1, "result": {}}]
    assert transport.closed is None


def test_a_frame_started_after_the_deadline_passed_is_answered_as_failed_at_once() -> None:
    """Frame 1 starts while reply 0 is still being written, after the deadline: it is cut off, not waited for."""

    async def scenario() -> tuple[int, SessionManager, FakeTransport]:
        sessions = SessionManager(4)
        work = ScriptedWork()
        transport = FakeTransport(BINARY)
        transport.hold(lambda message: message.get("frame_index") == 0)
        task = asyncio.create_task(service(work, sessions).serve(transport, "p"))
        await turns()
        work.finish(0)
        transport.put(BINARY)  # frame 1 arrives while reply 0 is written
        await turns()
        shutdown = asyncio.create_task(sessions.shutdown(0.0, final_grace_s=2.0))
        await turns()
        transport.release()
        await task
        return await shutdown, sessions, transport

    cancelled, sessions, transport = asyncio.run(scenario())
    assert (cancelled, sessions.active_count()) == (0, 0)
    assert [m.get("error") or ("result" if "result" in m else m) for m in transport.sent] == ["result", "pipeline_failure", "shutting_down"]
    assert transport.sent[1]["frame_index"] == 1 and "shut down before frame 1 finished" in transport.sent[1]["detail"]
    assert transport.closed == (1012, "shutting_down")


def test_a_stream_is_opened_before_its_first_frame_and_released_after_its_last() -> None:
    async def scenario() -> tuple[FakeTransport, ScriptedWork]:
        transport = FakeTransport(BINARY, BYE)
        work = ScriptedWork(empty)
        await service(work).serve(transport, "p")
        return transport, work

    transport, work = asyncio.run(scenario())
    assert transport.session is not None
    assert work.opened == work.released == [transport.session.session_id]


def test_shutdown_does_not_wait_for_work_that_outlived_its_timeout() -> None:
    """The client has its answer; work that cannot be stopped must not hold the session open."""

    async def scenario() -> tuple[bool, FakeTransport]:
        sessions = SessionManager(4)
        work = ScriptedWork()
        transport = FakeTransport(BINARY)
        task = asyncio.create_task(service(work, sessions).serve(transport, "p"))
        await turns()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        work.fail(0, JobStillRunning("not within 2.0 s", never))
        await turns()
        shutdown = asyncio.create_task(sessions.shutdown(3600.0))
        await turns()
        closed_by_itself = task.done() and shutdown.done()
        await asyncio.gather(task, shutdown)
        return closed_by_itself, transport

    closed_by_itself, transport = asyncio.run(scenario())
    assert closed_by_itself, "the close waited for work that was already answered"
    assert transport.sent[0]["error"] == "pipeline_failure"
    assert transport.sent[-1]["error"] == "shutting_down" and transport.closed == (1012, "shutting_down")
