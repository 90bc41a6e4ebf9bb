"""JsonPipelineCatalog: pipeline files decoded into typed structs, every fault refused naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.pipelines.catalog import JsonPipelineCatalog, PipelineLoadError
from adapters.settings import DEFAULT_PIPELINES_DIR


def _valid() -> dict[str, Any]:
    return {
        "id": "p",
        "nodes": [{"id": "a", "plugin_id": "opencv", "tool_id": "motion", "params": {"k": 1}}],
        "edges": [],
        "entry_nodes": ["a"],
        "output_nodes": ["a"],
    }


def _load(tmp_path: Path, document: Any) -> JsonPipelineCatalog:
    (tmp_path / "p.json").write_text(json.dumps(document), encoding="utf-8")
    return JsonPipelineCatalog(tmp_path)


def test_the_shipped_pipelines_load() -> None:
    assert JsonPipelineCatalog(DEFAULT_PIPELINES_DIR).ids()


def test_a_valid_file_becomes_a_domain_definition(tmp_path: Path) -> None:
    definition = _load(tmp_path, _valid()).get("p")
    assert definition.name == "p"
    assert [node.params["k"] for node in definition.nodes] == [1]


def _with(path: str, value: Any) -> dict[str, Any]:
    document = _valid()
    if path.startswith("node."):
        if value is _DROP:
            del document["nodes"][0][path[5:]]
        else:
            document["nodes"][0][path[5:]] = value
    elif value is _DROP:
        del document[path]
    else:
        document[path] = value
    return document


_DROP = object()


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([1], "expected a JSON object, got list"),
        (
            _with("colour", "red"),
            "unknown keys ['colour']; expected only ['description', 'edges', 'entry_nodes', 'id', 'name', 'nodes', 'output_nodes']",
        ),
        (_with("id", _DROP), "missing required key 'id'"),
        (_with("entry_nodes", _DROP), "missing required key 'entry_nodes'"),
        (_with("id", ""), "'id' must be a non-empty string"),
        (_with("id", 7), "'id' must be a non-empty string"),
        (_with("nodes", {}), "'nodes' must be a list"),
        (_with("nodes", [3]), "nodes[0] must be an object"),
        (_with("node.extra", 1), "nodes[0] has unknown keys ['extra']"),
        (_with("node.tool_id", ""), "nodes[0].tool_id must be a non-empty string"),
        (_with("node.plugin_id", _DROP), "nodes[0].plugin_id must be a non-empty string"),
        (_with("node.params", [1]), "nodes[0].params must be an object"),
        (_with("edges", "a->a"), "'edges' must be a list"),
        (_with("edges", [{"from_node": "a"}]), "edges[0] must be an object with string from_node and to_node"),
        (_with("edges", [{"from_node": "a", "to_node": 2}]), "edges[0] must be an object with string from_node and to_node"),
        (_with("output_nodes", [1]), "'output_nodes' must be a list of node ids"),
        (_with("entry_nodes", "a"), "'entry_nodes' must be a list of node ids"),
        (_with("output_nodes", ["zz"]), "zz"),
    ],
)
def test_each_fault_is_refused_naming_the_file_and_key(tmp_path: Path, document: Any, expected: str) -> None:
    with pytest.raises(PipelineLoadError) as caught:
        _load(tmp_path, document)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'p.json'}: ")
    assert expected in message


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{\n  "id": "p",,\n}', encoding="utf-8")
    with pytest.raises(PipelineLoadError, match="line 2"):
        JsonPipelineCatalog(tmp_path)


def _gated(gate: Any, entry: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": "p",
        "nodes": [
            {"id": "change", "plugin_id": "opencv", "tool_id": "change_detect"},
            {"id": "faces", "plugin_id": "opencv", "tool_id": "face_detect", "gate": gate},
        ],
        "edges": [{"from_node": "change", "to_node": "faces"}],
        "entry_nodes": entry or ["change"],
        "output_nodes": ["faces"],
    }


def test_a_gate_becomes_the_domains_node_gate_with_the_default_bound(tmp_path: Path) -> None:
    from domain import DEFAULT_GATE_MAX_SKIP, NodeGate

    definition = _load(tmp_path, _gated({"node": "change", "output": "changed"})).get("p")
    assert definition.node("faces").gate == NodeGate("change", "changed", DEFAULT_GATE_MAX_SKIP, None, 1)
    timed = _load(tmp_path, _gated({"node": "change", "output": "changed", "refresh_ms": 500, "stride": 2})).get("p")
    assert timed.node("faces").gate == NodeGate("change", "changed", None, 500.0, 2)


@pytest.mark.parametrize(
    ("gate", "entry", "expected"),
    [
        ({"node": "change"}, None, "nodes[1].gate is missing 'output'"),
        ({"node": "change", "output": "changed", "every": 3}, None, "nodes[1].gate has unknown keys ['every']"),
        ({"node": "change", "output": "changed", "max_skip": "often"}, None, "nodes[1].gate.max_skip must be an integer number of frames"),
        ({"node": "change", "output": "changed", "stride": 1.5}, None, "nodes[1].gate.stride must be an integer number of frames"),
        ({"node": "", "output": "changed"}, None, "nodes[1].gate.node must be a non-empty string"),
        ("change", None, "nodes[1].gate must be an object"),
        ({"node": "chnage", "output": "changed"}, None, "node 'faces': gate names unknown node 'chnage'"),
        ({"node": "change", "output": "changed"}, ["change", "faces"], "node 'faces': gate on an entry node"),
    ],
)
def test_a_bad_gate_is_refused_naming_the_file_and_node(tmp_path: Path, gate: Any, entry: list[str] | None, expected: str) -> None:
    with pytest.raises(PipelineLoadError) as caught:
        _load(tmp_path, _gated(gate, entry))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'p.json'}: ")
    assert expected in message
