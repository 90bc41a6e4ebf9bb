import pytest

from domain import PipelineDefinition, PipelineEdge, PipelineNode, PipelineValidationError


def build(nodes, edges, entry=("a",), output=("a",)):
    return PipelineDefinition.build(
        id="p",
        name="P",
        nodes=[PipelineNode(n, "plug", "tool") for n in nodes],
        edges=[PipelineEdge(a, b) for a, b in edges],
        entry_nodes=list(entry),
        output_nodes=list(output),
    )


def test_topological_order_respects_edges() -> None:
    definition = build(["c", "a", "b"], [("a", "b"), ("b", "c")], output=("c",))
    assert definition.order == ("a", "b", "c")
    assert definition.predecessors("c") == ("b",)


def test_diamond_runs_every_node_once() -> None:
    definition = build(["a", "b", "c", "d"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], output=("d",))
    assert definition.order.index("d") == 3 and definition.order[0] == "a"


@pytest.mark.parametrize(
    ("nodes", "edges", "entry", "output", "message"),
    [
        (["a", "b"], [("a", "b"), ("b", "a")], ("a",), ("b",), "cycle"),
        (["a", "a"], [], ("a",), ("a",), "duplicate node id 'a'"),
        (["a"], [("a", "zz")], ("a",), ("a",), "unknown to_node 'zz'"),
        (["a"], [("qq", "a")], ("a",), ("a",), "unknown from_node 'qq'"),
        (["a", "b"], [], ("a",), ("a",), "node 'b' is unreachable"),
        (["a"], [], ("x",), ("a",), "entry_nodes names unknown node 'x'"),
        (["a"], [], ("a",), ("y",), "output_nodes names unknown node 'y'"),
        (["a"], [], (), ("a",), "no entry_nodes"),
    ],
)
def test_invalid_graphs_are_rejected_naming_the_node(nodes, edges, entry, output, message) -> None:
    with pytest.raises(PipelineValidationError) as caught:
        build(nodes, edges, entry, output)
    assert message in str(caught.value)


def test_self_loop_is_a_cycle() -> None:
    with pytest.raises(PipelineValidationError, match="cycle through node 'a'"):
        build(["a"], [("a", "a")])
