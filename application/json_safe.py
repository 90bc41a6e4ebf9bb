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
    """A copy of `value` made of dict, list, str, int, float, bool and None only.

    The error names where in the result the offending value sits; that path is
    only built when there is an error, since this runs on every frame.
    """
    try:
        return _convert(value)
    except _Unsafe as unsafe:
        raise JsonSafetyError(f"{path}{''.join(reversed(unsafe.where))} {unsafe.problem}") from None


class _Unsafe(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where: list[str] = []


_FLAT = frozenset((str, int, bool, type(None)))  # exactly these types pass unchanged (floats need a finiteness check)


def _convert(value: Any) -> Any:
    kind = type(value)
    if kind in _FLAT:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _Unsafe(f"is {value!r}, which JSON cannot carry")
        return value
    if kind is dict or isinstance(value, Mapping):
        converted: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                key = str(key)
            if type(item) in _FLAT:  # the common leaf, without a call
                converted[key] = item
                continue
            try:
                converted[key] = _convert(item)
            except _Unsafe as unsafe:
                unsafe.where.append(f".{key}")
                raise
        return converted
    if kind is list or isinstance(value, (list, tuple)):
        items: list[Any] = []
        for i, item in enumerate(value):
            try:
                items.append(_convert(item))
            except _Unsafe as unsafe:
                unsafe.where.append(f"[{i}]")
                raise
        return items
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise _Unsafe(f"holds {len(value)} raw bytes; results carry no binary data")
    if isinstance(value, str):  # a subclass such as a str-valued enum member: its plain string
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _convert(float(value))
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _convert(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return _convert(item())
    raise _Unsafe(f"is a {type(value).__name__}, which is not JSON-serialisable")
