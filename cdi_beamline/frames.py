"""The one place that decides whether a detector frame can be reconstructed.

:func:`validate_frame` is called by the engine (:class:`cdi_beamline.pipeline.Reconstructor`,
which re-exports it), by the live assembler for frames that cannot join a batch, and by the
Tango reconstructor; nothing else re-implements its checks. numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_SIZE", "MIN_SIZE", "saturation_level", "validate_frame"]

#: Supported frame sides (pixels), inclusive.
MIN_SIZE, MAX_SIZE = 32, 1024


def saturation_level(dtype: np.dtype | type, saturation: float | str | None) -> float | None:
    """The level at or above which a pixel of a ``dtype`` frame is saturated, or None (no check).

    ``saturation``: a number (the detector's declared limit, in the frame's units), None,
    or ``"dtype"``: the maximum of an integer dtype — where counting detectors (Eiger, Pilatus,
    Lambda, Medipix) put saturated and overflowed pixels, and where clipping puts them; a
    floating-point or boolean frame has no such limit.
    """
    if saturation != "dtype":
        return None if saturation is None else float(saturation)
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None


def validate_frame(
    frame: np.ndarray, expected_shape: tuple[int, int] | None = None, *, saturation: float | str | None = None
) -> str | None:
    """Why ``frame`` cannot be reconstructed, or None if it can.

    Checks, in order: numeric real dtype, rank 2, size within [MIN_SIZE, MAX_SIZE],
    ``expected_shape``, NaN/inf, negative values, all zero, saturation (a level, or
    ``"dtype"``: see :func:`saturation_level`).
    """
    frame = np.asarray(frame)
    if np.iscomplexobj(frame):
        return f"frame is complex ({frame.dtype}); expected real intensities or moduli"
    if not (np.issubdtype(frame.dtype, np.number) or frame.dtype == np.bool_):
        return f"frame has non-numeric dtype {frame.dtype}"
    if frame.ndim != 2:
        return f"frame has rank {frame.ndim} (shape {frame.shape}); expected a 2-D (H, W) pattern"
    H, W = frame.shape
    if not (MIN_SIZE <= H <= MAX_SIZE and MIN_SIZE <= W <= MAX_SIZE):
        return f"frame size {H}x{W} is not supported: each side must be in [{MIN_SIZE}, {MAX_SIZE}]"
    if expected_shape is not None and tuple(expected_shape) != (H, W):
        return f"frame shape {H}x{W} differs from the batch's {expected_shape[0]}x{expected_shape[1]}"
    finite = np.isfinite(frame)
    if not finite.all():
        n_nan = int(np.isnan(frame).sum())
        n_inf = int((~finite).sum()) - n_nan
        what = " and ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if s)
        return f"frame contains {what} pixel(s)"
    n_neg = int((frame < 0).sum())
    if n_neg:
        return f"frame contains {n_neg} negative pixel(s) (min {frame.min():.3g}); intensities must be >= 0"
    if not frame.any():
        return "frame is all zero"
    level = saturation_level(frame.dtype, saturation)
    if level is not None:
        n_sat = int((frame >= level).sum())
        if n_sat:
            why = f" (the {frame.dtype} maximum)" if saturation == "dtype" else ""
            return f"frame has {n_sat} pixel(s) at or above the saturation level {level:g}{why}"
    return None
