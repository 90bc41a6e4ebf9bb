"""StreamService against fakes: the paths a real pipeline cannot be made to take on demand."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from application.errors import JobGivenUp, JobStillRunning
from application.ports import ConnectionClosed, FrameJob, Inbound, InboundKind
from application.sessions import SessionManager
from application.stream import StreamService, StreamSettings
from domain import BackpressurePolicy, DropCause, ErrorCode, Session
from domain.errors import GENERIC_INTERNAL_DETAIL
from tests.support.fakes import RecordingObserver
from tests.support.media import jpeg

FRAME = jpeg()


class FakeTransport:
    """Delivers `inbound` in order; `then` arrives only once `replies` messages were sent."""

    def __init__(self, inbound: list[Inbound], then: list[Inbound] = (), replies: int = 0) -> None:  # type: ignore[assignment]
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue()
        for item in inbound:
            self.inbound.put_nowait(item)
        self._then = list(then)
        self._replies = replies
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.session: Session | None = None
        self.client = "fake:1"

    async def receive(self) -> Inbound:
        return await self.inbound.get()

    async def send_json(self, message: dict[str, Any]) -> None:
        if self.closed is not None:
            raise ConnectionClosed()
        self.sent.append(dict(message))
        if self._then and len(self.sent) >= self._replies:
            for item in self._then:
                self.inbound.put_nowait(item)
            self._then = []

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    def attach_session(self, session: Session) -> None:
        self.session = session


class FakeFrames:
    """The pipelines and the frame executor in one fake: `run` is what a frame's work does, in a thread unless inline."""

    def __init__(self, run: Callable[[str, int, bytes], dict[str, Any]], *, inline: bool = False) -> None:
        self._run = run
        self._inline = inline
        self.opened: list[str] = []
        self.released: list[str] = []
        self.pooled_calls = 0

    # FramePipelineService's pipeline checks
    def is_valid_pipeline(self, pipeline_id: str | None) -> bool:
        return True

    def pipeline_error(self, pipeline_id: str | None) -> None:
        return None

    # FrameExecutor
    def runs_inline(self, pipeline_id: str) -> bool:
        return self._inline

    def run_inline(self, job: FrameJob) -> dict[str, Any]:
        return self._run(job.pipeline_id, job.frame_index, job.jpeg)

    async def run(self, job: FrameJob, *, timeout_s: float, give_up: Any = None) -> dict[str, Any]:
        self.pooled_calls += 1
        work = asyncio.ensure_future(asyncio.to_thread(self.run_inline, job))
        awaited = {work} if give_up is None else {work, give_up}
        done, _ = await asyncio.wait(awaited, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if work not in done and give_up in done:
            raise JobGivenUp()
        if not done:
            raise JobStillRunning(f"not within {timeout_s} s", work)
        return work.result()

    def open_stream(self, stream_id: str) -> None:
        self.opened.append(stream_id)

    def release_stream(self, stream_id: str) -> None:
        self.released.append(stream_id)

    def busy_workers(self) -> int:
        return 0

    def shutdown(self) -> None:
        return None


def service(
    video: FakeFrames,
    sessions: SessionManager | None = None,
    observer: Any = None,
    frame_timeout_s: float = 2.0,
) -> StreamService:
    return StreamService(
        frames=video,  # type: ignore[arg-type]
        executor=video,
        sessions=sessions or SessionManager(4),
        observer=observer or RecordingObserver(),
        settings=StreamSettings(policy=BackpressurePolicy(), frame_timeout_s=frame_timeout_s, max_frame_bytes=1_000_000),
    )


def binary() -> Inbound:
    return Inbound(InboundKind.BINARY, FRAME)


@pytest.mark.parametrize("inline", [False, True], ids=["in the pool", "on the receive loop"])
def test_an_unexpected_failure_is_internal_error_1011_without_detail(inline: bool) -> None:
    def explode(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        raise ZeroDivisionError("secret /srv/models/weights.onnx")

    async def scenario():
        transport = FakeTransport([binary()])
        video = FakeFrames(explode, inline=inline)
        sessions = SessionManager(4)
        await service(video, sessions).serve(transport, "p")
        return transport, video, sessions

    transport, video, sessions = asyncio.run(scenario())
    assert transport.sent == [{"error": "internal_error", "detail": GENERIC_INTERNAL_DETAIL, "frame_index": 0}]
    assert transport.closed == (1011, "internal_error")
    assert sessions.active_count() == 0
    assert transport.session is not None and video.released == [transport.session.session_id]


def test_frames_waiting_when_the_client_errs_are_answered_as_dropped_before_the_close() -> None:
    def slow(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        import time

        time.sleep(0.2)
        return {"frame_index": index, "result": {}}

    async def scenario():
        transport = FakeTransport([binary(), binary(), Inbound(InboundKind.TEXT, "hello")])
        await service(FakeFrames(slow)).serve(transport, "p")
        return transport

    transport = asyncio.run(scenario())
    assert transport.sent == [
        {"frame_index": 0, "result": {}},
        {"frame_index": 1, "dropped": True, "cause": DropCause.CLOSING.value},
        {"error": "invalid_message", "detail": transport.sent[-1]["detail"]},
    ]
    assert transport.closed == (1003, "invalid_message")


def test_peer_disconnect_ends_the_session_and_releases_state() -> None:
    async def scenario():
        transport = FakeTransport([binary(), Inbound(InboundKind.DISCONNECT, close_code=1001)])
        video = FakeFrames(lambda p, i, d: {"frame_index": i, "result": {}})
        sessions = SessionManager(4)
        observer = RecordingObserver()
        await service(video, sessions, observer).serve(transport, "p")
        return transport, video, sessions, observer

    transport, video, sessions, observer = asyncio.run(scenario())
    assert sessions.active_count() == 0
    assert len(video.released) == 1
    closed = [args for name, args in observer.events if name == "session_closed"]
    assert closed and closed[0][2] == 1001
    assert transport.closed is None, "nothing is sent to a peer that has gone"


def test_the_session_is_attached_to_the_transport_and_registered_while_open() -> None:
    seen: dict[str, Any] = {}
    sessions = SessionManager(4)

    def record(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        seen["active"] = sessions.active_count()
        return {"frame_index": index, "result": {}}

    async def scenario():
        transport = FakeTransport([binary()], then=[Inbound(InboundKind.DISCONNECT, close_code=1000)], replies=1)
        await service(FakeFrames(record), sessions).serve(transport, "p")
        return transport

    transport = asyncio.run(scenario())
    assert seen["active"] == 1
    assert transport.session is not None and transport.session.pipeline_id == "p"
    assert transport.session.processed_frames == 1


def test_shutdown_cancels_sessions_that_miss_the_deadline() -> None:
    async def scenario():
        sessions = SessionManager(4)
        transport = FakeTransport([])

        class Stuck(FakeTransport):
            async def send_json(self, message: dict[str, Any]) -> None:
                await asyncio.sleep(3600)

        stuck = Stuck([])
        task = asyncio.create_task(service(FakeFrames(lambda p, i, d: {}), sessions).serve(stuck, "p"))
        await asyncio.sleep(0.05)
        assert sessions.active_count() == 1
        cancelled = await sessions.shutdown(0.2, final_grace_s=0.2)
        await asyncio.gather(task, return_exceptions=True)
        del transport
        return cancelled, sessions.active_count()

    assert asyncio.run(scenario()) == (1, 0)


class SlowFirstDrop(FakeTransport):
    """The first dropped notice takes a while to go out, as on a congested socket."""

    def __init__(self, inbound: list[Inbound]) -> None:
        super().__init__(inbound)
        self._delayed = False

    async def send_json(self, message: dict[str, Any]) -> None:
        if message.get("dropped") and not self._delayed:
            self._delayed = True
            await asyncio.sleep(0.5)
        await super().send_json(message)


def test_shutdown_while_a_drop_notice_is_being_sent_still_answers_every_frame() -> None:
    """Stopping the receive loop while it sends a drop notice must not lose the frame it was admitting."""
    import time

    def slow(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        time.sleep(0.3)
        return {"frame_index": index, "result": {}}

    async def scenario():
        sessions = SessionManager(4)
        transport = SlowFirstDrop([binary(), binary(), binary()])
        stream = StreamService(
            frames=FakeFrames(slow),  # type: ignore[arg-type]
            executor=FakeFrames(slow),
            sessions=sessions,
            observer=RecordingObserver(),
            settings=StreamSettings(policy=BackpressurePolicy(buffer_capacity=1), frame_timeout_s=5, max_frame_bytes=1_000_000),
        )
        task = asyncio.create_task(stream.serve(transport, "p"))
        await asyncio.sleep(0.1)  # frame 0 runs, frame 1 waited, frame 2 displaced it: dropped{1} is on its way
        await sessions.shutdown(5.0)
        await task
        return transport

    transport = asyncio.run(scenario())
    replies: dict[int, list[str]] = {}
    for message in transport.sent:
        if "frame_index" in message:
            kind = "result" if "result" in message else f"dropped:{message.get('cause')}"
            replies.setdefault(message["frame_index"], []).append(kind)
    assert replies == {0: ["result"], 1: ["dropped:buffer_full"], 2: ["dropped:shutdown"]}
    assert transport.sent[-1]["error"] == "shutting_down" and transport.closed == (1012, "shutting_down")


def test_at_the_shutdown_deadline_the_frame_in_flight_is_answered_as_failed() -> None:
    import threading

    release = threading.Event()

    def hang(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        release.wait(5)
        return {"frame_index": index, "result": {}}

    async def scenario():
        sessions = SessionManager(4)
        transport = FakeTransport([binary()])
        observer = RecordingObserver()
        task = asyncio.create_task(service(FakeFrames(hang), sessions, observer=observer, frame_timeout_s=30).serve(transport, "p"))
        await asyncio.sleep(0.05)
        cancelled = await sessions.shutdown(0.2, final_grace_s=2.0)
        await task
        release.set()
        return cancelled, transport, observer

    cancelled, transport, observer = asyncio.run(scenario())
    assert cancelled == 0, "the session closed by itself once told the deadline had passed"
    assert transport.sent[0]["error"] == "pipeline_failure" and transport.sent[0]["frame_index"] == 0
    assert "shut down before frame 0 finished" in transport.sent[0]["detail"]
    assert transport.sent[1:] == [{"error": "shutting_down", "detail": "the server is shutting down; reconnect later"}]
    assert transport.closed == (1012, "shutting_down")
    assert [name for name, _ in observer.events if name == "frame_failed"] == ["frame_failed"]


def test_a_new_session_during_shutdown_is_refused_with_1012() -> None:
    async def scenario():
        sessions = SessionManager(4)
        await sessions.shutdown(0.1)
        transport = FakeTransport([])
        await service(FakeFrames(lambda p, i, d: {}), sessions).serve(transport, "p")
        return transport

    transport = asyncio.run(scenario())
    assert transport.sent[0]["error"] == ErrorCode.SHUTTING_DOWN.value
    assert transport.closed == (1012, "shutting_down")


def test_header_only_pipelines_run_on_the_loop_and_others_in_the_pool() -> None:
    import threading

    threads: dict[bool, set[str]] = {True: set(), False: set()}

    def work_for(inline: bool) -> Callable[[str, int, bytes], dict[str, Any]]:
        def work(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
            threads[inline].add(threading.current_thread().name)
            return {"frame_index": index, "result": {}}

        return work

    async def scenario(inline: bool) -> tuple[int, list[dict[str, Any]]]:
        frames = FakeFrames(work_for(inline), inline=inline)
        transport = FakeTransport([binary()], then=[Inbound(InboundKind.DISCONNECT, close_code=1000)], replies=1)
        await service(frames).serve(transport, "p")
        return frames.pooled_calls, transport.sent

    assert asyncio.run(scenario(True)) == (0, [{"frame_index": 0, "result": {}}])
    assert asyncio.run(scenario(False)) == (1, [{"frame_index": 0, "result": {}}])
    assert threads[True] == {threading.main_thread().name}
    assert threading.main_thread().name not in threads[False]


def test_a_frame_admitted_while_a_reply_is_being_sent_runs_exactly_once() -> None:
    """The reply's send suspends (a slow reader); a frame arriving then starts at once and must not run twice."""
    runs: list[int] = []

    def record(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        runs.append(index)
        return {"frame_index": index, "result": {}}

    class SlowReader(FakeTransport):
        async def send_json(self, message: dict[str, Any]) -> None:
            await super().send_json(message)
            if len(self.sent) == 1:
                self.inbound.put_nowait(binary())
                await asyncio.sleep(0.05)
            elif len(self.sent) == 2:
                self.inbound.put_nowait(Inbound(InboundKind.DISCONNECT, close_code=1000))

    async def scenario() -> SlowReader:
        transport = SlowReader([binary()])
        await service(FakeFrames(record)).serve(transport, "p")
        return transport

    transport = asyncio.run(scenario())
    assert runs == [0, 1]
    assert transport.sent == [{"frame_index": 0, "result": {}}, {"frame_index": 1, "result": {}}]
    assert transport.closed is None


def test_after_a_timeout_the_next_frame_waits_for_the_stuck_thread() -> None:
    """The late frame is answered at the deadline, but two runs of one stream never overlap."""
    import threading
    import time

    spans: dict[int, tuple[float, float]] = {}
    release = threading.Event()

    def stuck_then_quick(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        started = time.monotonic()
        if index == 0:
            release.wait(5)
        spans[index] = (started, time.monotonic())
        return {"frame_index": index, "result": {}}

    class Client(FakeTransport):
        async def send_json(self, message: dict[str, Any]) -> None:
            await super().send_json(message)
            if message.get("error") == "pipeline_failure":
                # Frame 1 arrives while frame 0's thread is still stuck; then the tool comes back.
                self.inbound.put_nowait(binary())
                await asyncio.sleep(0.1)
                release.set()
            elif message.get("frame_index") == 1:
                self.inbound.put_nowait(Inbound(InboundKind.DISCONNECT, close_code=1000))

    async def scenario() -> Client:
        transport = Client([binary()])
        await service(FakeFrames(stuck_then_quick), frame_timeout_s=0.2).serve(transport, "p")
        return transport

    transport = asyncio.run(scenario())
    assert [message.get("error") for message in transport.sent] == ["pipeline_failure", None]
    assert transport.sent[0]["frame_index"] == 0 and transport.sent[1] == {"frame_index": 1, "result": {}}
    assert spans[1][0] >= spans[0][1], "frame 1 started before frame 0's thread returned"
    assert transport.closed is None


def test_a_frame_started_after_the_deadline_passed_is_answered_as_failed_at_once() -> None:
    """Frame 1 starts while reply 0 is still being written, after the deadline: it is cut off, not waited for."""
    import threading

    release = threading.Event()

    def work(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        if index == 1:
            release.wait(10)
        return {"frame_index": index, "result": {}}

    class SlowFirstReply(FakeTransport):
        async def send_json(self, message: dict[str, Any]) -> None:
            if message.get("frame_index") == 0 and "result" in message:
                self.inbound.put_nowait(binary())  # frame 1 arrives while reply 0 is written
                await asyncio.sleep(0.5)  # a slow reader, but a reader
            await super().send_json(message)

    async def scenario():
        sessions = SessionManager(4)
        transport = SlowFirstReply([binary()])
        task = asyncio.create_task(service(FakeFrames(work), sessions, frame_timeout_s=30).serve(transport, "p"))
        await asyncio.sleep(0.1)
        cancelled = await sessions.shutdown(0.2, final_grace_s=2.0)
        done, _ = await asyncio.wait({task}, timeout=5)
        release.set()
        return cancelled, bool(done), sessions.active_count(), transport

    cancelled, finished, active, transport = asyncio.run(scenario())
    assert (cancelled, finished, active) == (0, True, 0)
    assert [m.get("error") or ("result" if "result" in m else m) for m in transport.sent] == [
        "result",
        "pipeline_failure",
        "shutting_down",
    ]
    assert transport.sent[1]["frame_index"] == 1 and "shut down before frame 1 finished" in transport.sent[1]["detail"]
    assert transport.closed == (1012, "shutting_down")


def test_a_stream_is_opened_before_its_first_frame_and_released_after_its_last() -> None:
    async def scenario():
        transport = FakeTransport([binary()], then=[Inbound(InboundKind.DISCONNECT, close_code=1000)], replies=1)
        video = FakeFrames(lambda p, i, d: {"frame_index": i, "result": {}})
        await service(video).serve(transport, "p")
        return transport, video

    transport, video = asyncio.run(scenario())
    assert transport.session is not None
    assert video.opened == video.released == [transport.session.session_id]


def test_shutdown_does_not_wait_for_work_that_outlived_its_timeout() -> None:
    """The client has its answer; a thread that cannot be stopped must not hold the session open."""
    import threading
    import time

    release = threading.Event()

    def stuck(pipeline_id: str, index: int, data: bytes) -> dict[str, Any]:
        release.wait(10)
        return {"frame_index": index, "result": {}}

    async def scenario() -> tuple[float, FakeTransport]:
        sessions = SessionManager(4)
        transport = FakeTransport([binary()])
        task = asyncio.create_task(service(FakeFrames(stuck), sessions, frame_timeout_s=0.1).serve(transport, "p"))
        while not transport.sent:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        try:
            await sessions.shutdown(5.0)
            await task
            return time.monotonic() - started, transport
        finally:
            release.set()

    took_s, transport = asyncio.run(scenario())
    assert transport.sent[0]["error"] == "pipeline_failure"
    assert transport.sent[-1]["error"] == "shutting_down" and transport.closed == (1012, "shutting_down")
    assert took_s < 3.0, f"the close waited {took_s:.1f} s for a thread that was already answered"
