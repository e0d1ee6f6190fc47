"""The derived run's schema: what a reconstruction run holds and how its keys are spelled.

Writer (:mod:`cdi_beamline.callbacks`), reader (:mod:`cdi_beamline.tiled`), reprocess and
plots import these names; no other module spells a key of the derived run.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Status", "STATUSES"]

Status = Literal["ok", "bad", "error", "dropped"]
"""Per-frame outcome: ``ok`` reconstructed; ``bad`` the frame was refused (invalid input);
``error`` the reconstruction failed; ``dropped`` never reconstructed (queue full)."""

STATUSES: tuple[Status, ...] = get_args(Status)
