"""JPEG frames for the contract cases, made here so the suite needs no image files."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"


@lru_cache(maxsize=32)
def jpeg(width: int = 64, height: int = 48, *, seed: int = 0, quality: int = 90) -> bytes:
    """A real, decodable JPEG of random pixels."""
    image = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes()


def jpeg_of_size(size: int) -> bytes:
    """A JPEG of exactly `size` bytes: a real 16x16 image padded with zeros before its EOI marker.

    The header is intact, so a header-reading pipeline answers it; it is meant
    for the size limit, and the padding is never reached by a decoder.
    """
    base = jpeg(16, 16)
    if size < len(base):
        raise ValueError(f"a padded JPEG is at least {len(base)} bytes, asked for {size}")
    return base[:-2] + b"\x00" * (size - len(base)) + EOI
