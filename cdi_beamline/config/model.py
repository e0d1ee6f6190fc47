"""ModelConfig (the CNN of Fig. 1) and TrainConfig (training recipes)."""

from __future__ import annotations

from ._base import FrozenModel  # noqa: F401

__all__: list[str] = []
