"""Fault-injection plugin for tests: a pipeline of known cost, one that fails, one that hangs.

Loaded into a real server through FORGESYTE_STREAM_PLUGINS=tests.support.fault_plugins:FaultPlugin.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from application.ports import Availability, ToolContext

SECRET = "SECRET-/etc/forgesyte/credentials.key-Traceback"


def _sleep(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """Costs `ms` milliseconds of wall time and nothing else (time.sleep releases the GIL)."""
    started = time.perf_counter()
    time.sleep(float(inputs.get("ms", 50)) / 1000.0)
    return {"slept_ms": (time.perf_counter() - started) * 1000.0, "frame_index": context.frame_index}


def _fail(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    every = int(inputs.get("every", 1))
    if context.frame_index % every == 0:
        raise RuntimeError(f"injected failure at frame {context.frame_index}: {SECRET}")
    return {"ok": True}


def _count(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """Counts frames in per-stream state, so tests can see that sessions never share it."""
    state = context.state()
    state["count"] = state.get("count", 0) + 1
    return {"count": state["count"], "frame_index": context.frame_index}


def _decode(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    image = context.image()
    return {"shape": list(image.shape)}


def _bytes(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    return {"leak": context.image_bytes}


def _pad(inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
    """A reply of `kb` KiB, so that a client that stops reading fills its socket buffers in a few frames."""
    return {"pad": "x" * (int(inputs.get("kb", 256)) * 1024), "frame_index": context.frame_index}


class FaultPlugin:
    plugin_id = "fault"

    def __init__(self) -> None:
        self._tools = {
            "sleep": _sleep,
            "fail": _fail,
            "count": _count,
            "decode": _decode,
            "bytes": _bytes,
            "pad": _pad,
        }
        self.release = threading.Event()

    def tools(self) -> Mapping[str, Any]:
        return self._tools

    def availability(self) -> Availability:
        return Availability(True)


class UnavailablePlugin:
    plugin_id = "offline"

    def tools(self) -> Mapping[str, Any]:
        return {"noop": lambda inputs, context: {}}

    def availability(self) -> Availability:
        return Availability(False, "the offline plugin is never available")
