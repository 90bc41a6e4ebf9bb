"""ByteTrack told how many frames passed between its updates, so ids survive dropped and gated frames.

The tracker is supervision's ByteTrack (supervision 0.30.x). Its maintained
successor, the `trackers` package, requires `opencv-python`, which cannot be
installed next to the `opencv-python-headless` this server uses (both own the
`cv2` package, and the GUI build needs libGL on a server); supervision 0.31
removed ByteTrack. See docs/tracking.md.
"""

from __future__ import annotations

import warnings

import numpy as np

from adapters.plugins.tracking_params import TrackerSettings

# ByteTrack is deprecated in supervision 0.30 (moved to the `trackers` package, see the module docstring);
# the warning would be logged once per process and says nothing an operator can act on.
warnings.filterwarnings("ignore", message=r"The `ByteTrack` was deprecated", category=FutureWarning)

import supervision as sv  # noqa: E402  (after the filter above)
from supervision.tracker.byte_tracker.single_object_track import STrack, TrackState  # noqa: E402

# pyDeprecate warns once per process, at the first instance; spend that warning here, under a local
# filter, because a test runner (or a host) may reset the process-wide filters set above.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    sv.ByteTrack()


class GapAwareTracker:
    """ByteTrack told how many frames passed between two updates.

    ByteTrack's own clock is its update count: one Kalman step and one frame of
    the lost-track buffer per update. Before an update that follows a gap of g
    frames, the confirmed and lost tracks are predicted g - 1 extra steps, the
    clock is moved g - 1 frames on and lost tracks whose buffer ran out in the
    gap are removed, so velocities stay per frame and the buffer is counted in
    frames whatever the drop pattern was. This reaches into ByteTrack's
    attributes (tracked_tracks, lost_tracks, frame_id, shared_kalman), which is
    why supervision is pinned; tests/plugins/test_tracking.py pins the behaviour.
    """

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        self._tracker = sv.ByteTrack(
            track_activation_threshold=settings.activation_threshold,
            lost_track_buffer=settings.lost_track_buffer,
            minimum_matching_threshold=settings.matching_threshold,
            frame_rate=30,  # makes max_time_lost == lost_track_buffer frames
            minimum_consecutive_frames=settings.min_consecutive_frames,
        )
        self._last_frame: int | None = None
        # A track that was followed before the last update and lost in it: a gated detector runs again at once.
        self.lost_in_last_update = False

    def predicted_boxes(self, frames: int) -> dict[int, tuple[float, float, float, float]]:
        """Each confirmed track's box `frames` frames after the last update, by its constant-velocity model, without updating it."""
        boxes: dict[int, tuple[float, float, float, float]] = {}
        for track in self._tracker.tracked_tracks:
            if not track.is_activated or track.mean is None:
                continue
            centre_x, centre_y, aspect, height = (track.mean[:4] + frames * track.mean[4:8]).tolist()
            width = aspect * height
            boxes[int(track.external_track_id)] = (centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2)
        return boxes

    def update(self, frame_index: int, xyxy: np.ndarray, confidence: np.ndarray) -> list[int | None]:
        """Tracker ids for the boxes, in their order; None for a box no confirmed track holds (yet)."""
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frame_index went from {self._last_frame} to {frame_index}; a stream's frames must advance")
        gap = 1 if self._last_frame is None else frame_index - self._last_frame
        self._last_frame = frame_index
        if gap > 1:
            self._skip(gap - 1)
        detections = sv.Detections(
            xyxy=xyxy.astype(np.float32).reshape(-1, 4),
            confidence=confidence.astype(np.float32).reshape(-1),
            data={"index": np.arange(len(xyxy))},
        )
        lost_before = len(self._tracker.lost_tracks)
        tracked = self._tracker.update_with_detections(detections)
        self.lost_in_last_update = len(self._tracker.lost_tracks) > lost_before
        ids: list[int | None] = [None] * len(xyxy)
        if len(tracked) and tracked.tracker_id is not None:
            for index, tracker_id in zip(np.asarray(tracked.data["index"]).tolist(), tracked.tracker_id.tolist()):
                ids[int(index)] = int(tracker_id)
        return ids

    def _skip(self, frames: int) -> None:
        """Do what the skipped updates would have done to the tracks, knowing nothing of the dropped frames.

        Dropped frames are unseen, not empty: a track that matched on the last
        processed frame stays tracked. A track that was already lost expires if
        the buffer ran out during the gap, before the next update could match
        it again (ByteTrack removes lost tracks at the end of an update).
        """
        tracker = self._tracker
        # Past max_time_lost a lost track has expired; predicting further moves nothing that can still match.
        steps = min(frames, tracker.max_time_lost + 1)
        pool = [t for t in tracker.tracked_tracks if t.is_activated] + list(tracker.lost_tracks)
        for _ in range(steps):
            STrack.multi_predict(pool, tracker.shared_kalman)
        tracker.frame_id += frames
        expired = [t for t in tracker.lost_tracks if tracker.frame_id - t.frame_id > tracker.max_time_lost]
        for track in expired:
            track.state = TrackState.Removed
        tracker.lost_tracks = [t for t in tracker.lost_tracks if t.state != TrackState.Removed]


# Line crossings -----------------------------------------------------------------------
