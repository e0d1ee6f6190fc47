"""RefineConfig (ER/HIO/RAAR schedule, shrink-wrap, initial support)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ._base import FrozenModel
from .schedule import parse_schedule

__all__ = ["RefineConfig", "DEFAULT_SCHEDULE", "SEEDED_SCHEDULE", "SEEDED_SHRINKWRAP_START"]

#: The paper's ER/HIO switching (Appendix B), 600 iterations, read left to right in time.
DEFAULT_SCHEDULE = "(HIO**130 * ER**20)**4"

#: The schedule of a start that carries an estimate (the CNN's object and support, a nearest
#: neighbour): short HIO/ER blocks, so that ER polishes the seed every 50 iterations, and
#: shrink-wrap from the first iteration (the support is an estimate, not a bound). Chosen
#: by measurement (docs/phasing.md, "Refinement from a CNN seed"); applied by
#: :class:`cdi_beamline.config.ReconstructorConfig` when the schedule is not given.
SEEDED_SCHEDULE = "(HIO**40 * ER**10)**12"
SEEDED_SHRINKWRAP_START = 0


class RefineConfig(FrozenModel):
    """Iterative refinement: algorithm schedule, shrink-wrap and supports.

    Sizes given as fractions are fractions of the frame's smaller side.
    """

    schedule: str = DEFAULT_SCHEDULE
    """Algorithms in time order, left to right: ``"(HIO**130 * ER**20)**4"``.
    Operators ``ER``, ``HIO``, ``RAAR``, optionally with their own beta: ``HIO(0.7)**50``."""

    beta: float = Field(0.9, gt=0.0, le=1.0)
    """Feedback parameter of HIO and RAAR when the schedule does not give one."""

    positivity: bool = False
    """Also require a real, non-negative object (forward CDI of weak objects);
    leave off for Bragg CDI, whose objects carry a strain phase."""

    shrinkwrap: bool = True
    """Update the support by shrink-wrap (Marchesini et al. 2003)."""

    shrinkwrap_start: int = Field(100, ge=0)
    """First iteration (0-based) at which the support is updated."""

    shrinkwrap_every: int = Field(10, ge=1)
    """Iterations between support updates."""

    shrinkwrap_sigma: float = Field(1.0, gt=0.0, le=20.0)
    """Standard deviation (pixels) of the Gaussian blur of the amplitude."""

    shrinkwrap_threshold: float = Field(0.1, gt=0.0, lt=1.0)
    """New support: blurred amplitude above this fraction of its maximum (per frame)."""

    support2_size: float = Field(0.5, gt=0.0, le=1.0)
    """Side of the fixed square Support 2 that bounds the shrink-wrapped support."""

    init_support_size: float = Field(0.375, gt=0.0, le=1.0)
    """Side of the rectangular initial support used when no support is given."""

    keep: Literal["best", "last"] = "best"
    """Which iterate refinement returns, per frame: "best", the object (with its support)
    of lowest chi² among the last and those whose support estimates the object's (given
    with the start, or shrink-wrapped from an ER iterate: see
    :mod:`cdi_beamline.phasing.refine`), or "last", the final one."""

    backend: Literal["auto", "numba", "torch", "compiled"] = "auto"
    """The refinement loop: "numba" (CPU only: Fourier-space iterate, pruned DFTs, fused
    kernels; about 2x faster per pattern than "torch" there), "torch" (any device), "compiled"
    (the torch iteration through torch.compile, with CUDA graphs on CUDA: see
    ``cuda_graphs``; each new batch size compiles anew; where compiling fails the torch
    iteration runs and ``RefineResult.backend`` says why), or "auto": "numba" on the CPU
    where numba imports, "torch" elsewhere ("compiled" is not chosen automatically until it
    has been timed on a GPU)."""

    cuda_graphs: bool = True
    """With backend "compiled" on CUDA: replay the iteration as a CUDA graph (one launch
    instead of ~10, but each replay copies the arguments into the graph's buffers, which
    may cost more than the launches at large batches)."""

    @field_validator("schedule")
    @classmethod
    def _parsable(cls, value: str) -> str:
        parse_schedule(value)
        return value
