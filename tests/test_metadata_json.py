"""The C core's cJSON writer: exact round trip, and clear errors for values JSON cannot hold."""
import json
import math

import pytest

from nnunet_export import ExportError, _core


def test_round_trip_exact():
    doc = {"a": [1, -2, 2.5, 1e-300, 0.1, 1 / 3, 2.0, None, True, False, "ü∑\"\n"],
           "b": {"c": (1, 2)}, "n": 2**63 - 1, "m": -(2**63), "f": 0.30000000000000004}
    back = json.loads(_core.metadata_to_json(doc))
    assert back == {**doc, "b": {"c": [1, 2]}}
    assert isinstance(back["a"][6], float)
    assert json.loads(_core.metadata_to_json(doc, indent=False)) == back


@pytest.mark.parametrize("doc, message", [
    ({"x": math.nan}, r"metadata\['x'\] is nan"),
    ({"x": [math.inf]}, r"metadata\['x'\]\[0\] is inf"),
    ({1: 2}, "key at metadata must be a str"),
    ({"x": {"y": object()}}, r"metadata\['x'\]\['y'\] has unsupported type object"),
    ({"x": 2**63}, "outside the 64-bit range"),
])
def test_errors_name_the_path(doc, message):
    with pytest.raises(ExportError, match=message):
        _core.metadata_to_json(doc)


def test_depth_limit():
    doc = []
    for _ in range(100):
        doc = [doc]
    with pytest.raises(ExportError, match="nests deeper than 64"):
        _core.metadata_to_json(doc)
