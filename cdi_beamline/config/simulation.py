"""SimulationConfig (the paper's generator, eqs. 2-3) and DetectorConfig (noise, mask, saturation)."""

from __future__ import annotations

from ._base import FrozenModel  # noqa: F401

__all__: list[str] = []
