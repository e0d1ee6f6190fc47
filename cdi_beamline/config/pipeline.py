"""ReconstructorConfig (initialisation + refinement, batching, input quantity)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from ._base import FrozenModel
from .refine import RefineConfig
from .schedule import parse_schedule

__all__ = ["LIVE_ITERATIONS", "ReconstructorConfig"]

LIVE_ITERATIONS = 100
"""Refinement iterations of the live preview (demo, live worker, profile, Tango): the
schedule scaled to this keeps up with a scan on a 2-core CPU; offline runs keep the
schedule's own 600."""


class ReconstructorConfig(FrozenModel):
    """How :class:`cdi_beamline.pipeline.Reconstructor` turns frames into objects."""

    init: Literal["cnn", "random", "support", "nns"] = "cnn"
    """Start of the refinement (the paper's Fig. 5): the CNN's object and support (the
    default; frames that are not 64x64 fall back to random, and say so), random phases in
    a rectangle, random phases in a given support, or the nearest neighbour of a
    simulated set."""

    refine: RefineConfig = Field(default_factory=RefineConfig)
    """Schedule, shrink-wrap and supports of the iterative refinement, exactly as they run:
    validation scales them to ``iterations``."""

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

    @model_validator(mode="before")
    @classmethod
    def _resolve_iterations(cls, data: Any) -> Any:
        """Scale ``refine`` to ``iterations`` (or set ``iterations`` to the schedule's length).

        Idempotent: a validated config's dump validates to an equal config. Invalid values
        are left alone, for field validation to name them.
        """
        if not isinstance(data, dict):
            return data
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
        schedule = parse_schedule(refine.schedule)
        if n is None or n == len(schedule):
            return {**data, "iterations": len(schedule)}
        values = refine.model_dump()
        values["schedule"] = str(schedule.resized(n))
        values["shrinkwrap_start"] = round(refine.shrinkwrap_start * n / len(schedule))
        return {**data, "iterations": n, "refine": values}

    @model_validator(mode="after")
    def _nns_needs_an_index(self) -> ReconstructorConfig:
        if self.init == "nns" and not self.nns_index:
            raise ValueError("init='nns' needs nns_index (an HDF5 written by `cdi-beamline simulate`)")
        if self.iterations == 0 and self.init not in ("cnn", "nns"):
            raise ValueError(
                f"iterations=0 returns the initial estimate alone: it needs init='cnn' or 'nns', not {self.init!r}"
            )
        return self
