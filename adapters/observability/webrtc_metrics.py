"""What only the WebRTC transport sees, as metrics: frames it discarded before the session, offers refused, connects that failed.

Every frame the session admits is counted by the stream metrics like any
other (stream_frames_received_total and the rest, transport-blind); these
series cover what happens before that.
"""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter

log = structlog.get_logger("forgesyte.webrtc")

DISCARD_CAUSES = ("decode_backlog", "receive_backlog")
CONNECT_STAGES = ("ice_dtls", "results_channel")
OFFER_REFUSALS = ("invalid_message", "frame_too_large")


class WebRtcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._discarded = Counter(
            "stream_webrtc_frames_discarded",
            "Video frames a WebRTC session discarded before admitting them, by cause: decode_backlog (encoded frames "
            "the decoder could not keep up with, skipped to the next keyframe), receive_backlog (decoded frames the "
            "event loop did not take in time)",
            ["cause"],
            registry=registry,
        )
        self._connect_failed = Counter(
            "stream_webrtc_connect_failures",
            "WHIP sessions ended at FORGESYTE_STREAM_WEBRTC_CONNECT_TIMEOUT_S because ICE/DTLS or the results channel never came up",
            ["stage"],
            registry=registry,
        )
        self._offers_refused = Counter(
            "stream_webrtc_offers_refused",
            "WHIP offers refused before any session was admitted (bad, oversized or unsupported SDP), by error code",
            ["error"],
            registry=registry,
        )
        for cause in DISCARD_CAUSES:
            self._discarded.labels(cause)
        for stage in CONNECT_STAGES:
            self._connect_failed.labels(stage)
        for code in OFFER_REFUSALS:
            self._offers_refused.labels(code)

    def frames_discarded(self, cause: str, frames: int) -> None:
        self._discarded.labels(cause).inc(frames)
        log.debug("webrtc_frames_discarded", cause=cause, frames=frames)

    def connect_failed(self, stage: str) -> None:
        self._connect_failed.labels(stage).inc()
        log.warning("webrtc_connect_failed", stage=stage)

    def offer_refused(self, code: str) -> None:
        self._offers_refused.labels(code).inc()
