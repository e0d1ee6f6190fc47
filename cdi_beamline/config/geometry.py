"""BraggGeometry: the diffractometer of a Bragg CDI rocking scan (34-ID-C style detector arm)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ._base import FrozenModel

__all__ = ["BraggGeometry"]


class BraggGeometry(FrozenModel):
    """The least a rocking scan needs to put its 3D reconstruction on orthogonal lab axes.

    Lab frame (right-handed): ``z`` along the incident beam, ``y`` vertical up,
    ``x = y × z`` horizontal. The detector arm carries the detector at ``distance_m`` from
    the sample, its face normal to the exit beam; at ``delta_deg = gamma_deg = 0`` it sits
    in the direct beam with its rows running along ``-y`` and its columns along ``-x``
    (rows downwards, columns to the right as seen from the sample). The arm turns by
    ``gamma`` about ``-x`` (up), then by ``delta`` about ``+y`` (towards ``+x``), so the
    exit beam is ``(x, y, z) = (cos γ sin δ, sin γ, cos γ cos δ)``. The sample rocks about
    ``rocking_axis`` by ``rocking_step_deg`` per frame (right-handed, frames in scan order).
    The conventions and formulas are in docs/phasing.md, "3D post-processing".
    """

    energy_kev: float = Field(gt=0, le=1000)
    """Photon energy (keV); the wavelength is ``1.23984198 / energy_kev`` nm."""

    distance_m: float = Field(gt=0, le=100)
    """Sample to detector distance (m)."""

    pixel_size_m: tuple[float, float] = (55e-6, 55e-6)
    """Detector pixel pitch ``(rows, columns)`` (m), after any binning. Default: Timepix
    (34-ID-C), 55 µm."""

    delta_deg: float = Field(ge=-180, le=180)
    """In-plane detector angle (degrees): the arm's rotation about the vertical ``+y``
    axis, from the beam towards ``+x``."""

    gamma_deg: float = Field(ge=-90, le=90)
    """Out-of-plane detector angle (degrees): the arm's elevation above the horizontal
    plane (rotation about ``-x``)."""

    rocking_step_deg: float = Field(ge=-10, le=10)
    """Angle (degrees) the sample turns between two frames of the scan; negative when the
    motor steps downwards."""

    rocking_axis: Literal["y", "x"] = "y"
    """Lab axis the sample rocks about: ``"y"`` vertical (34-ID-C θ), ``"x"`` horizontal."""

    @model_validator(mode="after")
    def _a_bragg_reflection(self) -> BraggGeometry:
        if self.rocking_step_deg == 0:
            raise ValueError("rocking_step_deg is 0: the frames of a rocking scan must differ in angle")
        if min(self.pixel_size_m) <= 0:
            raise ValueError(f"pixel_size_m must be positive, got {self.pixel_size_m}")
        if self.delta_deg == 0 and self.gamma_deg == 0:
            raise ValueError("delta_deg = gamma_deg = 0 is the direct beam (Q = 0), not a Bragg reflection")
        return self
