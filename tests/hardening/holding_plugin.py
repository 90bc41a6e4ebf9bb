"""A plugin whose tool decodes the frame and holds it a while, counting how many decoded frames are held at once.

Loaded into a real server (FORGESYTE_STREAM_PLUGINS=tests.hardening.holding_plugin:HoldingPlugin) to watch the
decode budget from outside: with room for N frames, no more than N tools ever hold one together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from application.ports import Availability, ToolContext


class HoldingPlugin:
    plugin_id = "holding"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holding = 0

    def tools(self) -> Mapping[str, Any]:
        return {"hold": self.hold}

    def availability(self) -> Availability:
        return Availability(True)

    def hold(self, inputs: Mapping[str, Any], context: ToolContext) -> Mapping[str, Any]:
        image = context.image()
        with self._lock:
            self._holding += 1
            holding = self._holding
        try:
            time.sleep(float(inputs.get("ms", 300)) / 1000.0)
        finally:
            with self._lock:
                self._holding -= 1
        return {"shape": list(image.shape), "held_together": holding}
