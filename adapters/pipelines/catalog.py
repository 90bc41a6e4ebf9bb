"""Pipeline definitions from a folder of JSON files, loaded and validated at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

from domain import PipelineDefinition, PipelineEdge, PipelineNode, PipelineValidationError


class PipelineLoadError(ValueError):
    """A pipeline file that cannot be used; the message names the file and the fault."""


_TOP_KEYS = {"id", "name", "description", "nodes", "edges", "entry_nodes", "output_nodes"}
_NODE_KEYS = {"id", "plugin_id", "tool_id", "params"}


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise PipelineLoadError(f"{path}: {message}")


def parse_definition(document: Any, path: Path) -> PipelineDefinition:
    _require(isinstance(document, dict), path, f"expected a JSON object, got {type(document).__name__}")
    unknown = set(document) - _TOP_KEYS
    _require(not unknown, path, f"unknown keys {sorted(unknown)}; expected only {sorted(_TOP_KEYS)}")
    for key in ("id", "nodes", "entry_nodes", "output_nodes"):
        _require(key in document, path, f"missing required key {key!r}")
    _require(isinstance(document["id"], str) and bool(document["id"]), path, "'id' must be a non-empty string")
    _require(isinstance(document["nodes"], list), path, "'nodes' must be a list")
    nodes = []
    for position, raw in enumerate(document["nodes"]):
        _require(isinstance(raw, dict), path, f"nodes[{position}] must be an object")
        unknown = set(raw) - _NODE_KEYS
        _require(not unknown, path, f"nodes[{position}] has unknown keys {sorted(unknown)}")
        for key in ("id", "plugin_id", "tool_id"):
            _require(isinstance(raw.get(key), str) and raw[key], path, f"nodes[{position}].{key} must be a non-empty string")
        params = raw.get("params", {})
        _require(isinstance(params, dict), path, f"nodes[{position}].params must be an object")
        nodes.append(PipelineNode(raw["id"], raw["plugin_id"], raw["tool_id"], MappingProxyType(dict(params))))
    edges = []
    raw_edges = document.get("edges", [])
    _require(isinstance(raw_edges, list), path, "'edges' must be a list")
    for position, raw in enumerate(raw_edges):
        _require(
            isinstance(raw, dict) and isinstance(raw.get("from_node"), str) and isinstance(raw.get("to_node"), str),
            path,
            f"edges[{position}] must be an object with string from_node and to_node",
        )
        edges.append(PipelineEdge(raw["from_node"], raw["to_node"]))
    for key in ("entry_nodes", "output_nodes"):
        _require(
            isinstance(document[key], list) and all(isinstance(item, str) for item in document[key]),
            path,
            f"{key!r} must be a list of node ids",
        )
    try:
        return PipelineDefinition.build(
            id=document["id"],
            name=document.get("name", document["id"]),
            description=document.get("description", ""),
            nodes=nodes,
            edges=edges,
            entry_nodes=document["entry_nodes"],
            output_nodes=document["output_nodes"],
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
