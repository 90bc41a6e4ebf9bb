"""asyncapi.yaml as a library: the declared messages, codes and a validator for server messages.

The document is the contract; this module only reads it. Every question the
tests ask (which messages may the server send, which close code follows an
error, which drop causes exist) is answered from the document, so a change to
the contract shows up here without a second list to keep in step.

    contract = load_contract()
    contract.validate_server_message({"frame_index": 3, "dropped": True, "cause": "lagging"})
    # -> "FrameDropped"

Only internal references (`#/...`) are supported: the document is one file.
Payload schemas use the AsyncAPI default schema format, a superset of JSON
Schema draft-07, and are checked with jsonschema's Draft7Validator.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError, best_match

__all__ = [
    "DEFAULT_PATH",
    "Contract",
    "ContractError",
    "DeclaredMessage",
    "UndeclaredMessageError",
    "load_contract",
]

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "asyncapi.yaml"

_MAX_ERRORS_PER_CANDIDATE = 3


class ContractError(ValueError):
    """The document itself is unusable: a dangling or external $ref, a duplicate name, a bad schema."""


class UndeclaredMessageError(AssertionError):
    """A server message that matches no declared message, or more than one.

    `message` is the offending message, `errors` maps each candidate message
    name to why the message does not satisfy its schema, and `matches` names
    the candidates it does satisfy (empty, or two or more when ambiguous).
    It subclasses AssertionError so that pytest reports it as a failed check.
    """

    def __init__(self, message: Any, errors: Mapping[str, str], matches: tuple[str, ...] = ()) -> None:
        self.message = message
        self.errors = dict(errors)
        self.matches = matches
        shown = _shown(message)
        if matches:
            text = f"server message {shown} is ambiguous: it satisfies {len(matches)} declared messages ({', '.join(matches)})"
        else:
            lines = [f"server message {shown} matches no message that asyncapi.yaml declares:"]
            lines.extend(f"  - {name}: {summary}" for name, summary in self.errors.items())
            text = "\n".join(lines)
        super().__init__(text)


def _shown(message: Any) -> str:
    try:
        text = json.dumps(message, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(message)
    return text if len(text) <= 300 else text[:297] + "..."


# $ref resolution --------------------------------------------------------------


def _pointer_tokens(ref: str) -> list[str]:
    if not ref.startswith("#"):
        raise ContractError(f"$ref {ref!r} is not internal; only '#/...' references are supported")
    fragment = unquote(ref[1:])
    if fragment in ("", "/"):
        return []
    if not fragment.startswith("/"):
        raise ContractError(f"$ref {ref!r} is not a JSON pointer")
    return [token.replace("~1", "/").replace("~0", "~") for token in fragment[1:].split("/")]


def _lookup(document: Any, ref: str) -> Any:
    node = document
    for token in _pointer_tokens(ref):
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise ContractError(f"$ref {ref!r} does not resolve: no {token!r}")
    return node


def _follow(document: Any, node: Any, seen: tuple[str, ...] = ()) -> tuple[Any, str | None]:
    """Follow a chain of $ref objects to the first node that is not one; also return its pointer."""
    pointer = None
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if ref in seen:
            raise ContractError(f"$ref cycle: {' -> '.join((*seen, ref))}")
        seen = (*seen, ref)
        pointer = ref
        node = _lookup(document, ref)
    return node, pointer


def _resolve(document: Any, node: Any, stack: tuple[str, ...] = ()) -> Any:
    """A deep copy of `node` with every internal $ref replaced by its (resolved) target.

    A $ref object is replaced whole, as JSON Schema draft-07 specifies: keys
    beside "$ref" are ignored.
    """
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in stack:
                raise ContractError(f"$ref cycle: {' -> '.join((*stack, ref))}")
            return _resolve(document, _lookup(document, ref), (*stack, ref))
        return {key: _resolve(document, value, stack) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(document, item, stack) for item in node]
    return copy.deepcopy(node)


# The contract -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeclaredMessage:
    """One message of the document, resolved: its name, the whole message object and its payload schema."""

    name: str
    message: dict[str, Any]
    payload: Any
    validator: Draft7Validator = field(repr=False, compare=False)

    def errors(self, instance: Any) -> list[ValidationError]:
        return sorted(self.validator.iter_errors(instance), key=lambda error: list(error.absolute_path))


def _summary(errors: list[ValidationError]) -> str:
    if not errors:
        return "valid"
    first = best_match(errors)
    ordered = [first, *(error for error in errors if error is not first)]
    parts = []
    for error in ordered[:_MAX_ERRORS_PER_CANDIDATE]:
        where = "/".join(str(part) for part in error.absolute_path)
        parts.append(f"{'/' + where if where else '(top level)'}: {error.message}")
    if len(ordered) > _MAX_ERRORS_PER_CANDIDATE:
        parts.append(f"and {len(ordered) - _MAX_ERRORS_PER_CANDIDATE} more")
    return "; ".join(parts)


class Contract:
    """The loaded document with its messages resolved; answers come from the document alone."""

    def __init__(self, document: Mapping[str, Any], path: Path | None = None) -> None:
        if not isinstance(document, Mapping):
            raise ContractError("an AsyncAPI document is a mapping at its top level")
        version = str(document.get("asyncapi", ""))
        if not version.startswith("3."):
            raise ContractError(f"expected an AsyncAPI 3.x document, got asyncapi: {version or 'missing'}")
        self.path = path
        self.raw: dict[str, Any] = dict(document)
        self.document: dict[str, Any] = _resolve(self.raw, self.raw)
        self._server: dict[str, DeclaredMessage] = {}
        self._client: dict[str, DeclaredMessage] = {}
        self._replies: dict[str, None] = {}
        for operation_id, operation in (self.raw.get("operations") or {}).items():
            operation, _ = _follow(self.raw, operation)
            action = operation.get("action")
            if action not in ("send", "receive"):
                raise ContractError(f"operation {operation_id!r}: action must be send or receive, got {action!r}")
            own = self._declared(operation.get("messages") or [], f"operation {operation_id!r}")
            reply, _ = _follow(self.raw, operation.get("reply") or {})
            replies = self._declared(reply.get("messages") or [], f"reply of operation {operation_id!r}")
            if action == "send":
                self._add(self._server, own)
                self._add(self._server, replies)
            else:
                self._add(self._client, own)
                self._add(self._server, replies)
                self._replies.update(dict.fromkeys(declared.name for declared in replies))
        if not self._server:
            raise ContractError("the document declares no message that the server sends")
        self._error_codes = self._collect_error_codes()

    # Construction helpers -------------------------------------------------

    def _declared(self, refs: list[Any], where: str) -> list[DeclaredMessage]:
        declared = []
        for index, ref in enumerate(refs):
            message, pointer = _follow(self.raw, ref)
            if not isinstance(message, Mapping):
                raise ContractError(f"{where}: message {index} is not a message object")
            name = message.get("name") or (pointer.rsplit("/", 1)[-1] if pointer else None)
            if not name:
                raise ContractError(f"{where}: message {index} has no name")
            resolved = _resolve(self.raw, message)
            payload = resolved.get("payload", True)
            try:
                Draft7Validator.check_schema(payload)
            except Exception as exc:  # SchemaError, or anything a malformed schema provokes
                raise ContractError(f"message {name!r}: payload is not a valid JSON schema: {exc}") from exc
            declared.append(DeclaredMessage(name, resolved, payload, Draft7Validator(payload)))
        return declared

    @staticmethod
    def _add(into: dict[str, DeclaredMessage], messages: list[DeclaredMessage]) -> None:
        for declared in messages:
            known = into.get(declared.name)
            if known is not None and known.message != declared.message:
                raise ContractError(f"two different messages are both named {declared.name!r}")
            into[declared.name] = declared

    def _collect_error_codes(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name, declared in self._server.items():
            code = _const_property(declared.payload, "error")
            if code is None:
                continue
            if code in codes:
                raise ContractError(f"error code {code!r} is declared by more than one message")
            close = declared.message.get("x-close-code")
            if close is not None and (isinstance(close, bool) or not isinstance(close, int)):
                raise ContractError(f"message {name!r}: x-close-code must be an integer or null, got {close!r}")
            codes[code] = close
        return codes

    # Questions the tests ask ------------------------------------------------

    def server_messages(self) -> dict[str, dict[str, Any]]:
        """Message name -> resolved payload schema, for every message the server sends."""
        return {name: copy.deepcopy(declared.payload) for name, declared in self._server.items()}

    def client_messages(self) -> dict[str, dict[str, Any]]:
        """Message name -> resolved payload schema, for every message the server receives."""
        return {name: copy.deepcopy(declared.payload) for name, declared in self._client.items()}

    def reply_messages(self) -> tuple[str, ...]:
        """Names of the server messages declared as the reply to a received message (a frame)."""
        return tuple(self._replies)

    def message(self, name: str) -> dict[str, Any]:
        """The whole resolved message object (title, contentType, examples, x-close-code ...)."""
        declared = self._server.get(name) or self._client.get(name)
        if declared is None:
            raise KeyError(f"no message named {name!r}; declared: {sorted({*self._server, *self._client})}")
        return copy.deepcopy(declared.message)

    def examples(self) -> Iterator[tuple[str, str, Any]]:
        """(message name, example name, example payload) for every example of a server message."""
        for name, declared in self._server.items():
            for index, example in enumerate(declared.message.get("examples") or []):
                if "payload" in example:
                    yield name, str(example.get("name", index)), copy.deepcopy(example["payload"])

    def schema(self, name: str) -> Any:
        """A resolved schema of components/schemas, e.g. "Detection"."""
        schemas = (self.document.get("components") or {}).get("schemas") or {}
        if name not in schemas:
            raise KeyError(f"no schema named {name!r} in components/schemas; declared: {sorted(schemas)}")
        return copy.deepcopy(schemas[name])

    def error_codes(self) -> dict[str, int | None]:
        """Error code -> the close code that follows it (None: the session stays open)."""
        return dict(self._error_codes)

    def expected_close_code(self, error_code: str) -> int | None:
        """The close code that follows `error_code`, None when the session stays open."""
        code = str(getattr(error_code, "value", error_code))
        if code not in self._error_codes:
            raise KeyError(f"error code {code!r} is not declared; declared: {sorted(self._error_codes)}")
        return self._error_codes[code]

    def close_codes(self) -> dict[int, str]:
        """Close code -> meaning, from `x-close-codes` on the channels (and info, if any)."""
        found: dict[int, str] = {}
        sources = [self.document.get("info") or {}, *(self.document.get("channels") or {}).values()]
        for source in sources:
            for code, meaning in (source.get("x-close-codes") or {}).items():
                try:
                    number = int(code)
                except (TypeError, ValueError):
                    raise ContractError(f"x-close-codes key {code!r} is not an integer") from None
                found[number] = str(meaning)
        return dict(sorted(found.items()))

    def drop_causes(self) -> frozenset[str]:
        """The causes a dropped-frame message may carry."""
        causes: set[str] = set()
        for declared in self._server.values():
            payload = declared.payload
            if isinstance(payload, Mapping) and _const_property(payload, "dropped") is True:
                cause = (payload.get("properties") or {}).get("cause") or {}
                causes.update(cause.get("enum") or ([cause["const"]] if "const" in cause else []))
        return frozenset(causes)

    def invariants(self) -> list[str]:
        """The guarantees listed in `x-invariants` on the channels and operations."""
        found: list[str] = []
        for section in ("channels", "operations"):
            for item in (self.document.get(section) or {}).values():
                found.extend(str(text) for text in item.get("x-invariants") or [])
        return found

    def match_server_message(self, message: Any) -> tuple[list[str], dict[str, str]]:
        """The names of the server messages that `message` satisfies, and why each other one fails."""
        matches: list[str] = []
        errors: dict[str, str] = {}
        for name, declared in self._server.items():
            found = declared.errors(message)
            if found:
                errors[name] = _summary(found)
            else:
                matches.append(name)
        return matches, errors

    def validate_server_message(self, msg: Mapping[str, Any] | str | bytes) -> str:
        """The name of the one declared server message that `msg` satisfies.

        `msg` is the decoded JSON object, or the raw JSON text as sent. Raises
        UndeclaredMessageError when it satisfies none, or more than one.
        """
        if isinstance(msg, (str, bytes, bytearray)):
            try:
                msg = json.loads(msg)
            except ValueError as exc:
                raise UndeclaredMessageError(msg, {"(json)": f"not JSON text: {exc}"}) from None
        matches, errors = self.match_server_message(msg)
        if len(matches) != 1:
            raise UndeclaredMessageError(msg, errors, tuple(matches))
        return matches[0]


def _const_property(schema: Any, key: str) -> Any:
    if not isinstance(schema, Mapping):
        return None
    prop = (schema.get("properties") or {}).get(key)
    if isinstance(prop, Mapping) and "const" in prop:
        return prop["const"]
    return None


def load_contract(path: str | Path | None = None) -> Contract:
    """Load and resolve asyncapi.yaml (by default the one at the repository root)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ContractError(f"cannot read the AsyncAPI document {path}: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"{path} is not valid YAML: {exc}") from exc
    return Contract(document, path)
