"""Raw detector counts to the measured modulus that is phased: dark, flat field, mask,
threshold, region of interest, binning.

``Preprocessor(config, shape=(H, W))`` loads the dark, flat and mask files of a
:class:`~cdi_beamline.config.PreprocessConfig` (or takes arrays), checks them against each
other and the frame shape, and refuses at once what cannot work (a ROI outside the frame,
a file of the wrong shape, an all-masked ROI). :meth:`Preprocessor.apply` then turns
frames (B, H, W) into ``modulus (B, h, w)`` and one ``mask (h, w)``; an automatic ROI is
chosen once, from the first frames that show a peak, and kept for the run. A frame that
cannot be used (no peak in the ROI, NaN where measured) is flagged with the reason, never
raised on. numpy only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import PreprocessConfig
from .errors import CDIValueError
from .frames import MAX_SIZE, MIN_SIZE
from .io import file_sha256, mask_polarity, read_array, read_mask

__all__ = ["Preprocessed", "Preprocessor", "block_min"]


@dataclass
class Preprocessed:
    """What :meth:`Preprocessor.apply` returns.

    modulus : (B, h, w) float32, ``sqrt`` of the corrected, cropped, binned counts; a
        flagged frame's row is zeros
    mask : (h, w) bool, True = measured (shared by every frame of the run)
    reason : (B,) "" for a usable frame, else why it is flagged
    """

    modulus: np.ndarray
    mask: np.ndarray
    reason: list[str]


def block_min(image: np.ndarray) -> np.ndarray:
    """The dimmest pixel of every 2x2 block: (..., H, W) -> (..., H-1, W-1). An isolated hot
    pixel (or a pair, or a one-pixel line) cannot be a block's minimum; a Bragg peak, a few
    pixels wide, is."""
    a = np.asarray(image)
    return np.minimum(np.minimum(a[..., :-1, :-1], a[..., 1:, :-1]), np.minimum(a[..., :-1, 1:], a[..., 1:, 1:]))


class Preprocessor:
    """One run's preprocessing: the config, its loaded arrays, the ROI once chosen.

    Parameters
    ----------
    config : PreprocessConfig (default: nothing but the square root)
    dark, flat : (H, W) arrays instead of the config's files (not both for one item)
    mask : (H, W) True/nonzero = measured, e.g. from the detector's configuration; with
        the config's mask file too, a pixel is measured only if both say so
    shape : (H, W) of the raw frames, if known before the first frame (it is checked
        then); else taken from the arrays, or from the first frames applied

    Raises
    ------
    CDIValueError
        a file cannot be read; dark, flat or mask are not 2-D or disagree in shape with
        each other or ``shape``; the flat field has no valid pixel; the ROI (fixed, or the
        automatic ROI's size) does not fit in the frame; binning does not divide the frame
        (no ROI) or gives a side outside [MIN_SIZE, MAX_SIZE]; every pixel of the ROI is
        masked.
    """

    def __init__(
        self,
        config: PreprocessConfig | None = None,
        *,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        shape: tuple[int, int] | None = None,
    ):
        self.config = config = config or PreprocessConfig()
        self._sources: dict[str, dict[str, Any] | None] = {}
        self.dark = self._load("dark", config.dark, dark, lambda spec: read_array(spec))
        flat_arr = self._load("flat", config.flat, flat, lambda spec: read_array(spec))
        mask_arr = self._load("mask", config.mask, mask, lambda spec: read_mask(spec, config.mask_nonzero))
        self.shape: tuple[int, int] | None = None
        self._shape_from = ""
        if shape is not None:
            self._bind_shape(tuple(shape), "the frames")
        for name, arr in (("dark", self.dark), ("flat", flat_arr), ("mask", mask_arr)):
            if arr is not None:
                self._bind_shape(arr.shape, f"the {name}")
        self.measured = None if mask_arr is None else np.asarray(mask_arr) != 0
        self.gain: np.ndarray | None = None  # 1 / normalised flat where valid, 0 elsewhere
        if flat_arr is not None:
            valid = np.isfinite(flat_arr) & (flat_arr > 0)
            if self.measured is not None:
                valid &= self.measured
            if not valid.any():
                raise CDIValueError("the flat field has no valid pixel (finite and > 0) where measured")
            level = float(flat_arr[valid].mean())
            self.gain = np.where(valid, level / np.where(valid, flat_arr, 1.0), 0.0).astype(np.float32)
            self.measured = valid
            self._sources["flat"] = {**(self._sources["flat"] or {}), "level": level}
        if self.dark is not None:
            if np.iscomplexobj(self.dark) or not np.isfinite(self.dark).all():
                raise CDIValueError("the dark must be real and finite counts")
            self.dark = self.dark.astype(np.float32)
        if self.measured is not None and not self.measured.any():
            raise CDIValueError("the mask marks every pixel unmeasured")
        self.roi: tuple[int, int, int, int] | None = None
        if self.shape is not None:
            self._check_geometry()

    # ------------------------------------------------------------------ public
    @property
    def grid(self) -> tuple[int, int] | None:
        """(h, w) of the phased modulus: the ROI (or frame) divided by the binning; None
        until the frame shape is known."""
        if self.shape is None:
            return None
        h, w = self._roi_size()
        b = self.config.binning
        return h // b, w // b

    def choose_roi(self, frames: np.ndarray) -> tuple[int, int, int, int]:
        """The run's ROI ``(y0, x0, h, w)``: fixed, the whole frame, or — ``roi="auto"`` —
        chosen on the first call with a peak and kept: the ``roi_size`` square centred on
        the brightest pixel of the brightest 2x2 block (:func:`block_min`) of the corrected
        sum of the frames that show a peak (masked pixels read 0, isolated hot pixels cannot
        win), moved inside the frame if needed.

        Raises
        ------
        CDIValueError
            the frames show no peak to centre on (nothing chosen; a later call tries again),
            or an all-masked ROI.
        """
        stack = self._stack(frames)
        if self.roi is not None:
            return self.roi
        assert self.shape is not None  # bound by _stack
        H, W = self.shape
        if self.config.roi is None:
            self.roi = (0, 0, H, W)
        elif self.config.roi != "auto":
            self.roi = self.config.roi
        else:
            h, w = self._roi_size()
            summed = np.zeros((H, W), np.float64)
            for frame in stack:  # one corrected frame at a time: large detectors stay cheap
                corrected = np.nan_to_num(self._corrected(frame[None], (0, 0, H, W))[0], nan=0.0, posinf=0.0)
                if block_min(corrected).max() >= self.config.min_peak:
                    summed += corrected
            blocks = block_min(summed)
            if not blocks.max() > 0:
                raise CDIValueError(
                    f"no peak to centre the ROI on: none of these {len(stack)} frame(s) has a 2x2 block of "
                    f"min_peak {self.config.min_peak:g} counts per pixel"
                )
            by, bx = np.unravel_index(int(np.argmax(blocks)), blocks.shape)
            dy, dx = np.unravel_index(int(np.argmax(summed[by : by + 2, bx : bx + 2])), (2, 2))
            cy, cx = int(by + dy), int(bx + dx)  # the brightest pixel of the brightest block
            y0 = int(np.clip(cy - h // 2, 0, H - h))
            x0 = int(np.clip(cx - w // 2, 0, W - w))
            self._check_roi_measured((y0, x0, h, w))
            self.roi = (y0, x0, h, w)
        return self.roi

    def apply(self, frames: np.ndarray) -> Preprocessed:
        """Raw counts (B, H, W) or (H, W) -> :class:`Preprocessed` (modulus (B, h, w)).

        Per frame, in order: dark subtracted and clipped at 0, divided by the normalised
        flat, masked pixels 0, counts below ``threshold`` 0, ROI crop, ``binning`` sums,
        square root. Flagged (row of zeros, reason given): NaN/inf in a measured pixel; no
        peak (the ROI's brightest 2x2 block, :func:`block_min`, < ``min_peak`` counts);
        every frame of a call that could not choose the automatic ROI.

        Raises
        ------
        CDIValueError
            only for the whole call: frames not 2-D/3-D or not of the run's shape.
        """
        stack = self._stack(frames)
        B = len(stack)
        assert self.shape is not None
        h, w = self._roi_size()
        b = self.config.binning
        modulus = np.zeros((B, h // b, w // b), np.float32)
        try:
            roi = self.choose_roi(stack)
        except CDIValueError as exc:
            return Preprocessed(modulus, np.zeros((h // b, w // b), bool), [f"no ROI: {exc}"] * B)
        counts = self._corrected(stack, roi)
        measured = self._measured(roi)
        reason = [""] * B
        bad = ~np.isfinite(counts)
        if measured is not None:
            bad &= measured
        n_bad = bad.sum(axis=(1, 2))
        counts[bad] = 0
        peaks = block_min(counts).max(axis=(1, 2))
        for i in range(B):
            if n_bad[i]:
                reason[i] = f"raw frame has {int(n_bad[i])} NaN/inf pixel(s) in the ROI where measured"
            elif not peaks[i] >= self.config.min_peak:
                reason[i] = (
                    f"no peak: the ROI's brightest 2x2 block holds {peaks[i]:.3g} counts per pixel "
                    f"< min_peak {self.config.min_peak:g}"
                )
        if b > 1:
            counts = counts.reshape(B, h // b, b, w // b, b).sum(axis=(2, 4))
        grid_mask = np.ones((h // b, w // b), bool)
        if measured is not None:  # a binned pixel is measured if all its pixels are
            grid_mask = np.asarray(measured.reshape(h // b, b, w // b, b).all(axis=(1, 3)))
        good = [i for i in range(B) if not reason[i]]
        modulus[good] = np.sqrt(counts[good])
        return Preprocessed(modulus, grid_mask, reason)

    def record(self) -> dict[str, Any]:
        """JSON-able record for the derived run's start document and OUT.h5: the config,
        the frame shape, the ROI chosen (None until chosen), binning, the phased grid and
        where dark, flat and mask came from (file and sha256, or the sha256 of the array
        given)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "frame_shape": None if self.shape is None else list(self.shape),
            "roi": None if self.roi is None else list(self.roi),
            "binning": self.config.binning,
            "grid": None if self.grid is None else list(self.grid),
            **{name: self._sources.get(name) for name in ("dark", "flat", "mask")},
        }

    # ----------------------------------------------------------------- helpers
    def _load(self, name: str, spec: str | None, given: np.ndarray | None, read) -> np.ndarray | None:
        """Read ``spec`` and/or take ``given`` (both: only for the mask, which is then their
        AND); record where it came from in ``_sources``."""
        if spec is not None and given is not None and name != "mask":
            raise CDIValueError(f"the {name} is given twice: as the file {spec} and as an array; give one")
        parts: list[np.ndarray] = []
        source: dict[str, Any] = {}
        if spec is not None:
            parts.append(np.asarray(read(spec)))
            source.update(file=spec, sha256=file_sha256(spec))
            if name == "mask":
                source["nonzero"] = self.config.mask_nonzero or mask_polarity(spec)
        if given is not None:
            parts.append(np.asarray(given))
            digest = hashlib.sha256(np.ascontiguousarray(parts[-1]).tobytes()).hexdigest()
            source["array"] = {"shape": list(parts[-1].shape), "dtype": str(parts[-1].dtype), "sha256": digest}
        for arr in parts:
            if arr.ndim != 2:
                raise CDIValueError(f"the {name} must be one (H, W) image, got shape {arr.shape}")
        if len(parts) == 2 and parts[0].shape != parts[1].shape:
            raise CDIValueError(
                f"the mask file {spec} has shape {parts[0].shape}, the mask given {parts[1].shape}: they must agree"
            )
        self._sources[name] = source or None
        if len(parts) == 2:
            return (parts[0] != 0) & (parts[1] != 0)
        return parts[0] if parts else None

    def _bind_shape(self, shape: tuple[int, ...], what: str) -> None:
        if self.shape is None:
            self.shape = (int(shape[0]), int(shape[1]))
            self._shape_from = what
        elif tuple(shape) != self.shape:
            raise CDIValueError(
                f"{what} has shape {tuple(shape)}, {self._shape_from} {self.shape}: dark, flat, mask and frames "
                "must have one shape"
            )

    def _roi_size(self) -> tuple[int, int]:
        roi = self.config.roi
        if roi == "auto":
            return self.config.roi_size, self.config.roi_size
        if roi is None:
            assert self.shape is not None
            return self.shape
        return roi[2], roi[3]

    def _check_geometry(self) -> None:
        assert self.shape is not None
        H, W = self.shape
        roi, b = self.config.roi, self.config.binning
        h, w = self._roi_size()
        if isinstance(roi, tuple):
            y0, x0 = roi[:2]
            if y0 + h > H or x0 + w > W:
                raise CDIValueError(
                    f"roi (y0, x0, h, w) = {roi} reaches rows {y0}..{y0 + h - 1}, cols {x0}..{x0 + w - 1}: "
                    f"outside the {H}x{W} frame"
                )
        elif roi == "auto" and (h > H or w > W):
            raise CDIValueError(f"roi_size {h} does not fit in the {H}x{W} frame")
        elif roi is None and (H % b or W % b):
            raise CDIValueError(f"binning {b} does not divide the {H}x{W} frame; give a ROI")
        gh, gw = h // b, w // b
        if not (MIN_SIZE <= gh <= MAX_SIZE and MIN_SIZE <= gw <= MAX_SIZE):
            raise CDIValueError(
                f"a {h}x{w} ROI binned by {b} is phased on a {gh}x{gw} grid: each side must be in [{MIN_SIZE}, {MAX_SIZE}]"
            )
        if isinstance(roi, tuple):
            self._check_roi_measured(roi)

    def _check_roi_measured(self, roi: tuple[int, int, int, int]) -> None:
        measured = self._measured(roi)
        if measured is not None and not measured.any():
            raise CDIValueError(f"every pixel of the ROI (y0, x0, h, w) = {roi} is masked")

    def _measured(self, roi: tuple[int, int, int, int]) -> np.ndarray | None:
        if self.measured is None:
            return None
        y0, x0, h, w = roi
        return self.measured[y0 : y0 + h, x0 : x0 + w]

    def _stack(self, frames: np.ndarray) -> np.ndarray:
        stack = np.asarray(frames)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3 or np.iscomplexobj(stack) or not np.issubdtype(stack.dtype, np.number):
            raise CDIValueError(f"frames must be real counts (H, W) or (B, H, W), got {stack.dtype} {stack.shape}")
        if self.shape is None:
            self._bind_shape(stack.shape[1:], "the frames")
            self._check_geometry()
        elif stack.shape[1:] != self.shape:
            raise CDIValueError(f"frames of shape {stack.shape[1:]} do not match the run's {self.shape}")
        return stack

    def _corrected(self, stack: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
        """Dark, flat, mask and threshold on the ROI's pixels: (B, h, w) float32 counts."""
        y0, x0, h, w = roi
        cut = np.s_[y0 : y0 + h, x0 : x0 + w]
        counts = stack[:, y0 : y0 + h, x0 : x0 + w].astype(np.float32)  # a copy: the caller's frames stay
        if self.dark is not None:
            counts -= self.dark[cut]
            np.maximum(counts, 0, out=counts)
        if self.gain is not None:
            counts *= self.gain[cut]
        measured = self._measured(roi)
        if measured is not None:
            counts[:, ~measured] = 0
        if self.config.threshold > 0:
            counts[counts < self.config.threshold] = 0
        return counts
