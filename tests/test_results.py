"""The derived-run schema: rows, their dtypes, the descriptor's keys, key and URI helpers."""

from types import SimpleNamespace

import numpy as np
import pytest

from cdi_beamline.results import (
    ARRAY_DTYPES,
    CHI2_HISTORY_LENGTH,
    RECONSTRUCTED,
    RESULT_KEYS,
    SCALAR_DTYPES,
    STATUSES,
    ResultRows,
    counts,
    data_keys,
    decimate_history,
    find_image_key,
    format_counts,
    history_iterations,
    status_counts,
    uri_to_path,
)


def _batch(b=3, shape=(4, 5), iterations=100):
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        amplitude=rng.random((b, *shape)),
        phase=rng.random((b, *shape)),
        support=rng.random((b, *shape)) > 0.5,
        start_amplitude=rng.random((b, *shape)),
        start_phase=rng.random((b, *shape)),
        chi2=rng.random(b),
        chi2_history=rng.random((b, iterations)),
        scale=rng.random(b) * 100,
        status=["ok", "bad", "low_signal"][:b],
        reason=["", "frame is all zero", "peak 31 counts < 100"][:b],
    )


def test_rows_from_a_batch_take_the_schema_dtypes():
    rows = ResultRows.from_batch([7, 8, 9], _batch())
    assert len(rows) == 3 and rows.shape == (4, 5)
    assert rows.amplitude.dtype == np.float32 and rows.support.dtype == bool and rows.chi2.dtype == np.float64
    assert rows.raw_seq_num.dtype == np.int64 and rows.status.tolist() == ["ok", "bad", "low_signal"]
    assert rows.chi2_history.shape == (3, CHI2_HISTORY_LENGTH) and rows.chi2_history.dtype == np.float32
    assert rows.start_amplitude.shape == (3, 4, 5) and rows.scale.dtype == np.float64
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
    assert both.status.tolist() == ["ok", "dropped", "bad", "low_signal", "dropped"]
    assert np.isnan(failed.chi2_history).all() and np.isnan(failed.start_phase).all() and np.isnan(failed.scale).all()
    assert len(ResultRows.empty()) == 0


def test_rows_refuse_what_the_schema_does_not_hold():
    with pytest.raises(ValueError, match="one row per frame"):
        ResultRows.from_batch([1, 2], _batch())
    with pytest.raises(ValueError, match="unknown status"):
        ResultRows.failed([1], (4, 5), "lost", "?")  # type: ignore[arg-type]


def test_descriptor_keys_counts_and_helpers():
    keys = data_keys((64, 32))
    assert keys["amplitude"]["shape"] == [64, 32] and keys["amplitude"]["external"] == "STREAM:"
    assert keys["start_phase"]["shape"] == [64, 32] and keys["chi2_history"]["shape"] == [CHI2_HISTORY_LENGTH]
    assert keys["status"]["dtype"] == "string" and keys["chi2"]["dtype_numpy"] == "<f8"
    assert set(keys) == set(RESULT_KEYS)
    assert counts({"cdi_counts": {"bad": 2}})["bad"] == 2 and counts({})["reconstructed"] == 0
    raw = {"x": {"dtype": "number", "shape": []}, "img": {"dtype": "array", "shape": [1, 64, 64]}}
    assert find_image_key(raw) == "img" and find_image_key(raw, "x") == "x" and find_image_key(raw, "y") is None
    assert str(uri_to_path("file://localhost/tmp/a%20b.h5")) == "/tmp/a b.h5"
    assert str(uri_to_path("/tmp/c.h5")) == "/tmp/c.h5"


def test_the_history_is_decimated_to_a_fixed_length_from_first_to_last():
    history = np.arange(2 * 600, dtype=np.float32).reshape(2, 600)
    short = decimate_history(history)
    assert short.shape == (2, CHI2_HISTORY_LENGTH)
    assert short[0, 0] == 0 and short[0, -1] == 599 and short[1, -1] == 1199  # the start's chi² and the last
    np.testing.assert_array_equal(short[1], history[1, history_iterations(600)])
    assert (np.diff(history_iterations(600)) > 0).all()
    few = history_iterations(5)  # fewer iterations than points: each is kept, repeated
    assert set(few.tolist()) == {0, 1, 2, 3, 4} and few[-1] == 4
    assert np.isnan(decimate_history(np.zeros((3, 0)))).all()  # iterations=0: no history


def test_status_counts_and_their_totals():
    status = ["ok", "low_signal", "low_signal", "not_converged", "bad", "error", "dropped"]
    c = status_counts(status)
    assert [c[s] for s in STATUSES] == [1, 2, 1, 1, 1, 1]
    assert c["reconstructed"] == 4 and c["flagged"] == 5  # flagged: neither ok nor dropped
    assert set(RECONSTRUCTED) == {"ok", "low_signal", "not_converged"}
    assert format_counts(c) == "ok 1, low_signal 2, not_converged 1, bad 1, error 1, dropped 1"
    assert format_counts(status_counts([])) == "no frames"
    assert counts({"cdi_counts": c}) == {"received": 0, **c}


def test_rows_of_a_run_written_before_the_new_keys_read_as_nan():
    old = {
        k: v
        for k, v in ResultRows.from_batch([1, 2, 3], _batch()).to_dict().items()
        if k in ("raw_seq_num", "amplitude", "phase", "support", "chi2", "status", "reason")
    }
    rows = ResultRows.from_columns(old)
    assert np.isnan(rows.chi2_history).all() and np.isnan(rows.start_amplitude).all() and np.isnan(rows.scale).all()
    np.testing.assert_array_equal(rows.chi2, old["chi2"])
