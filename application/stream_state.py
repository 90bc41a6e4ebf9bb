"""Per-stream tool state, leased by runs and released when the stream ends."""

from __future__ import annotations

import threading
from typing import Any

from domain import JpegInfo



class StreamStateStore:
    """Per-stream, per-node tool state (a motion model, say), released when the stream ends.

    A stream is opened when its session starts (on the event loop, before any
    frame) and released when it ends. Access happens from worker threads, but
    one stream has one frame in flight at a time, so each stream's slice is only
    ever touched by one thread. A run holds a lease on its stream's state; a
    release that comes while a run holds it (the client left mid-frame, or
    shutdown answered the frame without waiting) is carried out when that run
    returns, never under it; a run that starts after the release (its thread
    was slow to start) gets a throw-away state, so nothing is re-created that
    no one would release. A throw-away state (that run's, or a one-off
    frame's) is closed when its run ends, as a released stream's is.
    """

    def __init__(self) -> None:
        self._streams: dict[str, dict[str, dict[str, Any]]] = {}
        self._leases: dict[str, int] = {}
        self._released: set[str] = set()
        self._headers: dict[str, tuple[bytes, JpegInfo]] = {}
        self._lock = threading.Lock()

    def open(self, stream_id: str) -> None:
        with self._lock:
            self._streams.setdefault(stream_id, {})

    def acquire(self, stream_id: str | None) -> tuple[dict[str, dict[str, Any]], bool]:
        """The state one run uses, and whether it is the stream's (False: throw-away); hand both to give_back."""
        if stream_id is not None:
            with self._lock:
                state = self._streams.get(stream_id)
                if state is not None:
                    self._leases[stream_id] = self._leases.get(stream_id, 0) + 1
                    return state, True
        return {}, False

    def give_back(self, stream_id: str | None, state: dict[str, dict[str, Any]], owned: bool) -> None:
        """End a run's use of its state: a throw-away state is closed now, a released stream's once its last run ends."""
        if not owned:
            self._close(state)
            return
        assert stream_id is not None
        with self._lock:
            remaining = self._leases.pop(stream_id) - 1
            if remaining:
                self._leases[stream_id] = remaining
            deferred = not remaining and stream_id in self._released
            if deferred:
                self._released.discard(stream_id)
                states = self._streams.pop(stream_id, None)
        if deferred:
            self._close(states)

    def header(self, stream_id: str) -> tuple[bytes, JpegInfo] | None:
        """The stream's last JPEG header (its bytes, their reading), if one is remembered (see remember_header)."""
        return self._headers.get(stream_id)

    def remember_header(self, stream_id: str, header: tuple[bytes, JpegInfo]) -> None:
        """Keep a stream's latest header while the stream is open; released with the stream, never after it."""
        with self._lock:
            if stream_id in self._streams and stream_id not in self._released:
                self._headers[stream_id] = header

    def release(self, stream_id: str) -> None:
        with self._lock:
            self._headers.pop(stream_id, None)
            if self._leases.get(stream_id):
                self._released.add(stream_id)
                return
            states = self._streams.pop(stream_id, None)
        self._close(states)

    @staticmethod
    def _close(states: dict[str, dict[str, Any]] | None) -> None:
        for node_state in (states or {}).values():
            for value in node_state.values():
                closer = getattr(value, "close", None)
                if callable(closer):
                    closer()

    def active_streams(self) -> int:
        with self._lock:
            return len(self._streams)
