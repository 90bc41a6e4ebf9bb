"""Results are converted to plain JSON values before they reach a client."""

from __future__ import annotations

import enum
import json
import math

import numpy as np
import pytest

from application.json_safe import JsonSafetyError, to_json_safe


class Colour(str, enum.Enum):  # noqa: UP042 -- the str mix-in is what is tested
    RED = "red"


def test_plain_values_pass_through_unchanged() -> None:
    value = {"a": [1, 2.5, "x", True, None], "b": {"c": -3}}
    assert to_json_safe(value) == value


def test_numpy_scalars_and_arrays_become_python_values() -> None:
    result = to_json_safe({"n": np.int64(7), "f": np.float32(0.5), "arr": np.array([[1, 2], [3, 4]]), "t": (1, 2)})
    assert result == {"n": 7, "f": 0.5, "arr": [[1, 2], [3, 4]], "t": [1, 2]}
    assert type(result["n"]) is int and type(result["f"]) is float
    json.dumps(result)


def test_str_enum_member_becomes_its_value() -> None:
    result = to_json_safe({"colour": Colour.RED})
    assert result == {"colour": "red"} and type(result["colour"]) is str


def test_bytes_are_refused_with_their_path() -> None:
    with pytest.raises(JsonSafetyError, match=r"^result\.detections\[1\]\.crop holds 3 raw bytes"):
        to_json_safe({"detections": [{"crop": "ok"}, {"crop": b"abc"}]})


@pytest.mark.parametrize("bad", [math.nan, math.inf, np.float64("nan")])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    with pytest.raises(JsonSafetyError, match=r"^result\.score is .*which JSON cannot carry"):
        to_json_safe({"score": bad})


def test_unknown_objects_are_refused_by_type_name() -> None:
    with pytest.raises(JsonSafetyError, match=r"^result\.thing is a object, which is not JSON-serialisable"):
        to_json_safe({"thing": object()})
