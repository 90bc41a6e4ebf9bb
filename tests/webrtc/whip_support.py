"""Media for the WebRTC tests; the publisher itself is the contract suite's (contracts/whip_client.py)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from contracts.whip_client import WEBRTC_ENV, ClipTrack, Publisher, loopback_only, publish
from tests.support.media import FACE_JPEG, moving_face_clip

__all__ = ["WEBRTC_ENV", "ClipTrack", "Publisher", "face_frames", "loopback_only", "publish", "still_face"]


def face_frames(count: int, *, width: int = 640, height: int = 480) -> list[np.ndarray[Any, Any]]:
    """The moving-face clip of the WebSocket tests, decoded: the same pictures over either transport."""
    return [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for jpeg in moving_face_clip(count, width=width, height=height)]


def still_face(width: int = 640, height: int = 480) -> np.ndarray[Any, Any]:
    image = cv2.imdecode(np.frombuffer(FACE_JPEG.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(image, (width, height))
