"""The server-side half of the contract suite: tools that drive a server into each declared outcome.

A server under contract test loads it next to its own plugins and serves the
pipelines in contracts/pipelines/:

    FORGESYTE_STREAM_PIPELINES_DIR=contracts/pipelines \
    FORGESYTE_STREAM_PLUGINS=contracts.fault_plugin:ContractFaultPlugin \
    PYTHONPATH=. forgesyte-stream serve

A result, a drop, a slow-down warning, a pipeline_failure and an internal_error
cannot be provoked from the wire alone against arbitrary pipelines: they need a
pipeline of known cost, one that fails, and one that breaks the server's own
handling of a frame. These are those pipelines' tools, with a stand-in
detector whose one object moves predictably, for the tracked results.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from application.ports import Availability, ToolContext

# Text that must never reach a client: the crash and failure tools put it in their exceptions.
SECRET = "contract-secret-/etc/forgesyte/model.key"


def _sleep(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """Costs `ms` of wall time (time.sleep releases the GIL, so the event loop keeps reading frames)."""
    started = time.perf_counter()
    time.sleep(float(inputs.get("ms", 100)) / 1000.0)
    return {"slept_ms": (time.perf_counter() - started) * 1000.0, "frame_index": context.frame_index}


def _fail(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    if context.frame_index % int(inputs.get("every", 1)) == 0:
        raise RuntimeError(f"injected failure at frame {context.frame_index}: {SECRET}")
    return {"ok": True}


def _decode(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    image = context.image()
    return {"shape": [int(size) for size in image.shape]}


class _UnreadableOutput(Mapping[str, Any]):
    """A tool output that passes the engine's "is it a mapping" check and then raises when read.

    The engine wraps what a tool raises as pipeline_failure; an error while it
    reads a result is outside every translation, which is what internal_error
    exists for. This is the one way to reach that message from outside.
    """

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError(f"unreadable tool output: {SECRET}")

    def __iter__(self) -> Iterator[str]:
        return iter(("value",))

    def __len__(self) -> int:
        return 1


def _crash(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    return _UnreadableOutput()


def _count(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """Counts frames in per-stream state, so tests can see that sessions never share it."""
    state = context.state()
    state["count"] = state.get("count", 0) + 1
    return {"count": state["count"], "frame_index": context.frame_index}


def _bytes(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """Returns raw bytes, which JSON cannot carry: the engine must refuse the output."""
    return {"leak": context.image_bytes}


def _pad(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """A reply of `kb` KiB, so that a client that stops reading fills its socket buffers in a few frames."""
    return {"pad": "x" * (int(inputs.get("kb", 256)) * 1024), "frame_index": context.frame_index}


def _moving_box(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """One 20 x 20 detection that moves `step` pixels to the right each frame: what the tracked role tracks and counts.

    Tracking needs an object that moves predictably from frame to frame, which
    random test frames do not hold; this stands in for the detector.
    """
    x = float(inputs.get("step", 6)) * context.frame_index + 10.0
    box = {"x1": x, "y1": 14.0, "x2": x + 20.0, "y2": 34.0}
    return {"objects": [{"label": "box", "confidence": 0.9, "box": box}]}


class ContractFaultPlugin:
    plugin_id = "contract"

    def tools(self) -> Mapping[str, Any]:
        return {"sleep": _sleep, "fail": _fail, "decode": _decode, "crash": _crash, "moving_box": _moving_box}

    def availability(self) -> Availability:
        return Availability(True)


class FaultPlugin:
    """The project's own tests and benchmark use these tools too (tests/pipelines, bench/): one fault kit for all."""

    plugin_id = "fault"

    def tools(self) -> Mapping[str, Any]:
        return {"sleep": _sleep, "fail": _fail, "count": _count, "decode": _decode, "bytes": _bytes, "pad": _pad}

    def availability(self) -> Availability:
        return Availability(True)


class UnavailablePlugin:
    """A plugin that is never available, for the invalid_pipeline (409) paths."""

    plugin_id = "offline"

    def tools(self) -> Mapping[str, Any]:
        return {"noop": lambda inputs, context: {}}

    def availability(self) -> Availability:
        return Availability(False, "the offline plugin is never available")
