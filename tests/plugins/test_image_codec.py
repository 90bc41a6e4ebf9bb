"""The OpenCV decoder and video reader on real JPEGs and a video written by the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from adapters.media.codec import OpenCvJpegDecoder, OpenCvVideoReader
from application.errors import VideoReadError
from domain import ErrorCode, FrameValidationError, read_jpeg_info
from tests.hardening.test_decode_budget import multi_scan_baseline


def _with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """Patch the start-of-frame segment so the header declares another size (a decompression bomb's trick)."""
    patched = bytearray(data)
    sof = patched.index(b"\xff\xc0")
    patched[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    patched[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(patched)


def test_decode_valid_jpeg(jpeg):
    image = OpenCvJpegDecoder(max_pixels=1_000_000).decode(jpeg(np.full((48, 64, 3), 90, np.uint8)))
    assert image.shape == (48, 64, 3)
    assert image.dtype == np.uint8
    assert abs(int(image.mean()) - 90) <= 2


def test_decode_greyscale_jpeg_gives_three_channels(jpeg):
    image = OpenCvJpegDecoder(max_pixels=1_000_000).decode(jpeg(np.full((48, 64), 90, np.uint8)))
    assert image.shape == (48, 64, 3)


def test_decode_refuses_markers_around_garbage():
    garbage = b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9"
    with pytest.raises(FrameValidationError) as caught:
        OpenCvJpegDecoder(max_pixels=1_000_000).decode(garbage)
    assert caught.value.code is ErrorCode.INVALID_FRAME


def test_decode_refuses_a_header_that_fails_to_decode(jpeg):
    data = jpeg(np.full((48, 64, 3), 90, np.uint8))
    sos = data.index(b"\xff\xda")
    truncated_scan = data[: sos + 4] + b"\x00" * 8 + b"\xff\xd9"
    with pytest.raises(FrameValidationError) as caught:
        OpenCvJpegDecoder(max_pixels=1_000_000).decode(truncated_scan)
    assert caught.value.code is ErrorCode.INVALID_FRAME
    assert caught.value.detail == "frame has JPEG markers but does not decode as an image"


def test_decode_refuses_a_declared_size_over_the_limit_before_decoding(jpeg):
    bomb = _with_declared_size(jpeg(np.zeros((8, 8, 3), np.uint8)), 60_000, 50_000)
    assert (read_jpeg_info(bomb).width, read_jpeg_info(bomb).height) == (60_000, 50_000)
    with pytest.raises(FrameValidationError) as caught:
        OpenCvJpegDecoder(max_pixels=40_000_000).decode(bomb)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert "60000x50000 = 3000000000 pixels" in caught.value.detail
    assert "40000000" in caught.value.detail


def test_decode_limit_is_inclusive(jpeg):
    data = jpeg(np.zeros((10, 10, 3), np.uint8))
    assert OpenCvJpegDecoder(max_pixels=100).decode(data).shape == (10, 10, 3)
    with pytest.raises(FrameValidationError) as caught:
        OpenCvJpegDecoder(max_pixels=99).decode(data)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def test_decoder_needs_a_positive_limit():
    with pytest.raises(ValueError):
        OpenCvJpegDecoder(max_pixels=0)


def _planes(width: int, height: int) -> list[np.ndarray]:
    """Y, Cb, Cr planes of a busy image (so that no coefficient block is trivially empty)."""
    rng = np.random.default_rng(width + height)
    return [rng.integers(0, 255, size=(height, width), dtype=np.uint8) for _ in range(3)]


def _with_sampling(data: bytes, sampling: int) -> bytes:
    """The same baseline file with every component's start-of-frame sampling factors set to `sampling`."""
    patched = bytearray(data)
    sof = patched.index(b"\xff\xc0")
    for index in range(patched[sof + 9]):
        patched[sof + 11 + 3 * index] = sampling
    return bytes(patched)


def _single_scan(planes: list[np.ndarray], **params: int) -> bytes:
    flags = [value for name, number in params.items() for value in (int(getattr(cv2, name)), number)]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(cv2.merge([planes[0], planes[2], planes[1]]), cv2.COLOR_YCrCb2BGR), flags)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
def test_a_baseline_file_of_one_scan_per_component_is_charged_its_coefficients_as_a_progressive_one_is(reduction: int) -> None:
    planes = _planes(1001, 599)
    decoder = OpenCvJpegDecoder(max_pixels=1_000_000)
    multi = multi_scan_baseline(planes)
    single = _single_scan(planes, IMWRITE_JPEG_SAMPLING_FACTOR=cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
    progressive = _single_scan(planes, IMWRITE_JPEG_SAMPLING_FACTOR=cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, IMWRITE_JPEG_PROGRESSIVE=1)
    output = decoder.decode(multi, reduction).nbytes
    assert decoder.decode(single, reduction).nbytes == decoder.decode(progressive, reduction).nbytes == output
    coefficients = 3 * 126 * 75 * 64 * 2  # 1001 x 599 in 8 x 8 blocks, rounded up, per component
    assert decoder.memory_needed(read_jpeg_info(single), reduction) == output
    assert decoder.memory_needed(read_jpeg_info(multi), reduction) == output + coefficients
    assert decoder.memory_needed(read_jpeg_info(progressive), reduction) == output + coefficients


_PEAK = """
import sys, cv2, numpy as np
def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key))
data = np.frombuffer(open(sys.argv[1], "rb").read(), np.uint8)
cv2.imdecode(np.frombuffer(open(sys.argv[2], "rb").read(), np.uint8), cv2.IMREAD_COLOR)  # libjpeg's first use, not counted
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_4)
print(status("VmHWM") - before)
"""


def _decode_peak(data: bytes, path: Path) -> int:
    """Peak RSS growth of a fresh process decoding `data` at 1/4, the way the decoder does."""
    path.write_bytes(data)
    from tests.support.media import FACE_JPEG

    done = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(FACE_JPEG)], capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


@pytest.mark.parametrize(
    ("name", "width", "height"),
    [("progressive 4:2:0", 3840, 2160), ("one scan per component", 3840, 2160), ("one scan per component, 4x4 MCUs", 129, 64297)],
)
def test_the_coefficient_charge_covers_what_libjpeg_holds(name: str, width: int, height: int, tmp_path: Path) -> None:
    # What libjpeg keeps for a multi-scan file is measured against the same image in one scan, which keeps
    # none of it: the difference must be within the charge, and the charge must not be far above it.
    planes = _planes(width, height)
    if name.startswith("progressive"):
        multi = _single_scan(planes, IMWRITE_JPEG_PROGRESSIVE=1)
        single = _single_scan(planes)
    else:
        multi = multi_scan_baseline(planes)
        single = _single_scan(planes, IMWRITE_JPEG_SAMPLING_FACTOR=cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
        if "4x4" in name:
            multi = _with_sampling(multi, 0x44)
    decoder = OpenCvJpegDecoder(max_pixels=10_000_000)
    charged = decoder.memory_needed(read_jpeg_info(multi), 4) - decoder.memory_needed(read_jpeg_info(single), 4)
    held = _decode_peak(multi, tmp_path / "multi.jpg") - _decode_peak(single, tmp_path / "single.jpg")
    print(f"{name} {width}x{height}: libjpeg holds {held / 1e6:.1f} MB more than in one scan; charged {charged / 1e6:.1f} MB")
    assert held <= charged + 1024 * 1024, f"libjpeg holds {held} bytes, the charge is {charged}"
    assert charged <= held * 1.1 + 1024 * 1024, f"the charge {charged} is far above what libjpeg holds ({held})"


@pytest.fixture
def video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.full((48, 64, 3), i * 25, np.uint8))
    writer.release()
    return path


def test_video_reader_strides_and_stops(video_file):
    frames = list(OpenCvVideoReader().frames(str(video_file), frame_stride=2, max_frames=3))
    assert [number for number, _ in frames] == [0, 2, 4]
    for number, data in frames:
        info = read_jpeg_info(data)
        assert (info.width, info.height) == (64, 48)
        image = OpenCvJpegDecoder(max_pixels=10_000).decode(data)
        assert abs(float(image.mean()) - number * 25) <= 4


def test_video_reader_reads_every_frame_by_default(video_file):
    numbers = [number for number, _ in OpenCvVideoReader().frames(str(video_file), frame_stride=1, max_frames=None)]
    assert numbers == list(range(10))


def test_video_reader_missing_file(tmp_path):
    missing = tmp_path / "nothing.avi"
    with pytest.raises(VideoReadError) as caught:
        list(OpenCvVideoReader().frames(str(missing), frame_stride=1, max_frames=None))
    assert "nothing.avi" in caught.value.detail


def test_video_reader_file_that_is_not_a_video(tmp_path):
    not_video = tmp_path / "notes.avi"
    not_video.write_text("this is not a video\n")
    with pytest.raises(VideoReadError):
        list(OpenCvVideoReader().frames(str(not_video), frame_stride=1, max_frames=None))


def test_video_reader_rejects_bad_arguments(video_file):
    with pytest.raises(ValueError):
        OpenCvVideoReader().frames(str(video_file), frame_stride=0, max_frames=None)
    with pytest.raises(ValueError):
        OpenCvVideoReader().frames(str(video_file), frame_stride=1, max_frames=0)
