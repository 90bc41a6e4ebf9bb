"""DagPipelineService failures: tool errors without their text, JSON-safe outputs, construction-time validation,
availability and unknown pipelines. Shared fakes are in tests/unit/dag_support.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from application.errors import PipelineExecutionError, PipelineUnavailableError, UnknownPipelineError
from application.ports import Availability, ToolContext
from domain import ErrorCode, FrameValidationError, PipelineValidationError
from tests.support.fakes import CountingDecoder
from tests.unit.dag_support import PAYLOAD, SECRET_TEXT, FakePlugin, definition, failing_setup, service


class NumpyLikeScalar:
    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


class NumpyLikeArray:
    def __init__(self, values: list[list[int]]) -> None:
        self.values = values

    def tolist(self) -> list[list[int]]:
        return self.values


# Failures -----------------------------------------------------------------------


def test_tool_exception_becomes_pipeline_execution_error_without_its_text() -> None:
    pipelines, ran = failing_setup()
    with pytest.raises(PipelineExecutionError) as caught:
        pipelines.run_pipeline("fragile", PAYLOAD)
    error = caught.value
    assert error.code is ErrorCode.PIPELINE_FAILURE
    assert "fragile" in error.detail
    assert "second" in error.detail
    assert "crashy.explode" in error.detail
    assert SECRET_TEXT not in error.detail
    assert "RuntimeError" not in error.detail
    assert SECRET_TEXT not in str(error.to_message())
    assert SECRET_TEXT in error.log_message
    assert "RuntimeError" in error.log_message
    assert isinstance(error.__cause__, RuntimeError)
    assert (error.pipeline_id, error.node_id, error.plugin_id, error.tool_id) == ("fragile", "second", "crashy", "explode")
    assert ran == ["first", "second"]


def test_frame_validation_error_from_decoder_passes_through_unchanged() -> None:
    original = FrameValidationError(ErrorCode.INVALID_FRAME, "does not decode")
    plugin = FakePlugin("img", {"t": lambda inputs, context: {"shape": context.image()}})
    pipelines = service([definition("img", [("n", "img", "t")], entry=["n"], output=["n"])], [plugin], decoder=CountingDecoder(original))
    with pytest.raises(FrameValidationError) as caught:
        pipelines.run_pipeline("img", PAYLOAD)
    assert caught.value is original
    assert not isinstance(caught.value, PipelineExecutionError)


def test_tool_returning_a_non_mapping_is_a_pipeline_failure() -> None:
    plugin = FakePlugin("p", {"t": lambda inputs, context: [1, 2, 3]})
    pipelines = service([definition("listy", [("n", "p", "t")], entry=["n"], output=["n"])], [plugin])
    with pytest.raises(PipelineExecutionError) as caught:
        pipelines.run_pipeline("listy", PAYLOAD)
    assert caught.value.node_id == "n"


def test_numpy_like_values_are_converted_to_plain_json() -> None:
    plugin = FakePlugin(
        "np",
        {
            "t": lambda inputs, context: {
                "score": NumpyLikeScalar(0.5),
                "mask": NumpyLikeArray([[1, 2], [3, 4]]),
                "nested": {"n": (NumpyLikeScalar(3),)},
            }
        },
    )
    result = service([definition("np", [("n", "np", "t")], entry=["n"], output=["n"])], [plugin]).run_pipeline("np", PAYLOAD)
    assert result == {"score": 0.5, "mask": [[1, 2], [3, 4]], "nested": {"n": [3]}}
    assert type(result["score"]) is float
    assert type(result["nested"]["n"]) is list


def test_outputs_of_tools_that_promise_json_are_sent_as_made_and_others_are_converted() -> None:
    made: list[dict[str, Any]] = []

    def promising(inputs: Mapping[str, Any], context: ToolContext) -> dict[str, Any]:
        made.append({"width": 64, "nested": {"n": [1, 2]}})
        return made[-1]

    promising.returns_json = True  # type: ignore[attr-defined]
    plain = lambda inputs, context: {"score": NumpyLikeScalar(0.5)}  # noqa: E731
    pipelines = service(
        [
            definition("promised", [("a", "p", "promising")], entry=["a"], output=["a"]),
            definition("mixed", [("a", "p", "promising"), ("b", "p", "plain")], entry=["a", "b"], output=["a", "b"]),
        ],
        [FakePlugin("p", {"promising": promising, "plain": plain})],
    )
    assert pipelines.run_pipeline("promised", PAYLOAD) is made[-1]
    mixed = pipelines.run_pipeline("mixed", PAYLOAD)
    assert mixed == {"width": 64, "nested": {"n": [1, 2]}, "score": 0.5} and type(mixed["score"]) is float


def test_bytes_in_output_is_a_pipeline_execution_error() -> None:
    plugin = FakePlugin("leak", {"t": lambda inputs, context: {"raw": context.image_bytes}})
    pipelines = service([definition("leaky", [("out", "leak", "t")], entry=["out"], output=["out"])], [plugin])
    with pytest.raises(PipelineExecutionError) as caught:
        pipelines.run_pipeline("leaky", PAYLOAD)
    assert caught.value.node_id == "out"
    assert "leak.t" in caught.value.detail
    assert "\\xff" not in caught.value.detail and "fake" not in caught.value.detail


# Construction-time validation and availability -----------------------------------------


def test_unknown_plugin_is_refused_at_construction() -> None:
    plugin = FakePlugin("known", {"t": lambda inputs, context: {}})
    graph = definition("bad", [("the_node", "ghost", "t")], entry=["the_node"], output=["the_node"])
    with pytest.raises(PipelineValidationError) as caught:
        service([graph], [plugin])
    message = str(caught.value)
    assert "the_node" in message and "ghost" in message and "bad" in message


def test_unknown_tool_is_refused_at_construction() -> None:
    plugin = FakePlugin("known", {"t": lambda inputs, context: {}})
    graph = definition("bad", [("the_node", "known", "missing_tool")], entry=["the_node"], output=["the_node"])
    with pytest.raises(PipelineValidationError) as caught:
        service([graph], [plugin])
    message = str(caught.value)
    assert "the_node" in message and "missing_tool" in message and "known" in message


def test_unavailable_plugin_makes_the_pipeline_unavailable() -> None:
    ran: list[str] = []
    plugin = FakePlugin("gone", {"t": lambda inputs, context: ran.append("x") or {}}, Availability(False, "model missing"))
    pipelines = service([definition("offline", [("n", "gone", "t")], entry=["n"], output=["n"])], [plugin])
    status = pipelines.availability("offline")
    assert status.available is False and "model missing" in (status.reason or "")
    with pytest.raises(PipelineUnavailableError) as caught:
        pipelines.run_pipeline("offline", PAYLOAD)
    assert caught.value.code is ErrorCode.INVALID_PIPELINE
    assert "model missing" in caught.value.detail
    assert ran == []


def test_unknown_pipeline_id_raises_unknown_pipeline_error() -> None:
    plugin = FakePlugin("p", {"t": lambda inputs, context: {}})
    pipelines = service([definition("only", [("n", "p", "t")], entry=["n"], output=["n"])], [plugin])
    with pytest.raises(UnknownPipelineError) as caught:
        pipelines.run_pipeline("nope", PAYLOAD)
    assert caught.value.code is ErrorCode.INVALID_PIPELINE
    assert "only" in caught.value.detail
