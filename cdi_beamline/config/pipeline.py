"""ReconstructorConfig (CNN + refinement, device, batching)."""

from __future__ import annotations

from ._base import FrozenModel  # noqa: F401

__all__: list[str] = []
