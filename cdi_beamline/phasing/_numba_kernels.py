"""Fused element-wise steps of the refinement loop on the CPU (numba).

In eager torch the modulus projection with its chi² sums is ~8 passes over memory
(|F|², sqrt, ratio, two products for the sums, the complex cast, the multiply) and the
update ``x <- a x + b y`` two more; on a busy 2-core CPU they cost as much as the two
FFTs. Here the projection (:func:`project_modulus`, :func:`project_modulus_to`) and the
Fourier-space step of ``_numba._run_box_pruned`` (update, then the next projection:
:func:`advance_project`) are one vectorised pass each over the interleaved (re, im) float32
view of the complex64 tensors. Same arithmetic as the torch backend (:mod:`._torch`) up to
float rounding (``fastmath``: reassociated sums, accumulated in float64 per 256 pixels).

Compiled on first use and cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["advance_project", "modulus", "project_modulus", "project_modulus_to"]

_jit = numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
_CHUNK = 256  # pixels summed in float32 before adding to the float64 total
_EPS = np.float32(1e-12)


# Loops run over slices of at most _CHUNK pixels: LLVM vectorises those (a loop with a
# computed bound such as range(s0, min(s0 + _CHUNK, N)) stayed scalar, 10x slower).
# Each kernel is written once for both cases: called with Ur = W = None (all measured),
# numba prunes the masked branches at compile time (a separate specialisation).


@_jit
def _project_to(X, P, Mr, Ur, W, sums):
    B, N = Mr.shape
    for b in range(B):
        spm = 0.0
        spp = 0.0
        for s0 in range(0, N, _CHUNK):
            Xc = X[b, 2 * s0 : 2 * (s0 + _CHUNK)]
            Pc = P[b, 2 * s0 : 2 * (s0 + _CHUNK)]
            Mc = Mr[b, s0 : s0 + _CHUNK]
            if Ur is not None:
                Uc = Ur[b, s0 : s0 + _CHUNK]
                Wc = W[b, s0 : s0 + _CHUNK]
            pm = np.float32(0.0)
            pp = np.float32(0.0)
            for i in range(Mc.size):
                re = Xc[2 * i]
                im = Xc[2 * i + 1]
                a2 = re * re + im * im
                amp = np.sqrt(a2)
                r = Mc[i] / (amp + _EPS)
                pm += amp * Mc[i]
                if Ur is None:
                    pp += a2
                else:
                    r += Uc[i]
                    pp += a2 * Wc[i]
                Pc[2 * i] = re * r
                Pc[2 * i + 1] = im * r
            spm += pm
            spp += pp
        sums[b, 0] = spm
        sums[b, 1] = spp


@_jit
def _advance_project(E, P, G, Mr, Ur, W, a, b, c, sums):
    B, N = Mr.shape
    for f in range(B):
        spm = 0.0
        spp = 0.0
        for s0 in range(0, N, _CHUNK):
            Ec = E[f, 2 * s0 : 2 * (s0 + _CHUNK)]
            Pc = P[f, 2 * s0 : 2 * (s0 + _CHUNK)]
            Gc = G[f, 2 * s0 : 2 * (s0 + _CHUNK)]
            Mc = Mr[f, s0 : s0 + _CHUNK]
            if Ur is not None:
                Uc = Ur[f, s0 : s0 + _CHUNK]
                Wc = W[f, s0 : s0 + _CHUNK]
            pm = np.float32(0.0)
            pp = np.float32(0.0)
            for i in range(Mc.size):
                re = a * Ec[2 * i] + b * Pc[2 * i] + c * Gc[2 * i]
                im = a * Ec[2 * i + 1] + b * Pc[2 * i + 1] + c * Gc[2 * i + 1]
                Ec[2 * i] = re - Gc[2 * i]
                Ec[2 * i + 1] = im - Gc[2 * i + 1]
                a2 = re * re + im * im
                amp = np.sqrt(a2)
                r = Mc[i] / (amp + _EPS)
                pm += amp * Mc[i]
                if Ur is None:
                    pp += a2
                else:
                    r += Uc[i]
                    pp += a2 * Wc[i]
                Pc[2 * i] = re * r
                Pc[2 * i + 1] = im * r
            spm += pm
            spp += pp
        sums[f, 0] = spm
        sums[f, 1] = spp


@_jit
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


def _flat(*maps: torch.Tensor | None) -> list[np.ndarray | None]:
    """(B, H, W) float32 maps (or None) -> (B, HW) views."""
    return [None if t is None else t.view(t.shape[0], -1).numpy() for t in maps]


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
    # Each pixel is read before it is written, at the same index: in place is safe.
    project_modulus_to(F, F, Mr, unmeasured_r, measured, sums)


def project_modulus_to(
    X: torch.Tensor,
    P: torch.Tensor,
    Mr: torch.Tensor,
    unmeasured_r: torch.Tensor | None,
    measured: torch.Tensor | None,
    sums: np.ndarray,
) -> None:
    """:func:`project_modulus` out of place: ``P <- P_M(X)``, X unchanged (same arguments)."""
    Mv, Uv, Wv = _flat(Mr, unmeasured_r, measured)
    _project_to(_interleaved(X), _interleaved(P), Mv, Uv, Wv, sums)


def advance_project(
    E: torch.Tensor,
    P: torch.Tensor,
    G: torch.Tensor,
    coefficients: tuple[float, float, float],
    Mr: torch.Tensor,
    unmeasured_r: torch.Tensor | None,
    measured: torch.Tensor | None,
    sums: np.ndarray,
) -> None:
    """One step of the Fourier-space iterate, in one pass (see ``_numba._run_box_pruned``).

    ``X = a·E + b·P + c·G``, then ``E <- X - G`` and ``P <- P_M(X)`` with its chi² sums.

    E, P, G : (B, ...) complex64, contiguous, CPU; E and P overwritten
    coefficients : (a, b, c); the rest as in :func:`project_modulus`
    """
    a, b, c = (np.float32(v) for v in coefficients)
    Mv, Uv, Wv = _flat(Mr, unmeasured_r, measured)
    _advance_project(_interleaved(E), _interleaved(P), _interleaved(G), Mv, Uv, Wv, a, b, c, sums)


def modulus(x: torch.Tensor) -> torch.Tensor:
    """|x| of a contiguous complex64 CPU tensor, float32 of the same shape."""
    out = torch.empty(x.shape, dtype=torch.float32)
    _modulus(torch.view_as_real(x).view(-1).numpy(), out.view(-1).numpy())
    return out
