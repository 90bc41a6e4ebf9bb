"""The generated models are the document's, now: regenerated when asyncapi.yaml changes, and agreeing with it.

The first two cases fail when asyncapi.yaml was edited without `make models`:
one compares the document's hash with the one recorded in the generated file
(instant, and names the fix), the other runs the generator and compares its
output with the committed copy (also catches a hand edit, or a generator
upgrade that changes the code).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from contracts import generate_models
from contracts.asyncapi_doc import DEFAULT_PATH, Contract
from contracts.client import message_models, parse_message


def test_the_generated_models_were_made_from_this_asyncapi_yaml() -> None:
    assert generate_models.recorded_hash() == generate_models.document_hash(), (
        "asyncapi.yaml changed since contracts/generated/ was generated: run `make models`"
    )


def test_regenerating_gives_the_committed_models() -> None:
    assert generate_models.stale_files() == [], "the generated types are not what the generator makes of asyncapi.yaml: run `make models`"


def test_a_changed_document_is_detected_as_stale(tmp_path: Path) -> None:
    document = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    changed = copy.deepcopy(document)
    changed["components"]["schemas"]["FrameDroppedPayload"]["properties"]["cause"]["enum"].append("overheated")
    path = tmp_path / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
    assert generate_models.document_hash(path) != generate_models.recorded_hash()
    assert generate_models.stale_files(path) == [
        "contracts/generated/messages.py",
        "clients/python/forgesyte_stream_client/generated/messages.py",
        "clients/web/messages.js",
    ]


def test_the_client_package_and_the_page_carry_the_documents_hash() -> None:
    """The client's copy and the page's typedefs are regenerated with the server's models, never on their own."""
    digest = generate_models.document_hash()
    assert generate_models.recorded_hash(generate_models.CLIENT_GENERATED_DIR / "messages.py") == digest
    assert f"// source-sha256: {digest}" in generate_models.WEB_TYPES_FILE.read_text(encoding="utf-8")


def test_the_page_gets_the_contracts_close_codes_and_causes(contract: Contract) -> None:
    text = generate_models.WEB_TYPES_FILE.read_text(encoding="utf-8")
    for cause in ("lagging", "buffer_full", "closing", "shutdown"):
        assert f'"{cause}"' in text
    for code in ("1008", "1012", "1013"):
        assert f'"{code}":' in text
    for name in contract.server_messages():
        payload = name + "Payload"
        assert f"@typedef {{Object}} {payload}" in text, payload


def test_every_declared_server_message_has_a_generated_model(contract: Contract) -> None:
    assert set(message_models(contract)) == set(contract.server_messages())


def test_each_example_parses_into_its_own_generated_model(contract: Contract) -> None:
    models = message_models(contract)
    examples = list(contract.examples())
    assert {name for name, _, _ in examples} == set(contract.server_messages())
    for name, example, payload in examples:
        parsed = parse_message(models[name], payload)
        # by_alias: the wire names, such as a line's "in", which is a Python keyword and so a field "in_".
        assert parsed.model_dump(mode="json", exclude_unset=True, by_alias=True) == payload, f"{name}:{example}"


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("FrameDropped", {"frame_index": 1, "dropped": True, "cause": "tired"}),
        ("FrameResult", {"frame_index": -1, "result": {}}),
        ("FrameResult", {"frame_index": 1, "result": {"line_counts": {"door": {"in": -1, "out": 0}}}}),
        ("FrameResult", {"frame_index": 1, "result": {"line_counts": {"door": {"in": 1}}}}),
        ("FrameResult", {"frame_index": 1, "result": {"zone_counts": {"z": {"occupancy": 1}}}}),
        ("SlowDownWarning", {"warning": "slow_down", "drop_rate": 1.5, "suggested_fps": None, "processing_ms": None, "interval_ms": None}),
        ("PipelineFailureError", {"error": "pipeline_failure", "detail": "x"}),
        ("InvalidFrameError", {"error": "invalid_message", "detail": "x"}),
    ],
)
def test_the_generated_models_refuse_what_the_schema_refuses(contract: Contract, name: str, payload: dict) -> None:
    with pytest.raises(ValidationError):
        parse_message(message_models(contract)[name], payload)
