"""Frame sources for the CLI: video files, cameras, stream URLs, images, folders and globs.

A source is *live* (a camera or a stream URL: frames come whether or not they
are taken, so the client sends the newest and skips the rest) or not (a file:
every frame is sent). JPEG inputs (image files, and MJPEG videos whose frames
carry their Huffman tables) are passed through as they are unless a quality is
asked for, which costs no re-encoding and loses nothing.
"""

from __future__ import annotations

import contextlib
import glob as globbing
import mmap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from forgesyte_stream_client.errors import ClientError
from forgesyte_stream_client.jpeg_stream import JpegStreamError, split_jpegs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
DEFAULT_QUALITY = 80
# PyAV's names for a file of JPEG images one after another: the raw MJPEG demuxer and the JPEG image pipe.
RAW_JPEG_FORMATS = frozenset({"mjpeg", "jpeg_pipe"})


class SourceError(ClientError):
    """The source cannot be opened or read (no such file, a camera that does not open, a refused URL)."""


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_QUALITY) -> bytes:
    """A BGR (or grey) image as JPEG bytes at `quality` (1-100)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1-100, got {quality}")
    ok, encoded = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as JPEG")
    return encoded.tobytes()


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"


@dataclass
class Frame:
    """One source frame: its position in the source, and its pixels or its JPEG bytes (or both)."""

    index: int
    image: np.ndarray | None = None
    jpeg: bytes | None = None
    captured_at: float = field(default_factory=time.time)

    def bgr(self) -> np.ndarray:
        """The frame's pixels, decoding the JPEG on first use."""
        if self.image is None:
            assert self.jpeg is not None
            decoded = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
            if decoded is None:
                raise SourceError(f"frame {self.index} is not a decodable JPEG")
            self.image = decoded
        return self.image

    def to_jpeg(self, quality: int | None = None) -> bytes:
        """The bytes to send: the source's own JPEG unless a quality is asked for, else an encoding of the pixels."""
        if self.jpeg is not None and quality is None:
            return self.jpeg
        return encode_jpeg(self.bgr(), DEFAULT_QUALITY if quality is None else quality)


class Source:
    """An iterable of frames; `live` sources produce frames on their own clock."""

    live: bool = False
    prefetch: bool = True  # reading a frame costs real work (decoding): read ahead in a thread
    fps: float | None = None
    length: int | None = None  # frames in the source, when known (a progress bar's total)
    description: str = ""

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""


class ImageFiles(Source):
    """One image, a folder of images (sorted by name) or a glob."""

    def __init__(self, paths: list[Path], description: str) -> None:
        if not paths:
            raise SourceError(f"{description}: no image files found ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.paths = paths
        self.description = description
        self.prefetch = any(path.suffix.lower() not in (".jpg", ".jpeg") for path in paths)
        self.length = len(paths)

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            data = path.read_bytes()
            if path.suffix.lower() in (".jpg", ".jpeg") and is_jpeg(data):
                yield Frame(index, jpeg=data)
                continue
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"{path}: not an image OpenCV can read")
            yield Frame(index, image=image)


class VideoFile(Source):
    """A video file read with PyAV; MJPEG frames that are complete JPEGs are passed through undecoded."""

    def __init__(self, path: Path, *, passthrough: bool = True) -> None:
        import av

        self.path = path
        self.description = str(path)
        try:
            self._container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as error:
            raise SourceError(f"{path}: cannot open as a video ({error})") from error
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{path}: has no video stream")
        self._stream = self._container.streams.video[0]
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self._passthrough = passthrough and self._stream.codec_context.name == "mjpeg"
        # A raw MJPEG file (JPEGs one after another, no container) is split by jpeg_stream, at a fraction of the
        # demuxer's cost; MJPEG in a container (AVI, MOV, MKV) goes through PyAV.
        self._raw_jpegs = self._passthrough and self._container.format.name in RAW_JPEG_FORMATS and path.is_file() and path.stat().st_size > 0
        # Decoding costs; so does splitting a raw MJPEG file (numpy releases the GIL for most of it): both read ahead
        # in a thread, which overlaps them with the network and the server's work.
        self.prefetch = not self._passthrough or self._raw_jpegs
        self.length = self._stream.frames or None
        if self._raw_jpegs:
            self._container.close()

    def frames(self) -> Iterator[Frame]:
        import av

        if self._raw_jpegs:
            yield from self._split_frames()
            return
        index = 0
        try:
            if self._passthrough:
                for packet in self._container.demux(self._stream):
                    data = bytes(packet)
                    if not data:
                        continue
                    # AVI-style MJPEG may leave out the Huffman tables; such a frame is decoded and re-encoded.
                    if is_jpeg(data) and b"\xff\xc4" in data:
                        yield Frame(index, jpeg=data)
                    else:
                        for decoded in packet.decode():
                            yield Frame(index, image=decoded.to_ndarray(format="bgr24"))
                    index += 1
                return
            for decoded in self._container.decode(self._stream):
                yield Frame(index, image=decoded.to_ndarray(format="bgr24"))
                index += 1
        except av.error.FFmpegError as error:
            raise SourceError(f"{self.path}: read failed at frame {index} ({error})") from error
        finally:
            self.close()

    def _split_frames(self) -> Iterator[Frame]:
        import av

        decoder = None
        index = 0
        try:
            with open(self.path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                data.madvise(mmap.MADV_SEQUENTIAL)
                # closing(): the splitter lets go of the mapping before it is unmapped, even when the reader stops early.
                with contextlib.closing(split_jpegs(data)) as found_frames:
                    for found in found_frames:
                        if found.has_huffman_tables:
                            yield Frame(index, jpeg=found.data)
                        else:
                            # AVI-style MJPEG may leave out the Huffman tables; such a frame is decoded and re-encoded.
                            decoder = decoder or av.CodecContext.create("mjpeg", "r")
                            for decoded in decoder.decode(av.Packet(found.data)):
                                yield Frame(index, image=decoded.to_ndarray(format="bgr24"))
                        index += 1
        except JpegStreamError as error:
            raise SourceError(f"{self.path}: not a raw MJPEG file past frame {index}: {error}") from error
        except av.error.FFmpegError as error:
            raise SourceError(f"{self.path}: read failed at frame {index} ({error})") from error

    def close(self) -> None:
        self._container.close()


class Capture(Source):
    """A camera (by index) or a stream URL, read with OpenCV; live."""

    live = True

    def __init__(self, target: int | str) -> None:
        self.target = target
        self.description = f"camera {target}" if isinstance(target, int) else str(target)
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            self._capture.release()
            what = f"camera {target}" if isinstance(target, int) else f"stream {target}"
            raise SourceError(f"{what} could not be opened")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._lock = threading.Lock()

    def frames(self) -> Iterator[Frame]:
        index = 0
        try:
            while True:
                ok, image = self._capture.read()
                if not ok:
                    if index == 0:
                        raise SourceError(f"{self.description} opened but gave no frame")
                    return
                yield Frame(index, image=image)
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            self._capture.release()


class Realtime(Source):
    """A file played at its native rate, like a camera: frames not taken in time are skipped by the client."""

    live = True

    def __init__(self, inner: Source, fps: float | None = None) -> None:
        rate = fps or inner.fps
        if not rate:
            raise SourceError(f"{inner.description}: its frame rate is unknown; give one with --fps")
        self.inner = inner
        self.fps = rate
        self.length = inner.length
        self.description = f"{inner.description} at {rate:g} fps"

    def frames(self) -> Iterator[Frame]:
        started: float | None = None
        for frame in self.inner.frames():
            if started is None:
                started = time.perf_counter()  # the clock starts with the first frame, not before its decoding
            delay = started + frame.index / self.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            frame.captured_at = time.time()
            yield frame

    def close(self) -> None:
        self.inner.close()


def open_source(spec: str, *, passthrough: bool = True) -> Source:
    """The source named on the command line: a camera index, a stream URL, a folder, a glob, an image or a video."""
    if spec.isdigit():
        return Capture(int(spec))
    if spec.lower().startswith(STREAM_SCHEMES):
        return Capture(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return ImageFiles(files, f"folder {path}")
    if any(char in spec for char in "*?[") and not path.exists():
        files = sorted(Path(p) for p in globbing.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        return ImageFiles(files, f"glob {spec}")
    if not path.exists():
        raise SourceError(f"{spec}: no such file, folder, camera index or stream URL")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFiles([path], str(path))
    return VideoFile(path, passthrough=passthrough)
