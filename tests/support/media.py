"""Images and videos made by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
FACE_JPEG = DATA / "face-astronaut.jpg"
# Frames 60-159 (768 x 576, 10 fps; one walker crosses the centre line) of the shared pedestrian clip (../shared/testdata/README.md: OpenCV's
# vtest.avi), and the empty scene: the per-pixel median of all 400 frames, where no one stays long enough to show.
PEDESTRIANS_MP4 = DATA / "pedestrians-60-159.mp4"
PEDESTRIANS_BACKGROUND = DATA / "pedestrians-background.jpg"


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


def moving_face_clip(frames: int, *, width: int = 640, height: int = 240, quality: int = 85) -> list[bytes]:
    """JPEG frames of the astronaut's face moving steadily from the left edge to the right edge of a grey canvas.

    The pasted patch is the 192 x 192 pixels around the face (which the Haar
    cascade finds as a box of about 100 pixels), so the face is most of what
    moves. Its centre crosses the frame's vertical centre line exactly once,
    half-way through the clip.
    """
    patch = cv2.imread(str(FACE_JPEG))[_FACE_CROP[1] : _FACE_CROP[1] + _FACE_PATCH, _FACE_CROP[0] : _FACE_CROP[0] + _FACE_PATCH]
    top = (height - _FACE_PATCH) // 2
    clip = []
    for i in range(frames):
        left = round(i * (width - _FACE_PATCH) / (frames - 1))
        canvas = np.full((height, width, 3), 64, np.uint8)
        canvas[top : top + _FACE_PATCH, left : left + _FACE_PATCH] = patch
        ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        clip.append(encoded.tobytes())
    return clip


# Top-left corner of the square around the face in face-astronaut.jpg (512 x 512), and its side.
_FACE_CROP = (129, 19)
_FACE_PATCH = 192


def gated_scene_clip(
    still: int, moving: int, *, crossings: int = 4, width: int = 640, height: int = 480, quality: int = 80, noise: float = 2.0
) -> tuple[list[bytes], list[tuple[float, float] | None]]:
    """A fixed camera's clip for gated pipelines: `still` frames of an empty scene, then the face crossing it.

    The scene is a textured, lit background with the camera's sensor noise
    (a normal spread of `noise` grey levels, different in every frame, as a
    real camera's), so no two frames are byte-identical. In the moving part
    the astronaut's face crosses the whole frame `crossings` times, in
    alternating directions and at different heights, each crossing passing
    the vertical centre line once. Returns the JPEGs and, per frame, the
    face's true centre in frame pixels (None while no face is in view).
    """
    patch = cv2.imread(str(FACE_JPEG))[_FACE_CROP[1] : _FACE_CROP[1] + _FACE_PATCH, _FACE_CROP[0] : _FACE_CROP[0] + _FACE_PATCH]
    rows, columns = np.mgrid[0:height, 0:width]
    scene = np.empty((height, width, 3), np.float32)
    scene[..., 0] = 90 + 40 * np.sin(columns / 37.0) + 0.05 * rows
    scene[..., 1] = 110 + 30 * np.cos(rows / 23.0)
    scene[..., 2] = 70 + 0.1 * columns
    for x, y, w, h, shade in ((40, 300, 120, 140, 200), (480, 40, 100, 60, 30), (300, 380, 200, 60, 160)):
        scene[y : y + h, x : x + w] = shade
    random = np.random.default_rng(7)
    per_crossing = max(1, moving // crossings)
    tops = [round(t * (height - _FACE_PATCH)) for t in (0.1, 0.6, 0.35, 0.85)]
    clip: list[bytes] = []
    centres: list[tuple[float, float] | None] = []
    for i in range(still + moving):
        frame = scene + random.normal(0.0, noise, scene.shape).astype(np.float32)
        centre: tuple[float, float] | None = None
        if i >= still:
            step = i - still
            crossing, along = divmod(step, per_crossing)
            progress = along / max(1, per_crossing - 1)
            if crossing % 2:
                progress = 1.0 - progress
            left = round(progress * (width - _FACE_PATCH))
            top = tops[crossing % len(tops)]
            frame[top : top + _FACE_PATCH, left : left + _FACE_PATCH] = patch
            centre = (left + _FACE_PATCH / 2, top + _FACE_PATCH / 2)
        ok, encoded = cv2.imencode(".jpg", np.clip(frame, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        clip.append(encoded.tobytes())
        centres.append(centre)
    return clip, centres


def pedestrian_scene_clip(still: int, moving: int, *, after: int = 0, quality: int = 85, noise: float = 2.0) -> list[bytes]:
    """A fixed camera's clip for the gated people pipelines: `still` frames of the empty path, then real walkers.

    The still frames are the empty scene with the camera's sensor noise (a
    normal spread of `noise` grey levels, new in every frame); then `moving`
    frames of the real footage (at most 100 here), then `after` still frames
    again. Returns the JPEGs.
    """
    background = cv2.imread(str(PEDESTRIANS_BACKGROUND)).astype(np.float32)
    capture = cv2.VideoCapture(str(PEDESTRIANS_MP4))
    walkers: list[np.ndarray] = []
    while len(walkers) < moving:
        ok, frame = capture.read()
        if not ok:
            break
        walkers.append(frame)
    capture.release()
    if len(walkers) < moving:
        raise ValueError(f"{PEDESTRIANS_MP4} has {len(walkers)} frames; asked for {moving}")
    random = np.random.default_rng(11)

    def still_frame() -> np.ndarray:
        return np.clip(background + random.normal(0.0, noise, background.shape), 0, 255).astype(np.uint8)

    frames = [still_frame() for _ in range(still)] + walkers + [still_frame() for _ in range(after)]
    clip = []
    for frame in frames:
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        clip.append(encoded.tobytes())
    return clip
