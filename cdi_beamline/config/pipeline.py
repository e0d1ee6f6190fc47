"""ReconstructorConfig (initialisation + refinement, batching, input quantity)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from ._base import FrozenModel
from .refine import SEEDED_SCHEDULE, SEEDED_SHRINKWRAP_START, RefineConfig
from .schedule import parse_schedule

__all__ = ["LIVE_ITERATIONS", "QualityConfig", "ReconstructorConfig"]

LIVE_ITERATIONS = 100
"""Refinement iterations of the live preview (demo, live worker, profile, Tango): the
schedule scaled to this keeps up with a scan on a 2-core CPU; offline runs keep the
schedule's own 600."""


class QualityConfig(FrozenModel):
    """When a reconstructed frame is flagged ``not_converged`` or ``low_signal`` (None turns a
    check off).

    A frame is *not converged* when its chi² exceeds ``max_chi2`` or its shrink-wrapped support
    fills ``max_support_fill`` of Support 2 or more (the support grew to its bound: what
    refinement does with noise). Such a frame is *low signal* instead when its brightest
    measured pixel holds fewer than ``min_peak_counts`` counts: too few photons for the
    oversampled pattern to pin the object down. Frames that reconstruct well stay ``ok``
    whatever their scale (noiseless simulations are not in counts).

    Calibrated with CNN start + 100 iterations, seed 0 (2-core x86-64 CPU, 2026-12-03). APS
    34-ID-C rocking scan: the 82 frames whose peak is below 100 counts all end with the support
    at >= 99.8 % of Support 2 (chi² 0.07-0.24); at the top of the rocking curve (frames
    85-115, peaks 2.5e3-1.2e5 counts) fill <= 59 %, chi² <= 0.011; 61 of the 201 frames stay
    ``ok`` (64-132, less the side frames whose support reaches 80 %). Simulated patterns, 48
    per level, flagged: 10^3 photons (median peak 23 counts) 48, 3·10^3 19, 10^4 1, 3·10^4 1,
    10^5 and 10^6 none, noiseless none (fill <= 37 %, chi² <= 0.005).
    """

    max_chi2: float | None = Field(0.1, gt=0.0)
    """chi² (eq. 5, scale invariant) above which a frame is not converged."""

    max_support_fill: float | None = Field(0.8, gt=0.0, le=1.0)
    """Fraction of Support 2's area at or above which the support is at its bound (with
    shrink-wrap only: a fixed support is the user's)."""

    min_peak_counts: float | None = Field(100.0, ge=0.0)
    """Counts (intensity units) of the brightest measured pixel below which a frame that is not
    converged is ``low_signal``."""


class ReconstructorConfig(FrozenModel):
    """How :class:`cdi_beamline.pipeline.Reconstructor` turns frames into objects."""

    init: Literal["cnn", "random", "support", "nns"] = "cnn"
    """Start of the refinement (the paper's Fig. 5): the CNN's object and support (the
    default; for 64x64 frames, and larger ones as ``cnn_large_frames`` says; other sizes fall
    back to random, and say so), random phases in a rectangle, random phases in a given
    support, or the nearest neighbour of a simulated set."""

    refine: RefineConfig = Field(default_factory=RefineConfig)
    """Schedule, shrink-wrap and supports of the iterative refinement, exactly as they run:
    validation scales them to ``iterations``. Unless the schedule or the shrink-wrap start
    is given, a seeded start (``init`` cnn or nns) gets ``SEEDED_SCHEDULE`` with shrink-wrap
    from ``SEEDED_SHRINKWRAP_START`` (:mod:`cdi_beamline.config.refine`), a random one the
    paper's."""

    random_refine: RefineConfig | None = None
    """The refinement of a frame that the ``cnn`` or ``nns`` start cannot seed (another size:
    it starts from random phases): what ``refine`` would be for ``init="random"``. Set by
    validation with the seeded defaults (a random start refines worse under the seeded
    schedule: docs/phasing.md); None: ``refine``."""

    iterations: int | None = Field(None, ge=0, le=100_000)
    """Total iterations. Given (>= 1), validation scales ``refine.schedule`` to it
    (:meth:`Schedule.resized`) and ``refine.shrinkwrap_start`` in proportion, so that a short
    run (say 100 live) still lets the support grow and shrink; None resolves to the
    schedule's own length. 0 returns the initial estimate alone (``init`` cnn or nns),
    placed in the frame's grid. After validation it is the number of iterations that run."""

    weights: str = "DEFAULT"
    """Name of the CNN weights (``init="cnn"``)."""

    cnn_symmetries: Literal[1, 8] = 1
    """CNN test-time augmentation: 8 = predict under the 8 symmetries of the square and keep,
    per frame, the prediction that best fits the data (8× the CNN's cost, lower chi²)."""

    cnn_large_frames: Literal["random", "fit", "binned", "central"] = "random"
    """How ``init="cnn"`` starts a frame larger than the CNN's 64x64 input whose sides are
    multiples of 64 (the refiner works at the frame's size): ``"binned"``, the CNN's object of
    the pattern binned to 64x64, at the centre of the grid (same real-space pixel: for frames
    oversampled at least twice the binning); ``"central"``, the CNN's object of the central
    64x64, Fourier-interpolated onto the grid (any frame oversampled twice; low-q detail only);
    ``"fit"``, per frame whichever of the two fits the frame better; ``"random"`` (the default),
    random phases: on the measured APS frames at 128x128 no CNN seed refined better than a
    random start, on simulated ones they did (docs/phasing.md, *The CNN seed of frames larger
    than 64×64*)."""

    nns_index: str | None = None
    """HDF5 of ``simulate`` indexed for ``init="nns"``."""

    batch_size: int = Field(64, ge=1, le=65_536)
    """Frames refined together on the device: the one batch size of the system
    (:meth:`Reconstructor.reconstruct` chunks its input by it; the live worker hands it
    batches of this size)."""

    quantity: Literal["intensity", "modulus"] = "intensity"
    """What the frames hold: counts (the modulus is their square root) or the modulus."""

    saturation: Annotated[float, Field(gt=0)] | Literal["dtype"] | None = "dtype"
    """Frames with a pixel at or above this level (in ``quantity`` units) are refused. A
    number: the detector's limit; ``"dtype"`` (the default): the maximum of an integer frame's
    dtype (65535 for uint16: where counting detectors put saturated pixels), no limit for
    floating-point frames; None: no check. See :func:`cdi_beamline.frames.saturation_level`."""

    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Thresholds of the per-frame status (``ok``, ``low_signal``, ``not_converged``)."""

    @model_validator(mode="before")
    @classmethod
    def _resolve_iterations(cls, data: Any) -> Any:
        """Scale ``refine`` to ``iterations`` (or set ``iterations`` to the schedule's length).

        Idempotent: a validated config's dump validates to an equal config. Invalid values
        are left alone, for field validation to name them.
        """
        if not isinstance(data, dict):
            return data
        data = cls._seeded_defaults(data)
        n = data.get("iterations")
        if n is not None:
            try:  # what lax validation of the int field would accept: 120, "120", 120.0
                n = int(n) if float(n) == int(n) else -1
            except (TypeError, ValueError, OverflowError):
                return data
            if n < 1:
                return data
        try:
            refine = RefineConfig.model_validate(data.get("refine", {}))
        except ValidationError:
            return data
        n = len(parse_schedule(refine.schedule)) if n is None else n
        data = {**data, "iterations": n, "refine": cls._scaled(refine, n)}
        if isinstance(data.get("random_refine"), dict):
            try:
                data["random_refine"] = cls._scaled(RefineConfig.model_validate(data["random_refine"]), n)
            except ValidationError:
                pass
        return data

    @staticmethod
    def _scaled(refine: RefineConfig, n: int) -> dict:
        """``refine``'s fields with its schedule resized to ``n`` iterations (and the shrink-wrap
        start in proportion)."""
        schedule = parse_schedule(refine.schedule)
        values = refine.model_dump()
        if n != len(schedule):
            values["schedule"] = str(schedule.resized(n))
            values["shrinkwrap_start"] = round(refine.shrinkwrap_start * n / len(schedule))
        return values

    @classmethod
    def _seeded_defaults(cls, data: dict) -> dict:
        """A seeded start's schedule and shrink-wrap start, where neither is given; the random
        start's (the given ``refine``) kept as ``random_refine`` for frames it cannot seed."""
        init = data.get("init", cls.model_fields["init"].default)
        refine = data.get("refine", {})
        if init not in ("cnn", "nns") or not isinstance(refine, dict):
            return data
        if "schedule" in refine or "shrinkwrap_start" in refine:
            return data
        seeded = {"schedule": SEEDED_SCHEDULE, "shrinkwrap_start": SEEDED_SHRINKWRAP_START}
        return {"random_refine": dict(refine), **data, "refine": {**refine, **seeded}}

    @model_validator(mode="after")
    def _nns_needs_an_index(self) -> ReconstructorConfig:
        if self.init == "nns" and not self.nns_index:
            raise ValueError("init='nns' needs nns_index (an HDF5 written by `cdi-beamline simulate`)")
        if self.iterations == 0 and self.init not in ("cnn", "nns"):
            raise ValueError(
                f"iterations=0 returns the initial estimate alone: it needs init='cnn' or 'nns', not {self.init!r}"
            )
        return self
