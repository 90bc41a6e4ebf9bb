"""A raw MJPEG file split into its JPEGs: exactly the frames written, whatever their JPEG flavour and wherever FF D9 hides."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from forgesyte_stream_client.jpeg_stream import JpegStreamError, split_jpegs
from forgesyte_stream_client.sources import SourceError, open_source


def _image(seed: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth.astype(int) + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8)


def _encode(image: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
    assert ok
    return data.tobytes()


def _segment(code: int, payload: bytes) -> bytes:
    return bytes([0xFF, code]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _without_huffman_tables(jpeg: bytes) -> bytes:
    """The JPEG with its DHT segments taken out, as AVI-style MJPEG stores frames."""
    out, position = bytearray(jpeg[:2]), 2
    while jpeg[position + 1] != 0xDA:
        length = int.from_bytes(jpeg[position + 2 : position + 4], "big")
        if jpeg[position + 1] != 0xC4:
            out += jpeg[position : position + 2 + length]
        position += 2 + length
    return bytes(out + jpeg[position:])


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    baseline = _encode(_image(1))
    progressive = _encode(_image(2), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)  # several scans, tables between them
    restarts = _encode(_image(3), cv2.IMWRITE_JPEG_RST_INTERVAL, 2)  # FF D0-D7 inside the scan
    thumbnail = _encode(_image(4, (24, 32)))
    # An EXIF-style APP1 holding a whole JPEG (its own FF D8 ... FF D9), then a comment holding FF D9.
    with_thumbnail = baseline[:2] + _segment(0xE1, b"Exif\x00\x00" + thumbnail) + _segment(0xFE, b"end \xff\xd9 here") + _encode(_image(5))[2:]
    fill_bytes = _encode(_image(6))[:-2] + b"\xff\xff\xff\xd9"  # fill bytes before EOI are allowed
    assert progressive.count(b"\xff\xda") > 1 and any(bytes([0xFF, c]) in restarts for c in range(0xD0, 0xD8))
    assert with_thumbnail.index(b"\xff\xd9") < with_thumbnail.index(b"end") < len(with_thumbnail) - 2  # FF D9 well before the end
    return [baseline, progressive, restarts, with_thumbnail, fill_bytes] * 3


@pytest.mark.parametrize("window_bytes", [7, 1000, 256 << 10])
def test_every_frame_comes_back_byte_for_byte_whatever_the_window(frames: list[bytes], window_bytes: int) -> None:
    data = b"".join(frames)
    found = list(split_jpegs(data, window_bytes))
    assert [f.data for f in found] == frames
    assert all(f.has_huffman_tables for f in found)


def test_the_split_agrees_with_pyavs_demuxer_on_frames_it_reads(frames: list[bytes], tmp_path: Path) -> None:
    plain = [f for f in frames if b"Exif" not in f]  # FFmpeg's parser has no reason to look inside an APP1: left out
    path = tmp_path / "plain.mjpeg"
    path.write_bytes(b"".join(plain))
    with av.open(str(path)) as container:
        demuxed = [bytes(packet) for packet in container.demux(video=0) if packet.size]
    assert [f.data for f in split_jpegs(path.read_bytes())] == demuxed == plain


def test_every_split_frame_decodes_to_its_image(frames: list[bytes]) -> None:
    for found, original in zip(split_jpegs(b"".join(frames)), frames, strict=True):
        decoded = cv2.imdecode(np.frombuffer(found.data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape == cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_COLOR).shape


def test_a_truncated_file_and_bytes_between_frames_are_errors_with_their_offset(frames: list[bytes]) -> None:
    first, second = frames[0], frames[1]
    with pytest.raises(JpegStreamError, match="ends inside a JPEG") as truncated:
        list(split_jpegs(first + second[:-40]))
    assert truncated.value.offset == len(first)
    with pytest.raises(JpegStreamError, match="not the start of a JPEG") as garbage:
        list(split_jpegs(first + b"\x00\x00" + second))
    assert garbage.value.offset == len(first)


def test_a_frame_without_huffman_tables_is_flagged_and_the_source_decodes_it(frames: list[bytes], tmp_path: Path) -> None:
    bare = _without_huffman_tables(frames[0])
    assert b"\xff\xc4" not in bare
    path = tmp_path / "avi-style.mjpeg"
    path.write_bytes(frames[0] + bare)
    assert [f.has_huffman_tables for f in split_jpegs(path.read_bytes())] == [True, False]
    source = open_source(str(path))
    read = list(source.frames())
    assert [f.index for f in read] == [0, 1]
    assert read[0].jpeg == frames[0] and read[0].image is None
    assert read[1].jpeg is None and read[1].image is not None and read[1].image.shape == (96, 128, 3)


def test_the_source_reads_a_raw_mjpeg_file_and_can_stop_early(frames: list[bytes], tmp_path: Path) -> None:
    path = tmp_path / "clip.mjpeg"
    path.write_bytes(b"".join(frames))
    source = open_source(str(path))
    assert not source.live and source.prefetch
    assert [f.jpeg for f in source.frames()] == frames
    reading = open_source(str(path)).frames()
    assert next(reading).jpeg == frames[0]
    reading.close()  # stopping early releases the file's mapping without an error

    broken = tmp_path / "broken.mjpeg"
    broken.write_bytes(b"".join(frames[:2])[:-40])
    with pytest.raises(SourceError, match="past frame 1"):
        list(open_source(str(broken)).frames())
