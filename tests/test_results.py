"""The derived-run schema: rows, their dtypes, the descriptor's keys, key and URI helpers."""

from types import SimpleNamespace

import numpy as np
import pytest

from cdi_beamline.results import (
    ARRAY_DTYPES,
    RESULT_KEYS,
    SCALAR_DTYPES,
    ResultRows,
    counts,
    data_keys,
    find_image_key,
    uri_to_path,
)


def _batch(b=3, shape=(4, 5)):
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        amplitude=rng.random((b, *shape)),
        phase=rng.random((b, *shape)),
        support=rng.random((b, *shape)) > 0.5,
        chi2=rng.random(b),
        status=["ok", "bad", "ok"][:b],
        reason=["", "frame is all zero", ""][:b],
    )


def test_rows_from_a_batch_take_the_schema_dtypes():
    rows = ResultRows.from_batch([7, 8, 9], _batch())
    assert len(rows) == 3 and rows.shape == (4, 5)
    assert rows.amplitude.dtype == np.float32 and rows.support.dtype == bool and rows.chi2.dtype == np.float64
    assert rows.raw_seq_num.dtype == np.int64 and rows.status.tolist() == ["ok", "bad", "ok"]
    arrays = rows.arrays()
    assert list(arrays) == list(ARRAY_DTYPES) and arrays["support"].dtype == np.uint8
    assert list(rows.event_data()) == list(SCALAR_DTYPES) and rows.event_data()["raw_seq_num"] == [7, 8, 9]
    assert list(rows.to_dict()) == list(RESULT_KEYS)
    back = ResultRows.from_columns(rows.to_dict())
    for key in RESULT_KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(rows, key))


def test_failed_concat_take_and_sorted():
    failed = ResultRows.failed([5, 2], (4, 5), "dropped", "queue full")
    assert np.isnan(failed.amplitude).all() and not failed.support.any() and np.isnan(failed.chi2).all()
    both = ResultRows.concat([ResultRows.from_batch([1, 3, 4], _batch()), failed]).sorted()
    assert both.raw_seq_num.tolist() == [1, 2, 3, 4, 5]
    assert both.status.tolist() == ["ok", "dropped", "bad", "ok", "dropped"]
    assert len(ResultRows.empty()) == 0


def test_rows_refuse_what_the_schema_does_not_hold():
    with pytest.raises(ValueError, match="one row per frame"):
        ResultRows.from_batch([1, 2], _batch())
    with pytest.raises(ValueError, match="unknown status"):
        ResultRows.failed([1], (4, 5), "lost", "?")  # type: ignore[arg-type]


def test_descriptor_keys_counts_and_helpers():
    keys = data_keys((64, 32))
    assert keys["amplitude"]["shape"] == [64, 32] and keys["amplitude"]["external"] == "STREAM:"
    assert keys["status"]["dtype"] == "string" and keys["chi2"]["dtype_numpy"] == "<f8"
    assert set(keys) == set(RESULT_KEYS)
    assert counts({"cdi_counts": {"bad": 2}})["bad"] == 2 and counts({})["reconstructed"] == 0
    raw = {"x": {"dtype": "number", "shape": []}, "img": {"dtype": "array", "shape": [1, 64, 64]}}
    assert find_image_key(raw) == "img" and find_image_key(raw, "x") == "x" and find_image_key(raw, "y") is None
    assert str(uri_to_path("file://localhost/tmp/a%20b.h5")) == "/tmp/a b.h5"
    assert str(uri_to_path("/tmp/c.h5")) == "/tmp/c.h5"
