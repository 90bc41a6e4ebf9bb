"""JSDoc typedefs and constants for the browser page, made from asyncapi.yaml.

The page (clients/web/) is plain JavaScript with no build step, so its message
types are JSDoc typedefs that editors and `tsc --checkJs` understand, in an ES
module that also exports the contract's close codes and drop causes as
constants, so that the page never keeps a second copy of them.
`python -m contracts.generate_models` writes it beside the Python models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_PRIMITIVES = {"integer": "number", "number": "number", "string": "string", "boolean": "boolean", "null": "null"}


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(schema: Mapping[str, Any]) -> str:
    """The JSDoc type expression of a JSON Schema fragment."""
    if "$ref" in schema:
        return _ref_name(schema["$ref"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "(" + "|".join(json.dumps(value) for value in schema["enum"]) + ")"
    declared = schema.get("type")
    if isinstance(declared, list):
        return "(" + "|".join(_type_of({**schema, "type": one}) for one in declared) + ")"
    if declared == "array":
        return f"Array<{_type_of(schema.get('items', {}))}>"
    if declared == "object":
        return "Object<string, *>"
    if declared in _PRIMITIVES:
        return _PRIMITIVES[declared]
    return "*"


def _doc_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _typedef(name: str, schema: Mapping[str, Any]) -> str:
    lines = ["/**"]
    if schema.get("description"):
        lines.append(f" * {_doc_line(schema['description'])}")
    if schema.get("type") == "object" and "properties" in schema:
        open_ended = schema.get("additionalProperties", True) is not False
        lines.append(f" * @typedef {{Object}} {name}")
        required = set(schema.get("required", []))
        for prop, prop_schema in schema["properties"].items():
            label = prop if prop in required else f"[{prop}]"
            description = _doc_line(prop_schema.get("description"))
            lines.append(f" * @property {{{_type_of(prop_schema)}}} {label}" + (f" {description}" if description else ""))
        if open_ended:
            lines.append(" * (Tools may add further keys.)")
    else:
        lines.append(f" * @typedef {{{_type_of(schema)}}} {name}")
    lines.append(" */")
    return "\n".join(lines)


def render_jsdoc(document: Mapping[str, Any], source_hash: str) -> str:
    """The content of clients/web/messages.js for this document."""
    components = document["components"]
    schemas: Mapping[str, Any] = components["schemas"]
    messages: Mapping[str, Any] = components["messages"]
    channel = document["channels"]["videoStream"]
    parts = [
        "// Generated from asyncapi.yaml by contracts/jsdoc_types.py; do not edit by hand.",
        "// Regenerate with `make models` (python -m contracts.generate_models).",
        f"// source-sha256: {source_hash}",
        "// @ts-check",
        "",
    ]
    for name, schema in schemas.items():
        if name == "FramePayload":
            continue
        parts.append(_typedef(name, schema))
        parts.append("")
    server_messages = [name for name, message in messages.items() if message.get("contentType") == "application/json"]
    union = "|".join(_ref_name(messages[name]["payload"]["$ref"]) for name in server_messages)
    parts.append("/**\n * Any JSON message the server sends on the stream.\n" f" * @typedef {{{union}}} ServerMessage\n */")
    parts.append("")
    close_codes = {int(code): _doc_line(text) for code, text in channel.get("x-close-codes", {}).items()}
    error_close = {
        schemas[_ref_name(message["payload"]["$ref"])]["properties"]["error"]["const"]: message.get("x-close-code")
        for message in messages.values()
        if "x-close-code" in message
    }
    causes = schemas["FrameDroppedPayload"]["properties"]["cause"]["enum"]
    parts.append("/** Close codes of the stream and what each means. @type {Readonly<Record<number, string>>} */")
    parts.append(f"export const CLOSE_CODES = Object.freeze({json.dumps(close_codes, indent=2, ensure_ascii=False)});")
    parts.append("")
    parts.append("/** Each error code and the close code that follows it (null: the session stays open). @type {Readonly<Record<string, number|null>>} */")
    parts.append(f"export const ERROR_CLOSE_CODES = Object.freeze({json.dumps(error_close, indent=2)});")
    parts.append("")
    parts.append("/** The causes a FrameDropped may carry. @type {ReadonlyArray<string>} */")
    parts.append(f"export const DROP_CAUSES = Object.freeze({json.dumps(causes)});")
    parts.append("")
    return "\n".join(parts)
