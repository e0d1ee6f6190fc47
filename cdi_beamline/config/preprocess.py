"""PreprocessConfig: dark, flat field, detector mask, threshold, region of interest, binning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ._base import FrozenModel

__all__ = ["PreprocessConfig"]


class PreprocessConfig(FrozenModel):
    """How :class:`cdi_beamline.preprocess.Preprocessor` turns raw detector counts (B, H, W)
    into the measured modulus (B, h, w) that is phased, in this order: dark subtraction
    (clipped at 0), flat-field division, mask, threshold, region of interest, binning,
    square root. Files are named as :func:`cdi_beamline.io.read_array` reads them
    (``FILE.h5:/path``, ``FILE.npz:key``, .npy, .edf, .tif, .cxi)."""

    dark: str | None = None
    """Dark image (H, W), counts: subtracted from every frame, the result clipped at 0."""

    flat: str | None = None
    """Flat field (whitefield) (H, W): frames are divided by it, normalised to mean 1 over
    the pixels where it is valid (finite and > 0); pixels where it is not valid become
    unmeasured."""

    mask: str | None = None
    """Detector mask (H, W): gaps, hot and dead pixels. Read with the polarity of
    ``mask_nonzero``; inside the package True always means a measured pixel."""

    mask_nonzero: Literal["measured", "bad"] | None = None
    """What a nonzero pixel of the ``mask`` file means. None: by format — ``bad`` for CXI
    files (``.cxi``, or a dataset ``entry_*/instrument_*/detector_*/mask``: CXI marks bad
    pixels with nonzero bits), ``measured`` for everything else."""

    threshold: float = Field(0.0, ge=0)
    """Counts below this (after dark and flat) are set to 0: a photon threshold."""

    roi: Literal["auto"] | tuple[int, int, int, int] | None = None
    """Region of interest ``(y0, x0, h, w)`` in detector pixels; ``"auto"``: a ``roi_size``
    square centred on the Bragg peak, chosen once per run from the run's first frames;
    None: the whole frame."""

    roi_size: int = Field(64, ge=2, le=4096)
    """Side of the automatic ROI (pixels, before binning)."""

    binning: int = Field(1, ge=1, le=64)
    """Sum the counts of ``binning`` x ``binning`` pixels after the ROI crop; a binned pixel
    is measured only if all its pixels are. The phased grid is ROI / binning."""

    min_peak: float = Field(5.0, ge=0)
    """A frame is flagged ``no peak``, not phased, when no 2x2 block of its ROI has every
    pixel at this many counts or more (so isolated hot pixels do not count as a peak)."""

    @field_validator("roi")
    @classmethod
    def _roi_in_pixels(cls, roi):
        if isinstance(roi, tuple):
            y0, x0, h, w = roi
            if y0 < 0 or x0 < 0:
                raise ValueError(f"roi (y0, x0, h, w) must start inside the frame (y0, x0 >= 0), got {roi}")
            if h < 2 or w < 2:
                raise ValueError(f"roi (y0, x0, h, w) must be at least 2x2 pixels, got {roi}")
        return roi

    @model_validator(mode="after")
    def _binning_divides_the_roi(self) -> PreprocessConfig:
        h, w = (self.roi[2], self.roi[3]) if isinstance(self.roi, tuple) else (self.roi_size, self.roi_size)
        if self.roi is not None and (h % self.binning or w % self.binning):
            raise ValueError(f"binning {self.binning} does not divide the ROI's {h}x{w} pixels")
        if self.mask_nonzero is not None and self.mask is None:
            raise ValueError("mask_nonzero is given but there is no mask file")
        return self
