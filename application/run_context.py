"""One pipeline run's view of its frame and of its stream's tool state, as the tools see them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from application.ports import DecodeBudget, DecodedPicture, ImageDecoder
from application.stream_state import StreamStateStore
from domain import JpegInfo

_UNDECODED = object()


class FrameContext:
    """Per-run view of the frame that tools share; the image is decoded lazily, once, at the pipeline's reduction."""

    __slots__ = (
        "_budget",
        "_charged",
        "_decoder",
        "_image",
        "_info",
        "_on_decoded",
        "_picture",
        "_reduction",
        "_state",
        "frame_index",
        "image_bytes",
        "pipeline_id",
    )

    def __init__(
        self,
        frame_index: int,
        image_bytes: bytes,
        decoder: ImageDecoder,
        state: dict[str, Any],
        info: JpegInfo,
        reduction: int = 1,
        budget: DecodeBudget | None = None,
        *,
        pipeline_id: str = "",
        on_decoded: Callable[[str, float], None] | None = None,
        picture: DecodedPicture | None = None,
    ) -> None:
        """`on_decoded(pipeline_id, duration_ms)`: told of each decode (PipelineObserver.image_decoded, where offered).

        `picture`: a frame the transport decoded; image() converts it instead of decoding `image_bytes`.
        """
        self._picture = picture
        self.frame_index = frame_index
        self._on_decoded = on_decoded
        self.image_bytes = image_bytes
        self.pipeline_id = pipeline_id
        self._decoder = decoder
        self._image: Any = _UNDECODED
        self._state = state
        self._info = info
        self._reduction = reduction
        self._budget = budget
        self._charged = 0

    @property
    def frame_size(self) -> tuple[int, int]:
        return self._info.width, self._info.height

    @property
    def jpeg_info(self) -> JpegInfo:
        return self._info

    @property
    def image_reduction(self) -> int:
        return self._reduction

    def image(self) -> Any:
        if self._image is _UNDECODED:
            picture = self._picture
            if self._budget is not None and not self._charged:
                needed = (
                    self._decoder.memory_needed(self._info, self._reduction)
                    if picture is None
                    else _converted_bytes(self._info, self._reduction)
                )
                self._budget.acquire(needed)
                self._charged = needed
            on_decoded = self._on_decoded
            started = time.perf_counter() if on_decoded is not None else 0.0
            if picture is None:
                self._image = self._decoder.decode(self.image_bytes, self._reduction)
            else:
                self._image = picture.image(self._reduction)
            if on_decoded is not None:
                on_decoded(self.pipeline_id, (time.perf_counter() - started) * 1000.0)
        return self._image

    def state(self) -> dict[str, Any]:
        return self._state

    def widen(self, reduction: int) -> None:
        """Decode at `reduction` from now on, when it is finer than the current one (a gated node needs more than its gate)."""
        if reduction < self._reduction:
            self.close()
            self._reduction = reduction

    def close(self) -> None:
        """Drop the decoded image and give its bytes back to the budget."""
        self._image = _UNDECODED
        if self._budget is not None and self._charged:
            charged, self._charged = self._charged, 0
            self._budget.release(charged)


def _converted_bytes(info: JpegInfo, reduction: int) -> int:
    """What converting a decoded picture holds: its BGR image at the reduction (the transport holds the decoded planes)."""
    width, height = info.reduced_size(reduction)
    return width * height * 3


class RunStates:
    """One run's access to its stream's tool state, leased from the store only once a tool asks for it.

    Most tools keep no state: their runs then take no lock and touch no
    shared dictionary. The lease, once taken, lasts until the run ends.
    """

    __slots__ = ("_owned", "_states", "_store", "_stream_id")

    def __init__(self, store: StreamStateStore, stream_id: str | None) -> None:
        self._store = store
        self._stream_id = stream_id
        self._states: dict[str, dict[str, Any]] | None = None
        self._owned = False

    def node(self, node_id: str) -> dict[str, Any]:
        states = self._states
        if states is None:
            states, self._owned = self._store.acquire(self._stream_id)
            self._states = states
        node_state = states.get(node_id)
        if node_state is None:
            node_state = states[node_id] = {}
        return node_state

    def end(self) -> None:
        if self._states is not None:
            self._store.give_back(self._stream_id, self._states, self._owned)


class NodeContext:
    """A FrameContext narrowed to one node's slice of the stream state."""

    __slots__ = ("_frame", "_run", "node_id")

    def __init__(self, frame: FrameContext, run: RunStates, node_id: str = "") -> None:
        self._frame = frame
        self._run = run
        self.node_id = node_id

    @property
    def frame_index(self) -> int:
        return self._frame.frame_index

    @property
    def pipeline_id(self) -> str:
        return self._frame.pipeline_id

    @property
    def image_bytes(self) -> bytes:
        return self._frame.image_bytes

    @property
    def frame_size(self) -> tuple[int, int]:
        return self._frame.frame_size

    @property
    def image_reduction(self) -> int:
        return self._frame.image_reduction

    @property
    def jpeg_info(self) -> JpegInfo:
        return self._frame._info

    def image(self) -> Any:
        return self._frame.image()

    def state(self) -> dict[str, Any]:
        return self._run.node(self.node_id)
