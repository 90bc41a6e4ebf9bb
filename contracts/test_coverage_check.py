"""The coverage check itself: derived from the document, so a new declaration is a new obligation."""

from __future__ import annotations

import copy

import yaml

from contracts.asyncapi_doc import DEFAULT_PATH, Contract
from contracts.coverage import ContractCoverage


def _document() -> dict:
    return yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))


def _reach_everything(coverage: ContractCoverage, contract: Contract) -> None:
    for name, _, payload in contract.examples():
        coverage.received(name, payload)
    for code in contract.close_codes():
        coverage.closed(code, None)


def test_a_run_that_reached_every_example_leaves_nothing_missing(contract: Contract) -> None:
    coverage = ContractCoverage(contract)
    _reach_everything(coverage, contract)
    assert coverage.missing() == {} and coverage.unexpected() == []


def test_a_message_added_to_the_document_is_missing_until_a_case_reaches_it() -> None:
    document = _document()
    extended = copy.deepcopy(document)
    schemas = extended["components"]["schemas"]
    schemas["FrameDelayedPayload"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["frame_index", "delayed_ms"],
        "properties": {"frame_index": {"$ref": "#/components/schemas/FrameIndex"}, "delayed_ms": {"type": "number"}},
    }
    extended["components"]["messages"]["FrameDelayed"] = {
        "name": "FrameDelayed",
        "payload": {"$ref": "#/components/schemas/FrameDelayedPayload"},
        "examples": [{"name": "late", "payload": {"frame_index": 3, "delayed_ms": 40}}],
    }
    extended["channels"]["videoStream"]["messages"]["frameDelayed"] = {"$ref": "#/components/messages/FrameDelayed"}
    extended["operations"]["sendFrameDropped"]["messages"].append({"$ref": "#/channels/videoStream/messages/frameDelayed"})
    before, after = Contract(document), Contract(extended)
    coverage = ContractCoverage(after)
    _reach_everything(coverage, before)
    assert coverage.missing() == {"message": ["FrameDelayed"]}
    assert "FrameDelayed" in coverage.report()


def test_a_new_close_code_or_drop_cause_is_missing_until_reached() -> None:
    document = _document()
    extended = copy.deepcopy(document)
    extended["channels"]["videoStream"]["x-close-codes"]["1014"] = "bad_gateway; an upstream model server failed"
    extended["components"]["schemas"]["FrameDroppedPayload"]["properties"]["cause"]["enum"].append("expired")
    coverage = ContractCoverage(Contract(extended))
    _reach_everything(coverage, Contract(document))
    assert coverage.missing() == {"close code": [1014], "drop cause": ["expired"]}


def test_undeclared_traffic_is_reported(contract: Contract) -> None:
    coverage = ContractCoverage(contract)
    _reach_everything(coverage, contract)
    coverage.undeclared('{"frame_index": 0, "late": true}', "matches no declared message")
    coverage.closed(1006, None)
    assert coverage.unexpected() == [
        '{"frame_index": 0, "late": true}: matches no declared message',
        "close code 1006 (1x) is not in x-close-codes",
    ]
