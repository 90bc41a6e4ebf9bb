"""The OpenCV decoder and video reader on real JPEGs and a video written by the test."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from adapters.image_codec import OpenCvJpegDecoder, OpenCvVideoReader
from application.errors import VideoReadError
from domain import ErrorCode, FrameValidationError, read_jpeg_info


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
