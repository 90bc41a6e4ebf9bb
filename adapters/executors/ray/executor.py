"""Runs pipelines in Ray actors: the frame-executor port on a Ray cluster.

Each actor builds the pipeline service once, from the same Settings as the
front end (plugins, models, catalogue), and then executes jobs that are plain
data: pipeline id, frame index, the JPEG bytes and the stream id. The bytes
cross the network once per frame; nothing decoded ever does. What comes back
is data too: the result, or a description of the failure, with the node and
pipeline durations measured in the actor so that the front end's metrics
record them as if the work had run locally.

Per-stream tool state (the motion model's background) lives on one actor for
the whole stream: a stream is pinned to an actor at its first frame, its state
is created there lazily and released when the stream ends. Frames without a
stream go to the least busy actor. An actor that dies costs the frames it held
a pipeline_failure that says so; its streams move to another actor, where
their state starts over, and a replacement actor is started in its slot.

A frame's deadline holds on Ray as on threads: at the deadline the caller gets
its failure and the remote call is cancelled if it has not started; a call
already running cannot be interrupted (the actor's thread is in a tool), so
the caller is told JobStillRunning and its stream waits for the actor before
it sends that stream's state another frame. Unlike a thread, an actor can be
killed: one whose call is still running HUNG_AFTER_TIMEOUTS frame timeouts
after it started is declared hung and replaced, which ends that wait.

"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters.executors.ray.cluster import connect
from adapters.executors.ray.rejoin import ACTOR_START_TIMEOUT_S, ClusterFollower, Slot
from adapters.executors.ray.actor import LocalFrameRunner, PipelineActor, WorkerServiceFactory
from adapters.executors.ray.wire import (
    ANALYTICS_EVENTS,
    Event,
    ExecutorLostError,
    Outcome,
    RayClusterUnreachable,
    raise_failure,
)
from adapters.settings import PREFIX, Settings
from adapters.executors.deadline import race_deadline
from application.ports import FrameJob, FrameReply, PipelineObserver

log = logging.getLogger(__name__)

# Replacements of one actor that may die before they are ready before its slot is left empty:
# an actor that cannot start (a model missing on a node) would otherwise be re-created forever.
MAX_FAILED_STARTS = 3
# A call still running this many frame timeouts after it started is stuck in a tool: its actor is
# killed and replaced (a thread cannot be interrupted, a process can), so the stream waiting for
# it goes on elsewhere instead of waiting for ever. Frames the actor held for other streams fail.
HUNG_AFTER_TIMEOUTS = 3


# The front end's side ------------------------------------------------------------------


class RayFrameExecutor(ClusterFollower):
    """The FrameExecutor port on Ray actors (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        local: LocalFrameRunner,
        observer: PipelineObserver | None = None,
        *,
        analytics: Any | None = None,
        start_timeout_s: float = ACTOR_START_TIMEOUT_S,
        worker_service: WorkerServiceFactory,
    ) -> None:
        self._ray, self._owns_connection = connect(settings)
        self._settings = settings
        self._local = local
        self._worker_service = worker_service
        self._observer = observer
        self._analytics = analytics
        # Each stream's net zone occupancy as replayed here: taken back if its actor dies, since
        # the state that would have closed it (and reported the decrease) died with the actor.
        self._occupancy: dict[str, dict[tuple[str, str], int]] = {}
        self._front = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._stream_slot: dict[str, Slot] = {}
        self._moved: set[str] = set()  # streams whose actor died: their state starts over on the next actor
        self._cluster_lost: str | None = None
        self._closed = False
        self._rejoining = False  # the cluster is gone as a whole: no actor is replaced until it is joined again
        self._stop = threading.Event()
        # Ray completes futures on its own I/O thread, where calling back into Ray deadlocks:
        # what an actor's death sets in motion (a replacement) runs on this thread instead.
        self._supervisor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forgesyte-ray-supervisor")
        self._remote_class = self._ray.remote(PipelineActor)
        self._slots = [self._start_actor(index, 1) for index in range(settings.ray_actors)]
        self._await_ready(start_timeout_s)
        for slot in self._slots:
            self._watch(slot)
        # Only a cluster of its own address can be rejoined: a local one lives and dies with this process,
        # and a connection made by someone else (a test session's) is theirs to manage.
        self._monitor: threading.Thread | None = None
        if settings.ray_address is not None and self._owns_connection:
            self._monitor = threading.Thread(target=self._follow_cluster, name="forgesyte-ray-monitor", daemon=True)
            self._monitor.start()

    # Actors --------------------------------------------------------------------------

    def _start_actor(self, index: int, generation: int) -> Slot:
        name = f"forgesyte-{self._front}-{index}-g{generation}"
        handle = self._remote_class.options(
            name=name,
            num_cpus=self._settings.ray_actor_cpus,
            max_concurrency=self._settings.inference_workers + 1,  # + the watch call
            max_restarts=0,
        ).remote(self._settings, name, self._worker_service)
        return Slot(index, name, handle, generation)

    def _await_ready(self, timeout_s: float) -> None:
        ray = self._ray
        refs = {slot.handle.ready.remote(): slot for slot in self._slots}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in ready:
            slot = refs[ref]
            try:
                info = ray.get(ref)
            except Exception as error:
                self.shutdown()
                cause = getattr(error, "cause", None) or error
                raise RayClusterUnreachable(
                    f"{PREFIX}EXECUTOR=ray: pipeline actor {slot.name} could not start: {type(cause).__name__}: {cause}"
                ) from None
            slot.state, slot.node_id = "ready", info["node_id"]
        if pending:
            self.shutdown()
            raise RayClusterUnreachable(
                f"{PREFIX}RAY_ACTORS={self._settings.ray_actors}: {len(pending)} of the actors were not placed within "
                f"{timeout_s:g} s ({PREFIX}RAY_ACTOR_CPUS={self._settings.ray_actor_cpus:g} each); "
                f"the cluster offers {ray.cluster_resources().get('CPU', 0):g} CPUs"
            )

    def _watch(self, slot: Slot) -> None:
        generation = slot.generation
        future = slot.handle.watch.remote().future()
        future.add_done_callback(lambda done: self._watch_ended(slot, generation, done))

    def _watch_ended(self, slot: Slot, generation: int, done: Any) -> None:
        # On a Ray thread. The watch call only ends when the actor is gone (or we shut down).
        if self._closed or slot.generation != generation:
            return
        error = done.exception()
        why = f"{type(error).__name__}: {error}" if error else "the watch call returned"
        self._actor_lost(slot, generation, why)

    def _supervise(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._supervisor.submit(fn, *args)
        except RuntimeError:  # shut down meanwhile
            return

    def _mark_dead(self, slot: Slot) -> tuple[int, list[dict[tuple[str, str], int]]]:
        """Under the lock: no frame goes to the slot any more; its streams start over elsewhere."""
        slot.state = "dead"
        slot.lost += 1
        for stream_id in slot.streams:
            self._stream_slot.pop(stream_id, None)
            self._moved.add(stream_id)
        moved = len(slot.streams)
        orphaned = [self._occupancy.pop(stream_id, {}) for stream_id in slot.streams]
        slot.streams = set()
        return moved, orphaned

    def _take_back(self, orphaned: list[dict[tuple[str, str], int]]) -> None:
        for ledger in orphaned:
            for (pipeline_id, zone), net in ledger.items():
                if net:
                    self._replay((Event("zone_occupancy_changed", (pipeline_id, zone, -net)),), None)

    def _actor_lost(self, slot: Slot, generation: int, why: str) -> None:
        with self._lock:
            if self._closed or self._rejoining or slot.generation != generation or slot.state == "dead":
                return
            moved, orphaned = self._mark_dead(slot)
        self._take_back(orphaned)
        log.warning("ray actor %s lost (%s); %d stream(s) move to other actors; starting a replacement", slot.name, why, moved)
        # Marked dead at once, so no frame is routed to it; the replacement talks to Ray, so not from here.
        self._supervise(self._replace, slot)

    def _replace(self, slot: Slot) -> None:
        if self._rejoining:
            return
        # An actor that is only unreachable (a network partition) may still be running: it is killed,
        # so that no orphan keeps a stream's state or the cluster's CPUs.
        try:
            self._ray.kill(slot.handle)
        except Exception as error:
            log.debug("killing lost ray actor %s failed: %s", slot.name, error)
        if slot.failed_starts >= MAX_FAILED_STARTS:
            log.error("ray actor slot %d stays empty: %d replacements in a row died before they were ready", slot.index, slot.failed_starts)
            return
        try:
            fresh = self._start_actor(slot.index, slot.generation + 1)
        except Exception as error:  # the cluster itself is unreachable: the slot stays dead
            self._cluster_lost = f"{type(error).__name__}: {error}"
            log.error("cannot start a replacement for ray actor %s: %s", slot.name, error)
            return
        with self._lock:
            if self._rejoining or self._closed:
                return
            slot.name, slot.handle, slot.generation = fresh.name, fresh.handle, fresh.generation
            slot.state, slot.node_id, slot.in_flight = "starting", None, 0
        generation = slot.generation
        ready = slot.handle.ready.remote().future()

        def started(done: Any) -> None:
            with self._lock:
                if slot.generation != generation or self._closed:
                    return
                if done.exception() is None:
                    slot.state, slot.node_id = "ready", done.result()["node_id"]
                    slot.failed_starts = 0
                    self._cluster_lost = None
                else:
                    slot.failed_starts += 1
            if done.exception() is not None:
                self._actor_lost(slot, generation, f"replacement failed to start: {done.exception()}")

        ready.add_done_callback(started)
        self._watch(slot)

    # A lost cluster ------------------------------------------------------------------------

    # Routing -----------------------------------------------------------------------------

    def _least_busy(self) -> Slot | None:
        live = [slot for slot in self._slots if slot.state == "ready"] or [
            slot for slot in self._slots if slot.state == "starting"
        ]
        if not live:
            return None
        return min(live, key=lambda slot: (slot.in_flight, len(slot.streams), slot.index))

    def _route(self, stream_id: str | None) -> tuple[Slot | None, bool]:
        """The actor for this frame, and whether the stream's state starts over there (its actor died)."""
        with self._lock:
            if stream_id is None:
                return self._least_busy(), False
            slot = self._stream_slot.get(stream_id)
            if slot is not None and slot.state != "dead":
                return slot, False
            slot = self._least_busy()
            if slot is not None:
                slot.streams.add(stream_id)
                self._stream_slot[stream_id] = slot
            return slot, stream_id in self._moved

    # The port ------------------------------------------------------------------------------

    def runs_inline(self, pipeline_id: str) -> bool:
        """Header-only pipelines run in the front end: a network round trip costs more than their work."""
        return self._local.runs_inline(pipeline_id)

    def open_stream(self, stream_id: str) -> None:
        # The actor is chosen, and the state created there, at the stream's first frame.
        self._local.open_stream(stream_id)

    def release_stream(self, stream_id: str) -> None:
        self._local.release_stream(stream_id)
        with self._lock:
            self._moved.discard(stream_id)
            slot = self._stream_slot.pop(stream_id, None)
            if slot is not None:
                slot.streams.discard(stream_id)
        if slot is None or slot.state == "dead":
            with self._lock:
                self._occupancy.pop(stream_id, None)
            return
        try:
            released = slot.handle.release_stream.remote(stream_id).future()
        except Exception as error:  # the cluster is gone: nothing to release there
            log.debug("releasing stream %s on %s failed: %s", stream_id, slot.name, error)
            return

        def replay(done: Any) -> None:
            # On a Ray thread: the sink (Prometheus) is thread-safe, and this makes no Ray call.
            if done.exception() is None:
                self._replay(done.result(), stream_id)
            with self._lock:
                self._occupancy.pop(stream_id, None)

        released.add_done_callback(replay)

    def run_inline(self, job: FrameJob) -> FrameReply:
        """A header-only pipeline, here on the caller's thread (see runs_inline)."""
        return self._local.run_job(job)

    async def run(self, job: FrameJob, *, timeout_s: float, give_up: Awaitable[object] | None = None) -> FrameReply:
        if self._local.runs_inline(job.pipeline_id):
            return self.run_inline(job)
        slot, starts_over = self._route(job.stream_id)
        if slot is None:
            raise ExecutorLostError(
                f"no inference worker is available for frame {job.frame_index}; the Ray cluster is unreachable",
                log_message=f"every ray actor is dead; last cluster error: {self._cluster_lost}",
            )
        generation = slot.generation
        try:
            ref = slot.handle.run.remote(job)
        except Exception as error:
            self._cluster_lost = f"{type(error).__name__}: {error}"
            raise ExecutorLostError(
                f"frame {job.frame_index} could not be sent to an inference worker; the Ray cluster is unreachable",
                log_message=f"submitting to {slot.name} failed: {self._cluster_lost}",
            ) from None
        with self._lock:
            slot.in_flight += 1
        waiter = asyncio.wrap_future(ref.future())
        abandoned = False

        def settle(done: asyncio.Future[Any]) -> None:
            with self._lock:
                if slot.generation == generation:
                    slot.in_flight -= 1
            if done.cancelled():
                return
            error = done.exception()
            if error is not None and abandoned and not isinstance(error, self._ray.exceptions.TaskCancelledError):
                log.warning("ray work that outlived its frame's deadline failed later: %s", error)

        waiter.add_done_callback(settle)

        def abandon() -> bool:
            nonlocal abandoned
            abandoned = True
            self._cancel(ref)  # a call still queued in the actor never runs
            return False  # queued or not, the call ends only when the actor is done with it: the stream waits for that

        try:
            # The deadline's own errors (JobGivenUp, JobStillRunning) are not Ray errors: they pass through.
            outcome: Outcome = await race_deadline(
                waiter,
                timeout_s=timeout_s,
                give_up=give_up,
                abandon=abandon,
                on_still_running=lambda: self._watch_straggler(slot, generation, waiter, job, timeout_s),
            )
        except self._ray.exceptions.RayActorError as error:
            self._actor_lost(slot, generation, type(error).__name__)
            stream_note = (
                "; the stream continues on another inference worker and its per-stream tool state starts over"
                if job.stream_id is not None
                else ""
            )
            raise ExecutorLostError(
                f"the inference worker running frame {job.frame_index} was lost{stream_note}",
                log_message=f"ray actor {slot.name} died while running frame {job.frame_index}: {error}",
            ) from None
        except self._ray.exceptions.RayError as error:
            self._cluster_lost = f"{type(error).__name__}: {error}"
            raise ExecutorLostError(
                f"frame {job.frame_index} failed in the Ray cluster",
                log_message=f"ray call to {slot.name} failed: {type(error).__name__}: {error}",
            ) from None
        if starts_over and job.stream_id is not None:
            with self._lock:
                self._moved.discard(job.stream_id)
        self._record(outcome, job.stream_id)
        if outcome.failure is not None:
            raise_failure(outcome.failure)
        assert outcome.result is not None
        return outcome.result

    def _watch_straggler(self, slot: Slot, generation: int, waiter: asyncio.Future[Any], job: FrameJob, timeout_s: float) -> None:
        def check() -> None:
            if waiter.done() or slot.generation != generation:
                return
            why = (
                f"hung: frame {job.frame_index} of pipeline {job.pipeline_id!r} still running "
                f"{HUNG_AFTER_TIMEOUTS * timeout_s:g} s after it started"
            )
            self._actor_lost(slot, generation, why)

        asyncio.get_running_loop().call_later((HUNG_AFTER_TIMEOUTS - 1) * timeout_s, check)

    def _cancel(self, ref: Any) -> None:
        try:
            self._ray.cancel(ref)
        except Exception as error:  # the actor or cluster is gone: nothing left to cancel
            log.debug("ray.cancel failed: %s", error)

    def _replay(self, events: tuple[Event, ...], stream_id: str | None) -> None:
        sink = self._analytics
        if sink is None:
            return
        for event in events:
            if event.method not in ANALYTICS_EVENTS:
                continue
            if event.method == "zone_occupancy_changed" and stream_id is not None:
                pipeline_id, zone, delta = event.args
                with self._lock:
                    ledger = self._occupancy.setdefault(stream_id, {})
                    ledger[(pipeline_id, zone)] = ledger.get((pipeline_id, zone), 0) + delta
            getattr(sink, event.method)(*event.args)

    def _record(self, outcome: Outcome, stream_id: str | None = None) -> None:
        self._replay(outcome.events, stream_id)
        observer = self._observer
        if observer is None:
            return
        for timing in outcome.timings:
            if timing.node_id is None:
                observer.pipeline_finished(timing.pipeline_id, timing.duration_ms, failed=timing.failed)
            elif timing.skipped:
                observer.node_skipped(timing.pipeline_id, timing.node_id)
            else:
                observer.node_finished(timing.pipeline_id, timing.node_id, timing.duration_ms, failed=timing.failed)

    def busy_workers(self) -> int:
        with self._lock:
            return sum(slot.in_flight for slot in self._slots)

    def health(self) -> dict[str, Any]:
        with self._lock:
            actors = [
                {
                    "name": slot.name,
                    "state": slot.state,
                    "node_id": slot.node_id,
                    "busy": slot.in_flight,
                    "streams": len(slot.streams),
                    "lost": slot.lost,
                }
                for slot in self._slots
            ]
        ready = sum(actor["state"] == "ready" for actor in actors)
        if self._rejoining:
            cluster = "unreachable"
        elif ready == len(actors):
            cluster = "ok"
        elif ready:
            cluster = "degraded"
        else:
            cluster = "unreachable" if self._cluster_lost or all(a["state"] == "dead" for a in actors) else "starting"
        return {
            "kind": "ray",
            "address": self._settings.ray_address or "local",
            "cluster": cluster,
            "actors": actors,
        }

    def actor_names(self) -> list[str]:
        with self._lock:
            return [slot.name for slot in self._slots]

    def stream_actor(self, stream_id: str) -> str | None:
        with self._lock:
            slot = self._stream_slot.get(stream_id)
            return None if slot is None else slot.name

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            slots = list(getattr(self, "_slots", []))
            rejoining = self._rejoining
        self._stop.set()
        self._supervisor.shutdown(wait=False, cancel_futures=True)
        if rejoining:
            return  # the actors went with the cluster, and the connection with them
        for slot in slots:
            try:
                self._ray.kill(slot.handle)
            except Exception as error:
                log.debug("killing ray actor %s failed: %s", slot.name, error)
        if self._owns_connection:
            self._ray.shutdown()
