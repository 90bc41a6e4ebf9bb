"""Images and videos made by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
FACE_JPEG = DATA / "face-astronaut.jpg"


def jpeg(width: int = 64, height: int = 48, *, quality: int = 90, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def jpeg_header(width: int, height: int, *, components: int = 3, progressive: bool = False, before: bytes = b"") -> bytes:
    """SOI, the given segments, one start-of-frame segment declaring width x height, EOI: a header and no image.

    Enough for everything that reads headers (the pixel limit, probe); a decoder refuses it.
    """
    sof = b"\xff\xc2" if progressive else b"\xff\xc0"
    body = bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([components])
    body += b"".join(bytes([index + 1, 0x11, 0]) for index in range(components))
    return b"\xff\xd8" + before + sof + (len(body) + 2).to_bytes(2, "big") + body + b"\xff\xd9"


def jpeg_of_size(target: int) -> bytes:
    """A valid-marker JPEG of exactly `target` bytes: a real image padded before EOI with a COM-free filler.

    The padding sits in the entropy-coded data, so the markers check passes and
    the size is exact; it is meant for size-limit tests, not for decoding.
    """
    base = jpeg(16, 16)
    assert target >= len(base)
    return base[:-2] + b"\x00" * (target - len(base)) + b"\xff\xd9"


def text_image(text: str, width: int = 640, height: int = 200) -> bytes:
    canvas = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(canvas, text, (20, height // 2 + 20), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 4)
    ok, encoded = cv2.imencode(".jpg", canvas)
    assert ok
    return encoded.tobytes()
