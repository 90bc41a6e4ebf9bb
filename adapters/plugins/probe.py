"""The probe plugin: answers from the JPEG header alone.

It is the health-check and transport-benchmark pipeline, so it must measure the
server's plumbing, not a decoder: it never calls context.image().
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from application.ports import Availability, Tool, ToolContext

_AVAILABLE = Availability(True)  # asked on every frame, and never changes


def frame_info(inputs: Mapping[str, Any], context: ToolContext) -> dict[str, int]:
    info = context.jpeg_info  # the engine has read the header once already
    return {
        "width": info.width,
        "height": info.height,
        "bytes": len(context.image_bytes),
        "components": info.components,
    }


# Header-only and constant-time: cheaper to run on the event loop than to hand to a thread.
frame_info.runs_inline = True  # type: ignore[attr-defined]
# A new dict of ints on every call: nothing for the engine's JSON-safety copy to do.
frame_info.returns_json = True  # type: ignore[attr-defined]


class ProbePlugin:
    plugin_id = "probe"

    def tools(self) -> Mapping[str, Tool]:
        return {"frame_info": frame_info}

    def availability(self) -> Availability:
        return _AVAILABLE
