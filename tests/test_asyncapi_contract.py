"""asyncapi.yaml is a valid AsyncAPI 3 document and agrees with the domain's codes.

The node test needs `npm ci` in contracts/node (the Makefile runs it); without
it the test fails rather than skips, because an unvalidated contract is a
broken build, not an optional extra.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from contracts.asyncapi_doc import (
    DEFAULT_PATH,
    Contract,
    ContractError,
    UndeclaredMessageError,
    load_contract,
)
from domain import CLOSE_CODE_FOR_ERROR, CloseCode, DropCause, ErrorCode
from domain.errors import GENERIC_INTERNAL_DETAIL

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "contracts" / "node"
VALIDATOR = NODE_DIR / "validate.mjs"


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract()


@pytest.fixture(scope="module")
def raw_document() -> dict:
    return yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))


def _run_node_validator(*args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None, "node is not on PATH; the AsyncAPI document cannot be validated"
    assert (NODE_DIR / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        f"@asyncapi/parser is not installed: run `npm ci` in {NODE_DIR.relative_to(ROOT)}"
    )
    return subprocess.run(
        [node, str(VALIDATOR.relative_to(ROOT)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# The document ---------------------------------------------------------------


def test_official_parser_accepts_the_document() -> None:
    run = _run_node_validator("asyncapi.yaml")
    assert run.returncode == 0, f"asyncapi.yaml is invalid:\n{run.stdout}\n{run.stderr}"
    assert "valid AsyncAPI 3.0.0 document" in run.stdout


def test_official_parser_reports_no_warnings() -> None:
    run = _run_node_validator("asyncapi.yaml", "--strict")
    assert run.returncode == 0, f"asyncapi.yaml has warnings:\n{run.stdout}\n{run.stderr}"


def test_official_parser_rejects_a_broken_document(tmp_path: Path, raw_document: dict) -> None:
    broken = copy.deepcopy(raw_document)
    # An operation naming a message of no channel it uses is a semantic error, not a schema one.
    broken["operations"]["sendFrameResult"]["messages"] = [{"$ref": "#/components/messages/FrameResult"}]
    broken["channels"]["videoStream"]["bindings"]["ws"]["method"] = "PUT"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False), encoding="utf-8")
    run = _run_node_validator(str(path))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "INVALID" in run.stdout
    assert "error" in run.stdout


def test_document_describes_the_stream_endpoint(raw_document: dict) -> None:
    assert raw_document["asyncapi"] == "3.0.0"
    server = raw_document["servers"]["local"]
    assert (server["protocol"], server["host"]) == ("ws", "{host}")
    assert server["variables"]["host"]["default"] == "localhost:8000"
    channel = raw_document["channels"]["videoStream"]
    assert channel["address"] == "/ws/video/stream"
    query = channel["bindings"]["ws"]["query"]
    assert query["type"] == "object"
    assert "pipeline_id" in query["required"]
    assert query["properties"]["pipeline_id"]["type"] == "string"


def test_operations_take_the_servers_point_of_view(contract: Contract, raw_document: dict) -> None:
    actions = {op_id: op["action"] for op_id, op in raw_document["operations"].items()}
    assert actions["receiveFrame"] == "receive"
    assert actions["receiveVideoFrame"] == "receive"
    assert {a for op_id, a in actions.items() if op_id not in ("receiveFrame", "receiveVideoFrame")} == {"send"}
    assert set(contract.client_messages()) == {"Frame", "VideoTrackFrame"}
    frame = contract.message("Frame")
    assert frame["contentType"] == "image/jpeg"
    assert (frame["payload"]["type"], frame["payload"]["format"]) == ("string", "binary")


def test_every_frame_reply_carries_the_frame_index(contract: Contract) -> None:
    replies = set(contract.reply_messages())
    assert replies == {
        "FrameResult",
        "FrameDropped",
        "PipelineFailureError",
        "InvalidFrameError",
        "FrameTooLargeError",
        "InternalError",
    }
    messages = contract.server_messages()
    for name in ("FrameResult", "FrameDropped", "PipelineFailureError"):
        assert "frame_index" in messages[name]["required"], name
    for name in replies:
        assert "frame_index" in messages[name]["properties"], name
    # Errors that are never about one frame are not replies.
    assert not replies & {"InvalidMessageError", "InvalidPipelineError", "ServerBusyError", "ShuttingDownError"}
    assert any("exactly one reply" in text for text in contract.invariants())


def test_every_server_message_is_closed_and_has_examples(contract: Contract) -> None:
    messages = contract.server_messages()
    assert {"FrameResult", "FrameDropped", "SlowDownWarning"} <= set(messages)
    for name, schema in messages.items():
        assert schema["type"] == "object", name
        assert schema["additionalProperties"] is False, name
        assert schema["required"], name
        assert set(schema["required"]) <= set(schema["properties"]), name
        assert contract.message(name).get("examples"), f"{name} has no examples"
    # The pipeline's output inside a result is open-ended.
    assert messages["FrameResult"]["properties"]["result"]["additionalProperties"] is True


def _detections_in(value: object) -> list[dict]:
    """Every object with a "box" key anywhere inside a result."""
    if isinstance(value, dict):
        found = [value] if "box" in value else []
        for item in value.values():
            found.extend(_detections_in(item))
        return found
    if isinstance(value, list):
        return [found for item in value for found in _detections_in(item)]
    return []


def test_detection_is_a_reusable_schema(contract: Contract) -> None:
    from jsonschema import Draft7Validator

    detection = Draft7Validator(contract.schema("Detection"))
    box = {"x1": 1, "y1": 2, "x2": 30.5, "y2": 40}
    assert detection.is_valid({"label": "face", "confidence": 0.9, "box": box})
    assert detection.is_valid({"label": "text", "confidence": 0.5, "box": box, "text": "EXIT"})
    assert detection.is_valid({"label": "motion", "confidence": 1.0, "box": box, "area": 120})
    assert not detection.is_valid({"label": "face", "confidence": 0.9})
    assert not detection.is_valid({"label": "face", "confidence": 1.5, "box": box})
    assert not detection.is_valid({"label": "text", "confidence": 0.5, "box": box, "text": 7})
    assert not detection.is_valid({"label": "face", "confidence": 0.9, "box": {"x1": 1, "y1": 2, "x2": 3}})
    assert not detection.is_valid({"label": "face", "confidence": 0.9, "box": {**box, "w": 3}})
    examples = [found for _, _, payload in contract.examples() for found in _detections_in(payload.get("result"))]
    assert examples, "no example result shows a detection"
    for found in examples:
        assert detection.is_valid(found), found


def test_the_plugins_detection_shape_is_declared(contract: Contract) -> None:
    """The shape the plugins emit is the shape the document declares."""
    from jsonschema import Draft7Validator

    from adapters.plugins import common

    detection = Draft7Validator(contract.schema("Detection"))
    assert detection.is_valid(common.detection("face", 0.75, 1, 2, 3, 4))
    assert detection.is_valid(common.detection("text", 0.5, 0.5, 1.5, 10, 20, text="EXIT"))


# Examples and malformed messages ---------------------------------------------


_EXAMPLES = list(load_contract().examples())


@pytest.mark.parametrize(("message_name", "example_name", "payload"), _EXAMPLES, ids=[f"{m}:{e}" for m, e, _ in _EXAMPLES])
def test_each_example_matches_its_own_message_and_no_other(
    contract: Contract, message_name: str, example_name: str, payload: dict
) -> None:
    matches, _ = contract.match_server_message(payload)
    assert matches == [message_name]
    assert contract.validate_server_message(payload) == message_name


def test_every_server_message_has_an_example(contract: Contract) -> None:
    assert {message for message, _, _ in contract.examples()} == set(contract.server_messages())


def test_raw_json_text_is_accepted(contract: Contract) -> None:
    assert contract.validate_server_message('{"frame_index": 0, "dropped": true, "cause": "lagging"}') == "FrameDropped"
    with pytest.raises(UndeclaredMessageError):
        contract.validate_server_message("not json")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"frame_index": 1}, id="result-missing-result"),
        pytest.param({"result": {}}, id="result-missing-frame_index"),
        pytest.param({"frame_index": -1, "result": {}}, id="result-negative-index"),
        pytest.param({"frame_index": 1.5, "result": {}}, id="result-fractional-index"),
        pytest.param({"frame_index": True, "result": {}}, id="result-boolean-index"),
        pytest.param({"frame_index": 1, "result": []}, id="result-not-an-object"),
        pytest.param({"frame_index": 1, "result": {}, "extra": 1}, id="result-extra-field"),
        pytest.param({"frame_index": 1, "dropped": True}, id="dropped-missing-cause"),
        pytest.param({"frame_index": 1, "dropped": False, "cause": "lagging"}, id="dropped-false"),
        pytest.param({"frame_index": 1, "dropped": 1, "cause": "lagging"}, id="dropped-one-not-true"),
        pytest.param({"frame_index": 1, "dropped": True, "cause": "tired"}, id="dropped-unknown-cause"),
        pytest.param({"frame_index": 1, "dropped": True, "cause": "lagging", "x": 0}, id="dropped-extra-field"),
        pytest.param({"warning": "slow_down"}, id="slowdown-missing-measurements"),
        pytest.param(
            {"warning": "speed_up", "drop_rate": 0.5, "suggested_fps": None, "processing_ms": None, "interval_ms": None},
            id="slowdown-wrong-const",
        ),
        pytest.param(
            {"warning": "slow_down", "drop_rate": 1.5, "suggested_fps": None, "processing_ms": None, "interval_ms": None},
            id="slowdown-rate-above-one",
        ),
        pytest.param(
            {"warning": "slow_down", "drop_rate": 0.5, "suggested_fps": 0, "processing_ms": 10, "interval_ms": 5},
            id="slowdown-zero-fps",
        ),
        pytest.param(
            {
                "warning": "slow_down",
                "drop_rate": 0.5,
                "suggested_fps": None,
                "processing_ms": None,
                "interval_ms": None,
                "extra": True,
            },
            id="slowdown-extra-field",
        ),
        pytest.param({"error": "invalid_frame"}, id="error-missing-detail"),
        pytest.param({"detail": "something broke"}, id="error-missing-code"),
        pytest.param({"error": "no_such_code", "detail": "x"}, id="error-unknown-code"),
        pytest.param({"error": "INVALID_FRAME", "detail": "x"}, id="error-code-wrong-case"),
        pytest.param({"error": "invalid_frame", "detail": "x", "trace": "..."}, id="error-extra-field"),
        pytest.param({"error": "invalid_frame", "detail": 42}, id="error-detail-not-text"),
        pytest.param({"error": "pipeline_failure", "detail": "x"}, id="pipeline-failure-without-frame-index"),
        pytest.param({"error": "internal_error", "detail": "x", "frame_index": -3}, id="error-negative-index"),
        pytest.param({}, id="empty-object"),
        pytest.param([], id="array"),
        pytest.param("slow_down", id="bare-string"),
        pytest.param(None, id="null"),
    ],
)
def test_malformed_messages_are_undeclared(contract: Contract, message: object) -> None:
    if isinstance(message, str):
        message_text = json.dumps(message)  # a JSON string, not an object
        with pytest.raises(UndeclaredMessageError) as caught:
            contract.validate_server_message(message_text)
    else:
        with pytest.raises(UndeclaredMessageError) as caught:
            contract.validate_server_message(message)  # type: ignore[arg-type]
    assert caught.value.message == message
    assert not caught.value.matches
    assert set(caught.value.errors) == set(contract.server_messages())


def test_undeclared_message_error_names_each_candidate(contract: Contract) -> None:
    with pytest.raises(UndeclaredMessageError) as caught:
        contract.validate_server_message({"frame_index": 1, "dropped": True, "cause": "tired"})
    text = str(caught.value)
    assert "FrameDropped" in text and "'tired' is not one of" in text
    assert all(name in text for name in contract.server_messages())


def test_a_message_matching_two_declarations_is_ambiguous(raw_document: dict) -> None:
    doubled = copy.deepcopy(raw_document)
    # A second message with the same payload as FrameResult makes every result ambiguous.
    doubled["components"]["messages"]["FrameResultAgain"] = {
        **doubled["components"]["messages"]["FrameResult"],
        "name": "FrameResultAgain",
    }
    doubled["channels"]["videoStream"]["messages"]["frameResultAgain"] = {"$ref": "#/components/messages/FrameResultAgain"}
    doubled["operations"]["sendFrameResult"]["messages"].append({"$ref": "#/channels/videoStream/messages/frameResultAgain"})
    contract = Contract(doubled)
    with pytest.raises(UndeclaredMessageError) as caught:
        contract.validate_server_message({"frame_index": 0, "result": {}})
    assert set(caught.value.matches) == {"FrameResult", "FrameResultAgain"}
    assert "ambiguous" in str(caught.value)


def test_a_dangling_reference_is_a_contract_error(raw_document: dict) -> None:
    broken = copy.deepcopy(raw_document)
    broken["components"]["messages"]["FrameDropped"]["payload"] = {"$ref": "#/components/schemas/Nope"}
    with pytest.raises(ContractError, match="Nope"):
        Contract(broken)


# Agreement with the domain -----------------------------------------------------


def test_error_codes_are_exactly_the_domains(contract: Contract) -> None:
    assert set(contract.error_codes()) == {code.value for code in ErrorCode}


def test_close_codes_match_the_domain(contract: Contract) -> None:
    expected = {code.value: (int(CLOSE_CODE_FOR_ERROR[code]) if code in CLOSE_CODE_FOR_ERROR else None) for code in ErrorCode}
    assert contract.error_codes() == expected
    for code in ErrorCode:
        assert contract.expected_close_code(code) == expected[code.value]
        assert contract.expected_close_code(code.value) == expected[code.value]
    assert contract.expected_close_code("pipeline_failure") is None
    with pytest.raises(KeyError):
        contract.expected_close_code("no_such_code")


def test_close_code_table_covers_every_close_the_server_makes(contract: Contract) -> None:
    table = contract.close_codes()
    used = {close for close in contract.error_codes().values() if close is not None}
    # Closes without an error message: the client's own, and a broken WebSocket protocol rule.
    assert set(table) == used | {int(CloseCode.NORMAL), int(CloseCode.PROTOCOL_ERROR)}
    assert set(table) <= {int(code) for code in CloseCode}
    for code, meaning in table.items():
        assert meaning.strip(), code


def test_drop_causes_are_exactly_the_domains(contract: Contract) -> None:
    assert contract.drop_causes() == {cause.value for cause in DropCause}


def test_the_domains_error_messages_are_declared(contract: Contract) -> None:
    from domain import StreamError

    for code in ErrorCode:
        message = StreamError(code, "something the client should know").to_message()
        if code is ErrorCode.PIPELINE_FAILURE:
            message["frame_index"] = 4
        name = contract.validate_server_message(message)
        assert contract.server_messages()[name]["properties"]["error"]["const"] == code.value
    generic = {"error": ErrorCode.INTERNAL_ERROR.value, "detail": GENERIC_INTERNAL_DETAIL}
    assert contract.validate_server_message(generic) == "InternalError"


def test_every_kind_of_outgoing_message_renders_a_declared_message(contract: Contract) -> None:
    """The typed messages the stream protocol queues (application.messages) render messages the document declares."""
    from domain import Frame, StreamError
    from domain.session import SlowDownSignal

    from application.messages import ErrorReply, FrameDropped, FrameResult, SlowDown

    frame = Frame(index=7, data=b"\xff\xd8\xff\xd9", received_ms=0.0)
    assert contract.validate_server_message(FrameResult(frame, {"faces": {"boxes": []}}, 4.0, 0.5).to_json()) == "FrameResult"
    for cause in DropCause:
        assert contract.validate_server_message(FrameDropped(frame, cause).to_json()) == "FrameDropped"
    for signal in (
        SlowDownSignal(drop_rate=0.5, suggested_fps=11.3636, processing_ms=80.0, interval_ms=33.3333),
        SlowDownSignal(drop_rate=1.0, suggested_fps=None, processing_ms=None, interval_ms=None),
        SlowDownSignal(drop_rate=0.31, suggested_fps=0.0015, processing_ms=600000.0, interval_ms=0.0),
    ):
        assert contract.validate_server_message(SlowDown(signal).to_json()) == "SlowDownWarning"
    for code in ErrorCode:
        error = StreamError(code, "detail for the client")
        with_index = contract.validate_server_message(ErrorReply(error, 7).to_json())
        assert contract.server_messages()[with_index]["properties"]["error"]["const"] == code.value
        if code is not ErrorCode.PIPELINE_FAILURE:
            assert contract.validate_server_message(ErrorReply(error).to_json()) == with_index
