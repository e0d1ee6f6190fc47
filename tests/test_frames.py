"""The one validation point: each reason :func:`validate_frame` gives, in its order, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from cdi_beamline.frames import MAX_SIZE, MIN_SIZE, validate_frame
from cdi_beamline.pipeline import validate_frame as engine_validate_frame

N = 64


def _with(value, at=(3, 4), n=1, shape=(N, N)):
    frame = np.ones(shape)
    for k in range(n):
        frame[at[0], at[1] + k] = value
    return frame


@pytest.mark.parametrize(
    "frame, reason",
    [
        (np.ones((N, N), complex), "frame is complex (complex128); expected real intensities or moduli"),
        (np.array([["a"] * N] * N), "frame has non-numeric dtype <U1"),
        (np.ones((2, N, N)), "frame has rank 3 (shape (2, 64, 64)); expected a 2-D (H, W) pattern"),
        (np.ones(N), "frame has rank 1 (shape (64,)); expected a 2-D (H, W) pattern"),
        (np.ones((MIN_SIZE - 1, N)), f"frame size {MIN_SIZE - 1}x64 is not supported: each side must be in [32, 1024]"),
        (np.ones((N, MAX_SIZE + 1)), f"frame size 64x{MAX_SIZE + 1} is not supported: each side must be in [32, 1024]"),
        (np.ones((N, 70)), "frame shape 64x70 differs from the batch's 64x64"),
        (np.ones((70, N)), "frame shape 70x64 differs from the batch's 64x64"),
        (_with(np.nan), "frame contains 1 NaN pixel(s)"),
        (_with(np.nan, n=3), "frame contains 3 NaN pixel(s)"),
        (_with(np.inf, n=2), "frame contains 2 inf pixel(s)"),
        (_with(-np.inf), "frame contains 1 inf pixel(s)"),
        (np.where(_with(np.inf) > 1, np.inf, _with(np.nan, at=(5, 5))), "frame contains 1 NaN and 1 inf pixel(s)"),
        (_with(-0.5, n=2), "frame contains 2 negative pixel(s) (min -0.5); intensities must be >= 0"),
        (np.zeros((N, N)), "frame is all zero"),
    ],
)
def test_each_reason_exactly(frame, reason):
    assert validate_frame(frame, (N, N)) == reason


def test_good_frames_pass_at_the_size_limits_and_any_real_dtype():
    for shape in ((MIN_SIZE, MIN_SIZE), (MIN_SIZE, MAX_SIZE), (MAX_SIZE, MIN_SIZE)):
        assert validate_frame(np.ones(shape)) is None, shape
    for dtype in (np.uint16, np.int32, np.float32, np.float64, bool):
        assert validate_frame(np.ones((N, N), dtype), (N, N)) is None, dtype
    zeros_but_one = np.zeros((N, N))
    zeros_but_one[0, 0] = 1e-30  # one tiny photon count is data, zero pixels are fine
    assert validate_frame(zeros_but_one) is None
    assert validate_frame(np.ones((N, N)), [N, N]) is None  # a list shape is a shape
    assert validate_frame(np.ones((N, 48))) is None  # no expected shape: any supported size


def test_the_order_of_the_checks():
    # rank before size, size before the expected shape, NaN before negatives, negatives before zeros
    assert "rank" in validate_frame(np.ones((2, 8, 8)), (N, N))
    assert "not supported" in validate_frame(np.ones((8, 8)), (N, N))
    both = _with(np.nan)
    both[0, 0] = -1
    assert "NaN" in validate_frame(both)
    assert "negative" in validate_frame(-np.ones((N, N)))
    assert "complex" in validate_frame(np.ones((2, 8), complex))


def test_the_expected_shape_is_read_as_rows_by_columns():
    assert validate_frame(np.ones((N, N)), (N, 70)) == "frame shape 64x64 differs from the batch's 64x70"
    assert validate_frame(np.ones((N, N)), (70, N)) == "frame shape 64x64 differs from the batch's 70x64"


def test_saturation():
    frame = _with(100.0, n=2)
    assert validate_frame(frame, saturation=100.0) == "frame has 2 pixel(s) at or above the saturation level 100"
    assert validate_frame(frame, saturation=100.5) is None
    assert validate_frame(frame, saturation=None) is None
    assert validate_frame(np.ones((N, N)), saturation=1.0) == (
        f"frame has {N * N} pixel(s) at or above the saturation level 1"
    )


def test_the_engine_uses_this_one():
    assert engine_validate_frame is validate_frame
