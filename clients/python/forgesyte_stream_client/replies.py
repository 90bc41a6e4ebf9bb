"""Typed server messages, validated by the models generated from asyncapi.yaml.

Every reply keeps the message as received (`raw`), so a custom pipeline's
keys are never lost; the typed views (detections, OCR lines, QR payloads,
frame info) read the shapes the shipped pipelines return.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from forgesyte_stream_client.errors import ProtocolError
from forgesyte_stream_client.generated.messages import (
    Detection,
    FrameDroppedPayload,
    FrameResultPayload,
    PipelineFailureErrorPayload,
    SlowDownWarningPayload,
)

__all__ = [
    "Detection",
    "Dropped",
    "FrameFailed",
    "FrameInfo",
    "ProtocolError",
    "Result",
    "ServerMessage",
    "SlowDown",
    "decode_message",
    "parse_message",
]

# The deepest nesting of objects and arrays a reply may have. The contract's shapes are a few levels
# deep; a deeper reply is refused here, before anything that walks it (detections, --jsonl) could
# run out of stack.
MAX_REPLY_DEPTH = 64


class FrameInfo(BaseModel):
    """What the `probe` pipeline reads from the JPEG header."""

    model_config = ConfigDict(extra="allow")
    width: int
    height: int
    bytes: int
    components: int | None = None


def _detections_in(value: Any) -> Iterator[Mapping[str, Any]]:
    """Every detection-shaped dict in a result, at any depth (faces lists, motion's regions, ...)."""
    if isinstance(value, Mapping):
        if "box" in value and "label" in value and "confidence" in value:
            yield value
            return
        for item in value.values():
            yield from _detections_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _detections_in(item)


@dataclass(frozen=True)
class Result:
    """The pipeline's output for frame `frame_index`."""

    frame_index: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def result(self) -> dict[str, Any]:
        return self.raw["result"]

    @cached_property
    def payload(self) -> FrameResultPayload:
        return FrameResultPayload.model_validate(self.raw)

    @cached_property
    def detections(self) -> list[Detection]:
        """Every detection in the result (faces, people, objects, motion regions, text lines, QR codes)."""
        return [Detection.model_validate(found) for found in _detections_in(self.result)]

    @property
    def text_lines(self) -> list[Detection]:
        """OCR lines: detections that carry `text`, QR codes excepted."""
        return [d for d in self.detections if d.text is not None and d.label != "qr"]

    @property
    def qr_payloads(self) -> list[str]:
        return [d.text for d in self.detections if d.label == "qr" and d.text is not None]

    @cached_property
    def frame_info(self) -> FrameInfo | None:
        """The frame's size as the `probe` pipeline reports it (its result is the info itself), else None."""
        info = self.result.get("frame_info", self.result)
        if isinstance(info, Mapping) and all(isinstance(info.get(key), int) for key in ("width", "height", "bytes")):
            return FrameInfo.model_validate(info)
        return None


@dataclass(frozen=True)
class Dropped:
    """Frame `frame_index` was answered without running; `cause` is lagging, buffer_full, closing or shutdown."""

    frame_index: int
    cause: str
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class FrameFailed:
    """The pipeline failed or timed out on frame `frame_index` (pipeline_failure); the session goes on."""

    frame_index: int
    detail: str
    raw: dict[str, Any] = field(repr=False)
    code: str = "pipeline_failure"


@dataclass(frozen=True)
class SlowDown:
    """The server's advice to send at most `suggested_fps` frames per second (None: nothing processed yet)."""

    suggested_fps: float | None
    drop_rate: float
    processing_ms: float | None
    interval_ms: float | None
    raw: dict[str, Any] = field(repr=False)


ServerMessage = Result | Dropped | FrameFailed | SlowDown


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for every message: json.loads with an argument would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` deep: a walk level by level, without recursion."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


def decode_message(data: str | bytes) -> Any:
    """One server message as JSON, or ProtocolError: the server sends JSON text and nothing else.

    The depth walk runs only when the text holds more brackets than the limit
    (a result of some thirty detections or more), so a usual reply costs two
    counts of its characters.
    """
    if not isinstance(data, str):
        raise ProtocolError(f"the server sent a binary message of {len(data)} bytes; replies are JSON text")
    try:
        message = _DECODER.decode(data)
    except RecursionError:
        raise ProtocolError(f"the server sent JSON nested too deeply to read ({len(data)} chars)") from None
    except ValueError as bad:
        raise ProtocolError(f"the server sent a message that is not JSON ({bad}; {len(data)} chars)") from None
    if isinstance(message, (dict, list)) and data.count("{") + data.count("[") > MAX_REPLY_DEPTH and _deeper_than(message, MAX_REPLY_DEPTH):
        raise ProtocolError(f"the server sent JSON nested more than {MAX_REPLY_DEPTH} levels deep ({len(data)} chars)")
    return message


# The keys of a result that the contract gives a shape (analytics counts); a result holding one goes through the model.
_TYPED_RESULT_KEYS = frozenset(FrameResultPayload.model_fields["result"].annotation.model_fields)  # type: ignore[union-attr]


def parse_message(message: Any) -> ServerMessage | dict[str, Any]:
    """The typed reply for one decoded server message; a session-ending error comes back as its dict.

    Messages are checked against the generated models, so a server that breaks
    the contract is reported (ProtocolError) instead of half-read.
    """
    if not isinstance(message, dict):
        raise ProtocolError("the server sent a message that is not a JSON object", message)
    result = message.get("result")
    if result is not None:
        index = message.get("frame_index")
        if type(index) is int and index >= 0 and type(result) is dict and not _TYPED_RESULT_KEYS & result.keys():
            # The model would accept exactly this (any object is a result when it holds none of the keys the contract
            # types), so the reply is built without it and `payload` validates on first use: a stream gets one of
            # these per frame, and the model costs several microseconds each, the check here a fraction of one.
            return Result(index, message)
    try:
        if "result" in message:
            payload = FrameResultPayload.model_validate(message)
            reply = Result(payload.frame_index, message)
            reply.__dict__["payload"] = payload
            return reply
        if "dropped" in message:
            dropped = FrameDroppedPayload.model_validate(message)
            return Dropped(dropped.frame_index, dropped.cause.value, message)
        if "warning" in message:
            warning = SlowDownWarningPayload.model_validate(message)
            return SlowDown(warning.suggested_fps, warning.drop_rate, warning.processing_ms, warning.interval_ms, message)
        if message.get("error") == "pipeline_failure":
            failure = PipelineFailureErrorPayload.model_validate(message)
            return FrameFailed(failure.frame_index, failure.detail, message)
    except ValidationError as invalid:
        raise ProtocolError(f"the server sent a message its contract does not allow ({invalid.error_count()} errors)", message) from invalid
    if isinstance(message.get("error"), str):
        return message
    raise ProtocolError("the server sent a message of no declared kind", message)
