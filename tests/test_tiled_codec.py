"""The JSON codec (spool lines, 0MQ wire) keeps documents, arrays included, exactly, and
never runs what a message carries."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from cdi_beamline.tiled import decode_document, decode_line, encode_document, encode_line


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
    with pytest.raises(TypeError, match="cannot encode object"):
        encode_line("event", {"x": object()})


def test_wire_round_trip_keeps_arrays():
    doc = {"uid": "u", "data": {"img": np.arange(6, dtype="<f4").reshape(2, 3)}, "seq_num": 3}
    back = decode_document(encode_document(doc))
    assert back["seq_num"] == 3 and back["data"]["img"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back["data"]["img"], doc["data"]["img"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("message", ["pickle", b"[1, 2]", b"not json"])
def test_wire_refuses_what_is_not_a_json_document(message, tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps({"payload": _Payload(marker)}) if message == "pickle" else message
    with pytest.raises(ValueError):
        decode_document(data)
    assert not marker.exists()
