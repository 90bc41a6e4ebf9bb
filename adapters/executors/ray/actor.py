"""The body of one Ray actor: a pipeline service built in the actor's process, fed jobs that are data."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from adapters.executors.ray.wire import Event, Outcome, Timing, failure_of
from adapters.settings import Settings
from application.ports import FrameJob, FrameReply

# Stream ids an actor remembers as released, so that a frame arriving after its stream's release
# (its call was queued behind the release) runs on throw-away state instead of re-creating state
# nobody would release. Stream ids are never reused; a frame that late is rare.
RELEASED_MEMORY = 65_536


class LocalFrameRunner(Protocol):
    """The in-process service the front end already has: runs header-only pipelines and tells which they are."""

    def runs_inline(self, pipeline_id: str) -> bool: ...

    def run_job(self, job: FrameJob) -> FrameReply: ...

    def open_stream(self, stream_id: str) -> None: ...

    def release_stream(self, stream_id: str) -> None: ...




# Builds an actor's service from the front end's settings, reporting to the actor's recorders
# (adapters.container.worker_pipeline_service, passed by the wiring so that nothing here imports the container).
WorkerServiceFactory = Callable[[Settings, Any, Any], LocalFrameRunner]


class _TimingRecorder:
    """The actor's PipelineObserver: collects each run's timings on the thread running it."""

    def __init__(self) -> None:
        self._local = threading.local()

    def start(self) -> list[Timing]:
        timings: list[Timing] = []
        self._local.timings = timings
        return timings

    def node_finished(self, pipeline_id: str, node_id: str, duration_ms: float, *, failed: bool) -> None:
        timings = getattr(self._local, "timings", None)
        if timings is not None:
            timings.append(Timing(pipeline_id, node_id, duration_ms, failed))

    def node_skipped(self, pipeline_id: str, node_id: str) -> None:
        timings = getattr(self._local, "timings", None)
        if timings is not None:
            timings.append(Timing(pipeline_id, node_id, 0.0, False, skipped=True))

    def pipeline_finished(self, pipeline_id: str, duration_ms: float, *, failed: bool) -> None:
        timings = getattr(self._local, "timings", None)
        if timings is not None:
            timings.append(Timing(pipeline_id, None, duration_ms, failed))


class _EventRecorder:
    """The actor's AnalyticsSink: collects the events of the work on the thread running it."""

    def __init__(self) -> None:
        self._local = threading.local()

    def start(self) -> list[Event]:
        events: list[Event] = []
        self._local.events = events
        return events

    def _record(self, method: str, *args: Any) -> None:
        events = getattr(self._local, "events", None)
        if events is not None:
            events.append(Event(method, args))

    def declare(self, pipeline_id: str, lines: Any, zones: Any) -> None:
        return None  # the front end declares its series from its own catalogue at start-up

    def line_crossed(self, pipeline_id: str, line: str, direction: str) -> None:
        self._record("line_crossed", pipeline_id, line, direction)

    def zone_entered(self, pipeline_id: str, zone: str) -> None:
        self._record("zone_entered", pipeline_id, zone)

    def zone_occupancy_changed(self, pipeline_id: str, zone: str, delta: int) -> None:
        self._record("zone_occupancy_changed", pipeline_id, zone, delta)


class PipelineActor:
    """The body of one Ray actor (wrapped with ray.remote when the executor starts).

    Runs on `max_concurrency` threads: frames of different streams run in
    parallel; one stream never has two frames in flight (the front end waits
    for the previous one, even past its deadline).
    """

    def __init__(self, settings: Settings, name: str, build_service: WorkerServiceFactory) -> None:
        self._name = name
        self._recorder = _TimingRecorder()
        self._events = _EventRecorder()
        self._service = build_service(settings, self._recorder, self._events)
        self._lock = threading.Lock()
        self._opened: set[str] = set()
        self._released: OrderedDict[str, None] = OrderedDict()

    def ready(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {"name": self._name, "node_id": context.get_node_id(), "pid": os.getpid()}

    def run(self, job: FrameJob) -> Outcome:
        stream_id = job.stream_id
        if stream_id is not None:
            with self._lock:
                if stream_id in self._released:
                    stream_id = None  # released before this frame got here: throw-away state
                elif stream_id not in self._opened:
                    self._opened.add(stream_id)
                    self._service.open_stream(stream_id)
        timings = self._recorder.start()
        events = self._events.start()
        started = time.perf_counter()
        try:
            result = self._service.run_job(job if stream_id == job.stream_id else job._replace(stream_id=stream_id))
            failure = None
        except Exception as error:  # every failure goes back as data, see Failure
            result, failure = None, failure_of(error)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return Outcome(result, failure, tuple(timings), self._name, elapsed_ms, tuple(events))

    def release_stream(self, stream_id: str) -> tuple[Event, ...]:
        """Release the stream's state; the events its closing reports (a zone's occupancy back to 0)."""
        with self._lock:
            self._released[stream_id] = None
            if len(self._released) > RELEASED_MEMORY:
                self._released.popitem(last=False)
            opened = stream_id in self._opened
            self._opened.discard(stream_id)
        events = self._events.start()
        if opened:
            self._service.release_stream(stream_id)
        return tuple(events)

    def streams(self) -> int:
        with self._lock:
            return len(self._opened)

    def cpu_seconds(self) -> float:
        """CPU time this actor's process has used, all threads: what a benchmark divides its frames by."""
        return time.process_time()

    def watch(self) -> None:
        """Never returns while the actor lives: its failure is how the front end learns the actor died."""
        threading.Event().wait()


