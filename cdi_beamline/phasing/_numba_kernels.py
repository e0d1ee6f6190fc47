"""Fused element-wise steps of the refinement loop on the CPU (numba).

In eager torch the modulus projection with its chi² sums is ~8 passes over memory
(|F|², sqrt, ratio, two products for the sums, the complex cast, the multiply) and the
update ``x <- a x + b y`` two more; on a busy 2-core CPU they cost as much as the two
FFTs. Here each is one vectorised pass over the interleaved (re, im) float32 view of the
complex64 tensors, in place. Same arithmetic as the torch path of :mod:`.refine` up to
float rounding (``fastmath``: reassociated sums, accumulated in float64 per 256 pixels).

Compiled on first use and cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["modulus", "project_modulus", "update"]

_JIT = dict(nogil=True, fastmath=True, error_model="numpy", cache=True)
_CHUNK = 256  # pixels summed in float32 before adding to the float64 total
_EPS = np.float32(1e-12)


# Loops run over slices of at most _CHUNK pixels: LLVM vectorises those (a loop with a
# computed bound such as range(s0, min(s0 + _CHUNK, N)) stayed scalar, 10x slower).


@numba.njit(**_JIT)
def _project(F, Mr, sums):
    B, N = Mr.shape
    for b in range(B):
        spm = 0.0
        spp = 0.0
        for s0 in range(0, N, _CHUNK):
            Fc = F[b, 2 * s0 : 2 * (s0 + _CHUNK)]
            Mc = Mr[b, s0 : s0 + _CHUNK]
            pm = np.float32(0.0)
            pp = np.float32(0.0)
            for i in range(Mc.size):
                re = Fc[2 * i]
                im = Fc[2 * i + 1]
                a2 = re * re + im * im
                amp = np.sqrt(a2)
                r = Mc[i] / (amp + _EPS)
                pm += amp * Mc[i]
                pp += a2
                Fc[2 * i] = re * r
                Fc[2 * i + 1] = im * r
            spm += pm
            spp += pp
        sums[b, 0] = spm
        sums[b, 1] = spp


@numba.njit(**_JIT)
def _project_masked(F, Mr, Ur, W, sums):
    B, N = Mr.shape
    for b in range(B):
        spm = 0.0
        spp = 0.0
        for s0 in range(0, N, _CHUNK):
            Fc = F[b, 2 * s0 : 2 * (s0 + _CHUNK)]
            Mc = Mr[b, s0 : s0 + _CHUNK]
            Uc = Ur[b, s0 : s0 + _CHUNK]
            Wc = W[b, s0 : s0 + _CHUNK]
            pm = np.float32(0.0)
            pp = np.float32(0.0)
            for i in range(Mc.size):
                re = Fc[2 * i]
                im = Fc[2 * i + 1]
                a2 = re * re + im * im
                amp = np.sqrt(a2)
                r = Mc[i] / (amp + _EPS) + Uc[i]
                pm += amp * Mc[i]
                pp += a2 * Wc[i]
                Fc[2 * i] = re * r
                Fc[2 * i + 1] = im * r
            spm += pm
            spp += pp
        sums[b, 0] = spm
        sums[b, 1] = spp


@numba.njit(**_JIT)
def _update(x, y, s, a_out, b_out):
    one = np.float32(1.0)
    for i in range(s.size):
        # blend, not a branch (a branch stays scalar): inside a = 0, b = 1 exactly
        w = np.float32(s[i])
        a = a_out * (one - w)
        b = w + b_out * (one - w)
        x[2 * i] = a * x[2 * i] + b * y[2 * i]
        x[2 * i + 1] = a * x[2 * i + 1] + b * y[2 * i + 1]


@numba.njit(**_JIT)
def _update_er(x, y, s):
    for i in range(s.size):
        w = np.float32(s[i])
        x[2 * i] = w * y[2 * i]
        x[2 * i + 1] = w * y[2 * i + 1]


@numba.njit(**_JIT)
def _modulus(x, out):
    for i in range(out.size):
        re = x[2 * i]
        im = x[2 * i + 1]
        out[i] = np.sqrt(re * re + im * im)


def _interleaved(z: torch.Tensor) -> np.ndarray:
    """(B, H, W) complex64 contiguous CPU tensor -> (B, 2HW) float32 view (re, im, ...).

    ``Tensor.view`` (not a reshape) so that a non-contiguous input raises instead of being
    copied and updated in the copy.
    """
    return torch.view_as_real(z).view(z.shape[0], -1).numpy()


def project_modulus(
    F: torch.Tensor,
    Mr: torch.Tensor,
    unmeasured_r: torch.Tensor | None,
    measured: torch.Tensor | None,
    sums: np.ndarray,
) -> None:
    """Modulus projection ``F <- F·Mr/(|F|+eps) [+ F·Ur]`` in place, with the chi² sums.

    Parameters
    ----------
    F : (B, H, W) complex64, contiguous, CPU; overwritten
    Mr : (B, H, W) float32, the measured modulus (0 where unmeasured) in FFT units
    unmeasured_r : (B, H, W) float32 or None, the factor kept on unmeasured pixels
    measured : (B, H, W) float32 (1 = measured) or None; None with ``unmeasured_r`` None
    sums : (B, 2) float64, receives ``Σ |F|·Mr`` and ``Σ_measured |F|²`` per frame
    """
    B = F.shape[0]
    Fv = _interleaved(F)
    Mv = Mr.view(B, -1).numpy()
    if unmeasured_r is None:
        _project(Fv, Mv, sums)
    else:
        _project_masked(Fv, Mv, unmeasured_r.view(B, -1).numpy(), measured.view(B, -1).numpy(), sums)


def update(x: torch.Tensor, y: torch.Tensor, support: torch.Tensor, a_out: float, b_out: float) -> None:
    """``x <- y`` inside the support, ``x <- a_out·x + b_out·y`` outside, in place.

    x, y : (B, H, W) complex64, contiguous, CPU
    support : (B, H, W) bool, contiguous
    a_out, b_out : the algorithm's coefficients outside the support (ER: 0, 0)
    """
    xv, yv = torch.view_as_real(x).view(-1).numpy(), torch.view_as_real(y).view(-1).numpy()
    sv = support.view(torch.uint8).view(-1).numpy()
    if a_out == 0.0 and b_out == 0.0:
        _update_er(xv, yv, sv)
    else:
        _update(xv, yv, sv, np.float32(a_out), np.float32(b_out))


def modulus(x: torch.Tensor) -> torch.Tensor:
    """|x| of a contiguous complex64 CPU tensor, float32 of the same shape."""
    out = torch.empty(x.shape, dtype=torch.float32)
    _modulus(torch.view_as_real(x).view(-1).numpy(), out.view(-1).numpy())
    return out
