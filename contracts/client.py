"""A small typed client for `/ws/video/stream`, built on the models generated from asyncapi.yaml.

    async with await StreamClient.connect("ws://host:8000/ws/video/stream?pipeline_id=faces") as stream:
        index = await stream.send_frame(jpeg_bytes)
        async for reply in stream:          # FrameResultPayload, FrameDroppedPayload,
            ...                             # PipelineFailureErrorPayload or SlowDownWarningPayload

Replies are what the server sends per frame, plus the slow-down advice; they
are yielded, pipeline_failure included, because the stream stays open after
it. An error that ends the session is raised instead, as the exception of its
code (InvalidFrame, ServerBusy, ...), once the close that follows it has
arrived, so the exception carries the close code too. A normal close ends the
iteration.

The client is also the contract suite's probe: every message is checked
against the document's JSON schema before it is parsed into its generated
model, and what the server does against the document's rules (the declared
close code after an error, one reply per frame, nothing after a closing error)
raises ContractViolation. An optional observer sees all traffic; the suite
uses one to prove it reached every declared message.

The same client is the project's test kit (tests/ and contracts/ share it): next
to the typed view above it offers a dict view, `recv` / `recv_until_closed` /
`recv_replies`, for tests that assert on the wire shape itself. The dict view
runs the same checks (schema, one reply per frame, nothing after a closing
error, the declared close code) and records what arrived in `received`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, RootModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from contracts.asyncapi_doc import Contract, ContractError, UndeclaredMessageError, load_contract
from contracts.client_errors import (
    ERRORS_BY_CODE,
    ClosedWithoutError,
    ContractViolation,
    FrameTooLarge,
    IdleTimeout,
    InternalServerError,
    InvalidFrame,
    InvalidMessage,
    InvalidPipeline,
    PipelineFailure,
    ServerBusy,
    ServerError,
    ShuttingDown,
    StreamClosed,
    Unauthorized,
)
from contracts.generated import messages as models

__all__ = [
    "ClosedWithoutError",
    "ContractViolation",
    "FrameTooLarge",
    "IdleTimeout",
    "InternalServerError",
    "InvalidFrame",
    "InvalidMessage",
    "InvalidPipeline",
    "PipelineFailure",
    "Received",
    "Reply",
    "ServerBusy",
    "ServerError",
    "ShuttingDown",
    "StreamClient",
    "StreamClosed",
    "TrafficObserver",
    "Unauthorized",
    "error_classes",
    "kind_of",
    "message_models",
    "parse_message",
    "raise_for_failure",
]

Reply = models.FrameResultPayload | models.FrameDroppedPayload | models.PipelineFailureErrorPayload | models.SlowDownWarningPayload


@dataclass
class Received:
    """What the dict view read, in arrival order, and the close that ended it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    def replies(self) -> dict[int, list[dict[str, Any]]]:
        by_index: dict[int, list[dict[str, Any]]] = {}
        for message in self.messages:
            if "frame_index" in message:
                by_index.setdefault(message["frame_index"], []).append(message)
        return by_index

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if kind_of(m) == kind]


def kind_of(message: Mapping[str, Any]) -> str:
    """result, dropped, warning or error: the kind of a server message already checked against the contract."""
    if "result" in message:
        return "result"
    if message.get("dropped") is True:
        return "dropped"
    if "warning" in message:
        return "warning"
    return "error"


class TrafficObserver(Protocol):
    def received(self, name: str, message: Mapping[str, Any]) -> None: ...

    def undeclared(self, raw: str | bytes, reason: str) -> None: ...

    def closed(self, close_code: int | None, error_code: str | None) -> None: ...


def error_classes() -> dict[str, type[ServerError]]:
    """Error code -> exception class; the contract suite checks it covers exactly the declared codes."""
    return dict(ERRORS_BY_CODE)


def message_models(contract: Contract) -> dict[str, type[BaseModel]]:
    """Declared server message name -> its generated model; ContractError when one was not generated.

    The generator names a message's model after the message: a root model
    wrapping the payload model when the payload is a $ref, the payload model
    itself when it is written inline. `parse_message` reads either.
    """
    found: dict[str, type[BaseModel]] = {}
    for name in contract.server_messages():
        model = getattr(models, name, None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ContractError(f"no generated model for the declared message {name!r}: run `make models`")
        found[name] = model
    return found


def parse_message(model: type[BaseModel], payload: Any) -> BaseModel:
    """The payload as its generated model (unwrapped from the message's root model if it has one)."""
    parsed = model.model_validate(payload)
    return parsed.root if isinstance(parsed, RootModel) else parsed


def raise_for_failure(reply: Reply) -> Reply:
    """Raise PipelineFailure for a pipeline_failure reply, return any other reply unchanged."""
    if isinstance(reply, models.PipelineFailureErrorPayload):
        raise PipelineFailure(reply)
    return reply


_DEFAULT_CONTRACT: Contract | None = None


def _default_contract() -> Contract:
    global _DEFAULT_CONTRACT
    if _DEFAULT_CONTRACT is None:
        _DEFAULT_CONTRACT = load_contract()
    return _DEFAULT_CONTRACT


class StreamClient:
    """One stream session; see the module docstring. Use `connect`, not the constructor."""

    def __init__(
        self,
        connection: ClientConnection,
        *,
        contract: Contract | None = None,
        observer: TrafficObserver | None = None,
        reply_timeout_s: float = 15.0,
    ) -> None:
        self.connection = connection
        self.contract = contract or _default_contract()
        self.observer = observer
        self.reply_timeout_s = reply_timeout_s
        self._models = message_models(self.contract)
        self._closing_codes = {code: close for code, close in self.contract.error_codes().items() if close is not None}
        self.frames_sent = 0
        self.replies: dict[int, Reply | BaseModel] = {}
        self.warnings: list[models.SlowDownWarningPayload] = []
        self.error: ServerError | None = None
        # The code of an error that ends the session, from its arrival on (the close follows).
        self.ending: str | None = None
        self._finished = False
        self.received = Received()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        contract: Contract | None = None,
        observer: TrafficObserver | None = None,
        reply_timeout_s: float = 15.0,
        open_timeout_s: float = 10.0,
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] | None = None,
    ) -> StreamClient:
        """Open a stream; `headers` (Authorization) and `subprotocols` (forgesyte.bearer.<key>) carry an API key."""
        # proxy=None: a loopback server must not be reached through an HTTP proxy from the environment.
        connection = await connect(
            url,
            compression=None,
            max_size=None,
            open_timeout=open_timeout_s,
            close_timeout=5,
            proxy=None,
            additional_headers=headers,
            subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
        )
        return cls(connection, contract=contract, observer=observer, reply_timeout_s=reply_timeout_s)

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Sending ---------------------------------------------------------------------

    async def send_frame(self, jpeg: bytes) -> int:
        """Send one frame; returns the frame_index its reply will carry."""
        return await self.send_raw(bytes(jpeg))  # type: ignore[return-value]

    async def send_raw(self, data: bytes | str) -> int | None:
        """Send any message, a text one too (which the server answers with invalid_message).

        Binary messages are numbered like frames, since the server numbers
        every binary message it reads; returns that number, None for text.
        Raises StreamClosed when the server has closed the connection already.
        """
        index = None if isinstance(data, str) else self.frames_sent
        if index is not None:
            # Counted before it goes out: the reply to a large frame can arrive while send() still waits.
            self.frames_sent += 1
        try:
            await self.connection.send(data)
        except ConnectionClosed:
            raise StreamClosed(self.connection.close_code) from None
        return index

    async def send_paced(self, data: bytes | Sequence[bytes], count: int, interval_s: float) -> None:
        """Send `count` frames on an absolute schedule, so the rate holds even when the loop is busy.

        `data` is one frame sent `count` times, or a clip whose i-th frame is sent i-th.
        """
        start = time.monotonic()
        for i in range(count):
            delay = start + i * interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send_raw(data if isinstance(data, bytes) else data[i])

    async def close(self, code: int = 1000) -> None:
        already = self._finished
        self._finished = True
        await self.connection.close(code)
        if not already and self.observer is not None:
            self.observer.closed(self.connection.close_code, None)

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    # Receiving ---------------------------------------------------------------------

    def __aiter__(self) -> StreamClient:
        return self

    async def __anext__(self) -> Reply:
        return await self._next_reply(self.reply_timeout_s)

    async def _next_reply(self, timeout_s: float) -> Reply:
        if self._finished:
            raise StopAsyncIteration
        try:
            raw = await asyncio.wait_for(self.connection.recv(), timeout_s)
        except ConnectionClosed:
            if self._finished:  # closed by this client meanwhile
                raise StopAsyncIteration from None
            self._finished = True
            code, reason = self.connection.close_code, self.connection.close_reason
            if self.observer is not None:
                self.observer.closed(code, None)
            if code == 1000:
                raise StopAsyncIteration from None
            raise ClosedWithoutError(code, reason) from None
        name, payload = self._parse(raw)
        model = parse_message(self._models[name], payload)
        error_code = getattr(model, "error", None)
        if isinstance(error_code, str) and error_code in self._closing_codes:
            raise await self._closing_error(name, error_code, model)
        self._track_reply(name, model)
        return model  # type: ignore[return-value]

    async def receive(self, timeout_s: float | None = None) -> Reply:
        """The next reply, like `async for`; StopAsyncIteration after a normal close.

        `timeout_s` replaces `reply_timeout_s` for this one wait, for a reply
        that only comes after a known server-side delay (the idle timeout).
        """
        return await self._next_reply(self.reply_timeout_s if timeout_s is None else timeout_s)

    # Receiving as dicts ------------------------------------------------------------

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next server message as the decoded JSON, checked like the typed view; recorded in `received`.

        Raises websockets' ConnectionClosed once the server has closed, after
        checking the close against the document (the declared code after a
        closing error).
        """
        try:
            raw = await asyncio.wait_for(self.connection.recv(), timeout)
        except ConnectionClosed:
            self._closed_under_dict_view()
            raise
        if self.ending is not None:
            raise ContractViolation(f"the server sent {raw!r} after {self.ending}, which must be its last message")
        name, payload = self._parse(raw)
        model = parse_message(self._models[name], payload)
        error_code = getattr(model, "error", None)
        if isinstance(error_code, str) and error_code in self._closing_codes:
            self.ending = error_code
        self._track_reply(name, model)
        self.received.messages.append(payload)
        return payload  # type: ignore[no-any-return]

    def _closed_under_dict_view(self) -> None:
        close_code, reason = self.connection.close_code, self.connection.close_reason
        self.received.close_code, self.received.close_reason = close_code, reason
        if self._finished:  # closed by this client: the code is not the server's choice
            return
        self._finished = True
        if self.observer is not None:
            self.observer.closed(close_code, self.ending)
        if self.ending is not None and close_code != self._closing_codes[self.ending]:
            raise ContractViolation(
                f"{self.ending} must be followed by close {self._closing_codes[self.ending]}, the server closed with {close_code}"
            )

    async def recv_until_closed(self, timeout: float = 15.0) -> Received:
        """Read every message until the server closes; fail if it does not close in time."""

        async def drain() -> None:
            try:
                while True:
                    await self.recv(timeout)
            except ConnectionClosed:
                return

        await asyncio.wait_for(drain(), timeout)
        return self.received

    async def recv_replies(self, indices: set[int], timeout: float = 20.0) -> Received:
        """Read until every frame index in `indices` has a reply."""

        async def drain() -> None:
            while not indices <= set(self.received.replies()):
                await self.recv(timeout)

        await asyncio.wait_for(drain(), timeout)
        return self.received

    def _parse(self, raw: str | bytes) -> tuple[str, Any]:
        if isinstance(raw, bytes):
            reason = f"a binary message ({len(raw)} bytes); every server message is JSON text"
            if self.observer is not None:
                self.observer.undeclared(raw, reason)
            raise ContractViolation(f"the server sent {reason}")
        try:
            payload = json.loads(raw)
            name = self.contract.validate_server_message(payload)
        except UndeclaredMessageError as undeclared:
            if self.observer is not None:
                self.observer.undeclared(raw, str(undeclared))
            raise
        except ValueError as error:
            if self.observer is not None:
                self.observer.undeclared(raw, f"not JSON: {error}")
            raise ContractViolation(f"the server sent text that is not JSON: {raw[:200]!r}") from None
        if self.observer is not None:
            self.observer.received(name, payload)
        return name, payload

    def _track_reply(self, name: str, model: BaseModel) -> None:
        if isinstance(model, models.SlowDownWarningPayload):
            self.warnings.append(model)
            return
        index = getattr(model, "frame_index", None)
        if index is None:
            return
        if index >= self.frames_sent:
            raise ContractViolation(f"{name} answers frame {index}, but only {self.frames_sent} frames were sent")
        if index in self.replies:
            raise ContractViolation(
                f"frame {index} got a second reply: {self.replies[index].model_dump(mode='json')} and then {model.model_dump(mode='json')}"
            )
        self.replies[index] = model

    async def _closing_error(self, name: str, code: str, model: BaseModel) -> ServerError:
        """After an error that ends the session: nothing else may arrive, then the declared close."""
        self.ending = code
        self._track_reply(name, model)
        try:
            extra = await asyncio.wait_for(self.connection.recv(), self.reply_timeout_s)
        except ConnectionClosed:
            extra = None
        except TimeoutError:
            raise ContractViolation(f"the server sent {code} but did not close within {self.reply_timeout_s} s") from None
        self._finished = True
        close_code, reason = self.connection.close_code, self.connection.close_reason
        if self.observer is not None:
            self.observer.closed(close_code, code)
        if extra is not None:
            raise ContractViolation(f"the server sent {extra!r} after {code}, which must be its last message")
        declared = self._closing_codes[code]
        if close_code != declared:
            raise ContractViolation(f"{code} must be followed by close {declared}, the server closed with {close_code}")
        self.error = ERRORS_BY_CODE[code](model, close_code, reason)
        return self.error
