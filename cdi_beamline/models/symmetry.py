"""The eight symmetries of the square on centred images (..., n, n).

An orthogonal map R of the object maps its diffraction pattern by the same R (centred
convention, origin at pixel n//2), so applying one symmetry to object and pattern gives
another exact pair: used for training pairs and for test-time augmentation.
"""

from __future__ import annotations

import torch

__all__ = ["dihedral", "undo_dihedral", "SYMMETRIES"]

SYMMETRIES = 8


def _invert(x: torch.Tensor, dim: int) -> torch.Tensor:
    # r -> -r along one axis about the centre pixel: index i -> (n - i) mod n.
    return torch.roll(torch.flip(x, dims=(dim,)), shifts=1, dims=dim)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` (0..7): bit 0 inverts rows, bit 1 inverts columns, bit 2 transposes
    (after the inversions). k = 0 is the identity."""
    if k & 1:
        x = _invert(x, -2)
    if k & 2:
        x = _invert(x, -1)
    if k & 4:
        x = x.transpose(-2, -1)
    return x


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral` (``undo_dihedral(dihedral(x, k), k) == x``)."""
    if k & 4:
        x = x.transpose(-2, -1)
    if k & 1:
        x = _invert(x, -2)
    if k & 2:
        x = _invert(x, -1)
    return x
