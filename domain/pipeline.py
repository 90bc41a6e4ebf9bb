"""Pipelines as directed acyclic graphs of plugin tools.

Validation happens once, when a definition is loaded, so that a broken pipeline
stops start-up instead of failing on a client's first frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class PipelineValidationError(ValueError):
    """A pipeline definition that cannot run; the message names the offending node."""


# A gated node runs at least this often, in frames, when its gate names no bound of its own.
DEFAULT_GATE_MAX_SKIP = 30


@dataclass(frozen=True, slots=True)
class NodeGate:
    """A node runs only when the gate node's `output` is true, or when a refresh bound forces it.

    Otherwise its output for the frame is carried from its last run. The
    bounds keep slow changes from going unseen: at most `max_skip` frames or
    `refresh_ms` milliseconds between runs (whichever comes first; None: no
    bound of that kind). `stride` spaces the runs an open gate asks for: at
    most every `stride`-th frame, the frames between carried (a tracker
    moves their boxes), so a detector on a moving scene costs 1/stride.
    """

    node: str
    output: str
    max_skip: int | None = DEFAULT_GATE_MAX_SKIP
    refresh_ms: float | None = None
    stride: int = 1


@dataclass(frozen=True, slots=True)
class PipelineNode:
    id: str
    plugin_id: str
    tool_id: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    gate: NodeGate | None = None


@dataclass(frozen=True, slots=True)
class PipelineEdge:
    from_node: str
    to_node: str


@dataclass(frozen=True, slots=True)
class PipelineDefinition:
    """A validated pipeline; `order` is a topological order of its node ids.

    Build it with `PipelineDefinition.build`, which refuses cycles, unknown node
    references, duplicate ids and nodes that no entry node reaches.
    """

    id: str
    name: str
    nodes: tuple[PipelineNode, ...]
    edges: tuple[PipelineEdge, ...]
    entry_nodes: tuple[str, ...]
    output_nodes: tuple[str, ...]
    order: tuple[str, ...]
    description: str = ""

    @classmethod
    def build(
        cls,
        *,
        id: str,
        name: str,
        nodes: Sequence[PipelineNode],
        edges: Sequence[PipelineEdge],
        entry_nodes: Sequence[str],
        output_nodes: Sequence[str],
        description: str = "",
    ) -> PipelineDefinition:
        if not id:
            raise PipelineValidationError("pipeline id must be a non-empty string")
        if not nodes:
            raise PipelineValidationError(f"pipeline {id!r} has no nodes")
        seen: set[str] = set()
        for node in nodes:
            if not node.id:
                raise PipelineValidationError(f"pipeline {id!r} has a node with an empty id")
            if node.id in seen:
                raise PipelineValidationError(f"pipeline {id!r}: duplicate node id {node.id!r}")
            seen.add(node.id)
        for edge in edges:
            for end, role in ((edge.from_node, "from_node"), (edge.to_node, "to_node")):
                if end not in seen:
                    raise PipelineValidationError(
                        f"pipeline {id!r}: edge {edge.from_node!r} -> {edge.to_node!r} names unknown {role} {end!r}"
                    )
        if not entry_nodes:
            raise PipelineValidationError(f"pipeline {id!r} declares no entry_nodes")
        if not output_nodes:
            raise PipelineValidationError(f"pipeline {id!r} declares no output_nodes")
        for role, names in (("entry_nodes", entry_nodes), ("output_nodes", output_nodes)):
            for name_ in names:
                if name_ not in seen:
                    raise PipelineValidationError(f"pipeline {id!r}: {role} names unknown node {name_!r}")

        for node in nodes:
            _check_gate(id, node, seen, entry_nodes)
        # A gate is read before the node it gates: it orders them as an edge would (so a cycle through it is refused).
        gate_edges = [PipelineEdge(n.gate.node, n.id) for n in nodes if n.gate is not None]
        order = _topological_order(id, [n.id for n in nodes], [*edges, *gate_edges])
        successors: dict[str, list[str]] = {n.id: [] for n in nodes}
        for edge in edges:
            successors[edge.from_node].append(edge.to_node)
        reached: set[str] = set()
        stack = list(entry_nodes)
        while stack:
            current = stack.pop()
            if current in reached:
                continue
            reached.add(current)
            stack.extend(successors[current])
        for node in nodes:
            if node.id not in reached:
                raise PipelineValidationError(
                    f"pipeline {id!r}: node {node.id!r} is unreachable from the entry nodes {list(entry_nodes)}"
                )
        return cls(
            id=id,
            name=name or id,
            nodes=tuple(nodes),
            edges=tuple(edges),
            entry_nodes=tuple(entry_nodes),
            output_nodes=tuple(output_nodes),
            order=order,
            description=description,
        )

    def node(self, node_id: str) -> PipelineNode:
        for candidate in self.nodes:
            if candidate.id == node_id:
                return candidate
        raise KeyError(node_id)

    def predecessors(self, node_id: str) -> tuple[str, ...]:
        return tuple(edge.from_node for edge in self.edges if edge.to_node == node_id)


def _check_gate(pipeline_id: str, node: PipelineNode, node_ids: set[str], entry_nodes: Sequence[str]) -> None:
    gate = node.gate
    if gate is None:
        return
    where = f"pipeline {pipeline_id!r}: node {node.id!r}: gate"
    if gate.node not in node_ids:
        raise PipelineValidationError(f"{where} names unknown node {gate.node!r}; expected one of {sorted(node_ids)}")
    if gate.node == node.id:
        raise PipelineValidationError(f"{where} names the node itself; a gate is another node whose output decides")
    if node.id in entry_nodes:
        raise PipelineValidationError(f"{where} on an entry node; an entry node always runs (its gate must run before it)")
    if not gate.output:
        raise PipelineValidationError(f"{where}: output must be a non-empty string")
    if gate.max_skip is not None and gate.max_skip < 1:
        raise PipelineValidationError(f"{where}: max_skip must be at least 1 frame, got {gate.max_skip}")
    if gate.refresh_ms is not None and not gate.refresh_ms > 0:
        raise PipelineValidationError(f"{where}: refresh_ms must be above 0, got {gate.refresh_ms}")
    if gate.stride < 1:
        raise PipelineValidationError(f"{where}: stride must be at least 1 frame, got {gate.stride}")
    if gate.max_skip is not None and gate.stride > gate.max_skip:
        raise PipelineValidationError(f"{where}: stride ({gate.stride}) must not exceed max_skip ({gate.max_skip})")
    if gate.max_skip is None and gate.refresh_ms is None:
        raise PipelineValidationError(f"{where} has no refresh bound; give max_skip (frames) or refresh_ms")


def _topological_order(pipeline_id: str, node_ids: list[str], edges: Sequence[PipelineEdge]) -> tuple[str, ...]:
    """Kahn's algorithm, keeping declaration order among ready nodes so runs are reproducible."""
    indegree = {node_id: 0 for node_id in node_ids}
    for edge in edges:
        indegree[edge.to_node] += 1
    ready = [node_id for node_id in node_ids if indegree[node_id] == 0]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for edge in edges:
            if edge.from_node == current:
                indegree[edge.to_node] -= 1
                if indegree[edge.to_node] == 0:
                    ready.append(edge.to_node)
    if len(order) != len(node_ids):
        stuck = [node_id for node_id in node_ids if node_id not in order]
        raise PipelineValidationError(f"pipeline {pipeline_id!r} has a cycle through node {stuck[0]!r} (nodes in cycles: {stuck})")
    return tuple(order)
