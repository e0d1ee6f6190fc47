"""RefineConfig (ER/HIO/RAAR schedule, shrink-wrap, initialisation)."""

from __future__ import annotations

from ._base import FrozenModel  # noqa: F401

__all__: list[str] = []
