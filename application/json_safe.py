"""Turns tool output into plain JSON values before it can reach a client.

Tools hand back numpy scalars and arrays as a matter of course; those are
converted by duck typing (so this layer needs no numpy). Bytes are refused: raw
image data must never be echoed to a client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class JsonSafetyError(TypeError):
    pass


def to_json_safe(value: Any, path: str = "result") -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JsonSafetyError(f"{path} is {value!r}, which JSON cannot carry")
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise JsonSafetyError(f"{path} holds {len(value)} raw bytes; results carry no binary data")
    if isinstance(value, Mapping):
        return {str(key): to_json_safe(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item, f"{path}[{i}]") for i, item in enumerate(value)]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return to_json_safe(tolist(), path)
    item = getattr(value, "item", None)
    if callable(item):
        return to_json_safe(item(), path)
    raise JsonSafetyError(f"{path} is a {type(value).__name__}, which is not JSON-serialisable")
