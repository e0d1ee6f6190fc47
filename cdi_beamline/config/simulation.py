"""SimulationConfig (the paper's generator, eqs. 2-3) and DetectorConfig (noise, mask, saturation).

Lengths are in object voxels: the object grid is 32 x 32 in the detector plane (x, y)
and the pattern is its centred 64 x 64 Fourier modulus (2x oversampling per axis).
Every ``(low, high)`` range is sampled uniformly and independently per pattern;
``low == high`` fixes the value.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from ._base import FrozenModel

__all__ = ["SimulationConfig", "DetectorConfig", "DEFAULT_MASK", "OBJECT_SIZE", "PATTERN_SIZE"]

#: Side of the object grid (voxels) and of the pattern (pixels): 2x oversampling per axis.
OBJECT_SIZE = 32
PATTERN_SIZE = 64


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"range must be (low, high) with low <= high, got {pair}")
    return pair


# ``(low, high)`` pairs whose two ends obey the bounds, low <= high.
_Size = Annotated[float, Field(ge=1.0, le=16.0)]
_Roundness = Annotated[float, Field(gt=0.0, le=4.0)]
_Correlation = Annotated[float, Field(gt=0.0, le=64.0)]
_Span = Annotated[float, Field(ge=0.0, le=2 * math.pi)]
SizeRange = Annotated[tuple[_Size, _Size], AfterValidator(_ordered)]
RoundnessRange = Annotated[tuple[_Roundness, _Roundness], AfterValidator(_ordered)]
CorrelationRange = Annotated[tuple[_Correlation, _Correlation], AfterValidator(_ordered)]
SpanRange = Annotated[tuple[_Span, _Span], AfterValidator(_ordered)]


class DetectorConfig(FrozenModel):
    """Detector realism applied to the exact modulus; everything is off by default."""

    photons: float | None = Field(
        None,
        gt=0.0,
        description="Expected total photon count per pattern (over all 64x64 pixels, masked or "
        "not). When set, counts ~ Poisson(photons * I / sum(I)) and the modulus is sqrt(counts). "
        "None: the exact, noiseless modulus.",
    )
    saturation: float | None = Field(
        None,
        gt=0.0,
        description="Counts per pixel at which the detector saturates (counts are clipped there). Needs `photons`.",
    )
    beamstop_radius: float = Field(
        0.0,
        ge=0.0,
        le=32.0,
        description="Radius (pixels) of the central beamstop disc; pixels with distance < radius "
        "from the centre pixel (32, 32) are unmeasured. 0: no beamstop.",
    )
    gap_rows: tuple[Annotated[int, Field(ge=0, lt=PATTERN_SIZE)], ...] = Field(
        (),
        description="Pattern rows (0..63) hidden by detector module gaps.",
    )
    gap_cols: tuple[Annotated[int, Field(ge=0, lt=PATTERN_SIZE)], ...] = Field(
        (),
        description="Pattern columns (0..63) hidden by detector module gaps.",
    )

    @property
    def masked(self) -> bool:
        """True when some pixels are unmeasured (a beamstop or gaps)."""
        return self.beamstop_radius > 0 or bool(self.gap_rows) or bool(self.gap_cols)

    @field_validator("saturation")
    @classmethod
    def _saturation_needs_photons(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("photons") is None:
            raise ValueError("saturation is given in counts and needs `photons` to be set")
        return value


#: The mask that ``cdi-beamline simulate --mask`` switches on: a 3-pixel beamstop and a
#: two-pixel cross of module gaps off the centre.
DEFAULT_MASK = {"beamstop_radius": 3.0, "gap_rows": (44, 45), "gap_cols": (20, 21)}


class SimulationConfig(FrozenModel):
    """The paper's training-data generator (Wu et al. 2021, section 2.1 and eqs. 2-3).

    A superellipsoid ``(|x/a|^(2/e) + |y/b|^(2/e))^(e/n) + |z/c|^(2/n) <= 1`` with
    Gaussian-smoothed edges carries a Gaussian-correlated random phase (eq. 3); the
    complex field is rotated uniformly at random in 3D and projected along the beam (z).
    The defaults include spheres (e = n = 1), octahedra (e = n = 2), cuboid-like shapes
    (e, n < 1), rods (one long bound) and plates (one short bound).
    """

    a: SizeRange = Field((3.0, 12.0), description="Bound a along the particle's x (voxels), range.")
    b: SizeRange = Field((3.0, 12.0), description="Bound b along the particle's y (voxels), range.")
    c: SizeRange = Field((3.0, 12.0), description="Bound c along the particle's z (voxels), range.")
    e: RoundnessRange = Field(
        (0.3, 2.5), description="Roundness e of the x-y cross-section, range (1: ellipse, 2: diamond)."
    )
    n: RoundnessRange = Field(
        (0.3, 2.5), description="Roundness n along z, range (e = n = 1: ellipsoid, e = n = 2: octahedron)."
    )
    Lx: CorrelationRange = Field(
        (2.0, 8.0), description="Phase correlation length along the particle's x (voxels), eq. 3, range."
    )
    Ly: CorrelationRange = Field(
        (2.0, 8.0), description="Phase correlation length along the particle's y (voxels), eq. 3, range."
    )
    Lz: CorrelationRange = Field(
        (2.0, 8.0), description="Phase correlation length along the particle's z (voxels), eq. 3, range."
    )
    phase_span: SpanRange = Field(
        (2 * math.pi, 2 * math.pi),
        description="Span (radians) of the 3D phase inside the particle, range within [0, 2 pi]: the "
        "phase is scaled to [-span/2, span/2]; 2 pi is the paper's strong-phase limit, 0 a "
        "phase-free particle.",
    )
    rotate: bool = Field(True, description="Rotate each particle uniformly at random on SO(3).")
    edge_sigma: float = Field(
        0.7, ge=0.0, le=3.0, description="Width (voxels) of the Gaussian edge smoothing; 0: a hard edge."
    )
    max_radius: float = Field(
        13.0,
        ge=2.0,
        le=15.0,
        description="Particles whose bounding radius exceeds this (voxels) are scaled down to it, so "
        "that every orientation fits the central 32x32 (max_radius + 2 edge_sigma <= 15).",
    )
    support_threshold: float = Field(
        0.03,
        ge=0.0,
        lt=1.0,
        description="Support = projected amplitude > this fraction of its maximum; the amplitude "
        "is zeroed outside the support and the phase set to 0 there.",
    )
    nz: int = Field(
        32,
        ge=4,
        le=64,
        description="Voxels along the beam (z) over the same 32-voxel extent; the projection is "
        "the z-sum, so fewer voxels are faster but coarser.",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Patterns generated at once (bounds memory); None: 32 on the CPU (cache-sized), "
        "4096 on CUDA. Each chunk draws from its own generator seeded by (seed, chunk index), so "
        "the chunk size is part of what reproduces a data set (files record the value used).",
    )
    detector: DetectorConfig = Field(
        default_factory=DetectorConfig, description="Noise, mask and saturation (all off by default)."
    )

    @field_validator("max_radius")
    @classmethod
    def _fits_the_grid(cls, value: float, info: ValidationInfo) -> float:
        reach = value + 2 * info.data.get("edge_sigma", 0.0)
        if reach > OBJECT_SIZE // 2 - 1 + 1e-9:
            raise ValueError(
                f"max_radius + 2*edge_sigma = {reach:g} voxels must be <= {OBJECT_SIZE // 2 - 1} "
                f"so that every particle fits the {OBJECT_SIZE}x{OBJECT_SIZE} object grid"
            )
        return value
