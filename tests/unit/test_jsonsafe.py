"""overopt.jsonsafe: numpy values, tuples and non-finite floats as JSON; the one converter every to_dict() and fits.json use."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from overopt.jsonsafe import dumps, json_safe


@pytest.mark.parametrize(
    "value, expected, kind",
    [
        (np.float32(0.5), 0.5, float),
        (np.float64(-1.25), -1.25, float),
        (np.int64(7), 7, int),
        (np.uint8(3), 3, int),
        (np.bool_(True), True, bool),
        (True, True, bool),  # a bool stays a bool (it is also an int)
        (2, 2, int),
        ("text", "text", str),
    ],
)
def test_numpy_scalars_become_python_numbers(value, expected, kind):
    converted = json_safe(value)
    assert converted == expected and type(converted) is kind


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("-inf")])
def test_non_finite_floats_become_none_unless_kept(value):
    assert json_safe(value) is None
    kept = json_safe(value, keep_non_finite=True)
    assert type(kept) is float and (math.isnan(kept) if math.isnan(value) else kept == value)


def test_containers_are_converted_all_the_way_down():
    value = {"ci": (np.float64(0.1), math.nan), "rmse": {"rl": np.float32(0.5), "bon": math.inf}, "bins": np.array([[1, 2], [3, 4]])}
    assert json_safe(value) == {"ci": [0.1, None], "rmse": {"rl": 0.5, "bon": None}, "bins": [[1, 2], [3, 4]]}
    assert json_safe(np.array(2.5)) == 2.5  # a 0-d array is one number
    assert json_safe(None) is None


def test_objects_with_to_dict_become_their_dict():
    @dataclass
    class Result:
        r: float

        def to_dict(self):
            return {"r": self.r, "n": np.int64(3)}

    assert json_safe([{"fit": Result(math.nan)}]) == [{"fit": {"r": None, "n": 3}}]


def test_what_json_cannot_write_is_left_for_json_to_reject():
    marker = object()
    assert json_safe(marker) is marker
    with pytest.raises(TypeError):
        dumps({"x": marker})


def test_dumps_writes_standard_json_and_passes_options_on():
    text = dumps({"b": np.float64(math.nan), "a": (np.int32(1), np.float32(0.25))}, indent=2, sort_keys=True)
    assert "NaN" not in text and text.startswith('{\n  "a"')
    assert json.loads(text) == {"a": [1, 0.25], "b": None}
    # What json.dumps already writes is written the same (no change of float repr, key order or layout).
    plain = {"x": 0.1 + 0.2, "y": [1, "z", None, True]}
    assert dumps(plain, indent=2) == json.dumps(plain, indent=2)
