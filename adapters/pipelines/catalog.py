"""Pipeline definitions from a folder of JSON files, loaded and validated at start-up.

Each file is decoded into typed structs that refuse unknown keys and wrong
types, then turned into the domain's PipelineDefinition (which checks the graph).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import msgspec

from domain import NodeGate, PipelineDefinition, PipelineEdge, PipelineNode, PipelineValidationError


class PipelineLoadError(ValueError):
    """A pipeline file that cannot be used; the message names the file and the fault."""


_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _GateFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    node: _NonEmpty
    output: _NonEmpty
    max_skip: int | None = None
    refresh_ms: float | None = None
    stride: int = 1


class _NodeFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: _NonEmpty
    plugin_id: _NonEmpty
    tool_id: _NonEmpty
    params: dict[str, Any] = {}
    gate: _GateFile | None = None


class _EdgeFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    from_node: str
    to_node: str


class _PipelineFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: _NonEmpty
    nodes: list[_NodeFile]
    entry_nodes: list[str]
    output_nodes: list[str]
    name: str | None = None
    description: str = ""
    edges: list[_EdgeFile] = []


_TOP_KEYS = sorted(_PipelineFile.__struct_fields__)
_UNKNOWN = re.compile(r"unknown field `(?P<key>[^`]*)`")
_MISSING = re.compile(r"missing required field `(?P<key>[^`]*)`")
_WHERE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_ITEM = re.compile(r"^\.(?P<list>nodes|edges)\[(?P<index>\d+)\](?:\.(?P<field>\w+))?(?:\.(?P<sub>\w+))?")


def _explain(error: msgspec.ValidationError) -> str:
    """The catalogue's own wording for a decode fault: the key path in the file and what it must be."""
    text = str(error)
    where = _WHERE.search(text)
    path = where.group("path") if where else ""
    unknown = _UNKNOWN.search(text)
    missing = _MISSING.search(text)
    item = _ITEM.match(path)
    if item is not None:
        position, field = item.group("index"), item.group("field")
        if item.group("list") == "edges":
            return f"edges[{position}] must be an object with string from_node and to_node"
        if field == "gate":
            sub = item.group("sub")
            if unknown is not None:
                return f"nodes[{position}].gate has unknown keys {[unknown.group('key')]}; expected only {sorted(_GateFile.__struct_fields__)}"
            if missing is not None:
                return f"nodes[{position}].gate is missing {missing.group('key')!r}"
            if sub in ("node", "output"):
                return f"nodes[{position}].gate.{sub} must be a non-empty string"
            if sub == "max_skip":
                return f"nodes[{position}].gate.max_skip must be an integer number of frames"
            if sub == "refresh_ms":
                return f"nodes[{position}].gate.refresh_ms must be a number of milliseconds"
            if sub == "stride":
                return f"nodes[{position}].gate.stride must be an integer number of frames"
            return f"nodes[{position}].gate must be an object with node, output and optionally max_skip, refresh_ms, stride"
        if unknown is not None:
            return f"nodes[{position}] has unknown keys {[unknown.group('key')]}"
        if missing is not None:
            field = missing.group("key")
        if field == "params":
            return f"nodes[{position}].params must be an object"
        if field is None:
            return f"nodes[{position}] must be an object"
        return f"nodes[{position}].{field} must be a non-empty string"
    if unknown is not None:
        return f"unknown keys {[unknown.group('key')]}; expected only {_TOP_KEYS}"
    if missing is not None:
        return f"missing required key {missing.group('key')!r}"
    key = path.lstrip(".").partition("[")[0]
    if key == "id":
        return "'id' must be a non-empty string"
    if key in ("nodes", "edges"):
        return f"{key!r} must be a list"
    if key in ("entry_nodes", "output_nodes"):
        return f"{key!r} must be a list of node ids"
    if key in ("name", "description"):
        return f"{key!r} must be a string"
    return text


def _gate(gate: _GateFile | None) -> NodeGate | None:
    if gate is None:
        return None
    if gate.max_skip is None and gate.refresh_ms is None:
        return NodeGate(gate.node, gate.output, stride=gate.stride)  # the default frame bound
    return NodeGate(gate.node, gate.output, gate.max_skip, gate.refresh_ms, gate.stride)


def parse_definition(document: Any, path: Path) -> PipelineDefinition:
    if not isinstance(document, dict):
        raise PipelineLoadError(f"{path}: expected a JSON object, got {type(document).__name__}")
    try:
        decoded = msgspec.convert(document, _PipelineFile)
    except msgspec.ValidationError as error:
        raise PipelineLoadError(f"{path}: {_explain(error)}") from None
    try:
        return PipelineDefinition.build(
            id=decoded.id,
            name=decoded.name if decoded.name is not None else decoded.id,
            description=decoded.description,
            nodes=[PipelineNode(n.id, n.plugin_id, n.tool_id, MappingProxyType(dict(n.params)), _gate(n.gate)) for n in decoded.nodes],
            edges=[PipelineEdge(e.from_node, e.to_node) for e in decoded.edges],
            entry_nodes=decoded.entry_nodes,
            output_nodes=decoded.output_nodes,
        )
    except PipelineValidationError as error:
        raise PipelineLoadError(f"{path}: {error}") from None


class JsonPipelineCatalog:
    """All pipelines of a folder, keyed by id; every *.json file must hold one valid pipeline."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pipelines: dict[str, PipelineDefinition] = {}
        self._sources: dict[str, Path] = {}
        files = sorted(directory.glob("*.json"))
        if not files:
            raise PipelineLoadError(f"{directory}: no pipeline definition (*.json) files found")
        for path in files:
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise PipelineLoadError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
            definition = parse_definition(document, path)
            if definition.id in self._pipelines:
                raise PipelineLoadError(f"{path}: pipeline id {definition.id!r} is already defined in {self._sources[definition.id]}")
            self._pipelines[definition.id] = definition
            self._sources[definition.id] = path

    def get(self, pipeline_id: str) -> PipelineDefinition:
        return self._pipelines[pipeline_id]

    def ids(self) -> list[str]:
        return sorted(self._pipelines)

    def source(self, pipeline_id: str) -> str:
        return str(self._sources[pipeline_id])
