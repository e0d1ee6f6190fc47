"""The spool's JSON Lines codec keeps documents, arrays included, exactly."""

import numpy as np
import pytest

from cdi_beamline.tiled import decode_line, encode_line


def test_round_trip_keeps_dtype_shape_and_values():
    doc = {
        "uid": "u",
        "data": {"img": np.arange(12, dtype="<u2").reshape(3, 4), "x": np.float32(1.5), "n": np.int64(7)},
        "nested": [{"a": np.array([1.0, np.nan])}],
    }
    line = encode_line("event", doc)
    assert line.endswith("\n") and line.count("\n") == 1
    name, back = decode_line(line)
    assert name == "event"
    img = back["data"]["img"]
    assert img.dtype == np.dtype("<u2") and img.shape == (3, 4) and (img == doc["data"]["img"]).all()
    assert img.flags.writeable  # a copy, not a view of the decoded bytes
    assert back["data"]["x"] == 1.5 and back["data"]["n"] == 7
    np.testing.assert_array_equal(back["nested"][0]["a"], [1.0, np.nan])


def test_unknown_objects_are_refused():
    with pytest.raises(TypeError, match="cannot spool object"):
        encode_line("event", {"x": object()})
