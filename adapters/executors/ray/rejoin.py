"""Follows a Ray cluster that goes away as a whole and comes back.

A cluster joined at an address can go away as a whole (`ray stop`, the head
lost) and come back as a new cluster at the same address. A Ray driver cannot
follow it there, so the front end probes the head's GCS port every
PROBE_INTERVAL_S; when it stops answering, every actor is given up, the Ray
connection is shut down, and the front end joins again, with new actors, as
soon as the port answers, trying at most RAY_RECONNECT_S apart. Sessions stay
open meanwhile; their frames fail with pipeline_failure.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from adapters.executors.ray.actor import PipelineActor
from adapters.executors.ray.cluster import connect, gcs_answers
from adapters.executors.ray.wire import RayClusterUnreachable
from adapters.settings import Settings

log = logging.getLogger("adapters.executors.ray.executor")

# How long start-up, or a rejoin, waits for the cluster to place and build every actor.
ACTOR_START_TIMEOUT_S = 120.0
# How often a front end checks that its cluster's head still answers: the time to notice a lost cluster.
PROBE_INTERVAL_S = 1.0
# The first wait before rejoining a lost cluster; it doubles up to FORGESYTE_STREAM_RAY_RECONNECT_S.
FIRST_RECONNECT_S = 0.5


@dataclass(eq=False)
class Slot:
    """One actor position; a dead actor is replaced in its slot by a new generation."""

    index: int
    name: str
    handle: Any
    generation: int = 1
    state: str = "starting"  # starting | ready | dead
    node_id: str | None = None
    in_flight: int = 0
    streams: set[str] = field(default_factory=set)
    lost: int = 0
    failed_starts: int = 0  # replacements in a row that died before they were ready


class ClusterFollower:
    """The executor's part that notices its cluster gone and joins it again (mixed into RayFrameExecutor)."""

    _settings: Settings
    _stop: threading.Event
    _lock: threading.Lock
    _closed: bool
    _rejoining: bool
    _cluster_lost: str | None
    _slots: list[Slot]
    _ray: Any
    _remote_class: Any

    def _start_actor(self, index: int, generation: int) -> Slot:
        raise NotImplementedError

    def _mark_dead(self, slot: Slot) -> tuple[int, list[dict[tuple[str, str], int]]]:
        raise NotImplementedError

    def _take_back(self, orphaned: list[dict[tuple[str, str], int]]) -> None:
        raise NotImplementedError

    def _watch(self, slot: Slot) -> None:
        raise NotImplementedError

    def _follow_cluster(self) -> None:
        """The monitor thread: notices the head's GCS gone, then rejoins once it answers again."""
        address = self._settings.ray_address
        assert address is not None
        while not self._stop.wait(PROBE_INTERVAL_S):
            error = gcs_answers(address, PROBE_INTERVAL_S)
            if error is None:
                continue
            self._cluster_gone(f"{address} does not answer ({error.strerror or error})")
            self._rejoin(address)

    def _cluster_gone(self, why: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._rejoining = True
            self._cluster_lost = why
            moved = 0
            orphaned: list[dict[tuple[str, str], int]] = []
            for slot in self._slots:
                # A new generation: whatever the old actors' calls report later is ignored.
                slot.generation += 1
                slot.in_flight = 0
                if slot.state != "dead":
                    count, ledgers = self._mark_dead(slot)
                    moved, orphaned = moved + count, orphaned + ledgers
        self._take_back(orphaned)
        log.error("ray cluster lost: %s; %d stream(s) wait for it; rejoining when it answers again", why, moved)
        # The connection belongs to the cluster that is gone; a driver cannot move to its successor.
        try:
            self._ray.shutdown()
        except Exception as error:
            log.debug("ray.shutdown after losing the cluster failed: %s", error)

    def _rejoin(self, address: str) -> None:
        delay = FIRST_RECONNECT_S
        attempts = 0
        while not self._stop.wait(delay):
            delay = min(delay * 2, self._settings.ray_reconnect_s)
            if gcs_answers(address, PROBE_INTERVAL_S) is not None:
                continue
            attempts += 1
            try:
                self._join_again()
            except Exception as error:
                log.warning("rejoining ray cluster at %s failed (attempt %d): %s", address, attempts, " ".join(str(error).split()))
                try:
                    self._ray.shutdown()
                except Exception as shutdown_error:
                    log.debug("ray.shutdown after a failed rejoin failed: %s", shutdown_error)
                continue
            log.warning("ray cluster at %s joined again after %d attempt(s); %d actor(s) ready", address, attempts, len(self._slots))
            return

    def _join_again(self) -> None:
        """Connect, start a full set of actors and wait for them; only then do frames go to them."""
        self._ray, _ = connect(self._settings)
        self._remote_class = self._ray.remote(PipelineActor)
        fresh = [self._start_actor(slot.index, slot.generation + 1) for slot in self._slots]
        refs = [actor.handle.ready.remote() for actor in fresh]
        ready, pending = self._ray.wait(refs, num_returns=len(refs), timeout=ACTOR_START_TIMEOUT_S)
        if pending:
            raise RayClusterUnreachable(f"{len(pending)} of {len(refs)} actors were not ready within {ACTOR_START_TIMEOUT_S:g} s")
        infos = self._ray.get(ready)
        with self._lock:
            if self._closed:
                return
            for slot, actor, info in zip(self._slots, fresh, infos, strict=True):
                slot.name, slot.handle, slot.generation = actor.name, actor.handle, actor.generation
                slot.state, slot.node_id, slot.in_flight, slot.failed_starts = "ready", info["node_id"], 0, 0
            self._cluster_lost = None
            self._rejoining = False
        for slot in self._slots:
            self._watch(slot)
