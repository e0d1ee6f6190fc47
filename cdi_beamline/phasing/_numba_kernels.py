"""Fused element-wise steps of the refinement loop on the CPU (numba).

In eager torch the modulus projection with its chi² sums is ~8 passes over memory
(|F|², sqrt, ratio, two products for the sums, the complex cast, the multiply) and the
update ``x <- a x + b y`` two more; on a busy 2-core CPU they cost as much as the two
FFTs. Here the projection (:func:`project_modulus`, :func:`project_modulus_to`) and the
Fourier-space step of ``_numba._run_box_pruned`` (update, then the next projection, with the
chi² sums of the object's spectrum: :func:`advance_project`) are one vectorised pass each
over the interleaved (re, im) float32 view of the complex64 tensors; :class:`BestKeeper`
keeps each frame's best object in one call per iteration. Same arithmetic as the torch backend (:mod:`._torch`) up to
float rounding (``fastmath``: reassociated sums, accumulated in float64 per 256 pixels).

Compiled on first use and cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import numba
import numba.core.entrypoints
import numpy as np
import torch

from .. import resources

# numba's own switch for "extensions loaded" (checked before loading them): not public, so set
# only where it exists
if resources.numba_extensions_skipped() and hasattr(numba.core.entrypoints, "_already_initialized"):
    numba.core.entrypoints._already_initialized = True

__all__ = ["BestKeeper", "advance_project", "chi2_sums", "modulus", "project_modulus", "project_modulus_to"]

_jit = numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
_CHUNK = 256  # pixels summed in float32 before adding to the float64 total
_EPS = np.float32(1e-12)


# Loops run over slices of at most _CHUNK pixels: LLVM vectorises those (a loop with a
# computed bound such as range(s0, min(s0 + _CHUNK, N)) stayed scalar, 10x slower).
# Each kernel is written once for both cases: called with Ur = W = None (all measured),
# numba prunes the masked branches at compile time (a separate specialisation).


@_jit
def _project_to(X, P, Mr, Ur):
    B, N = Mr.shape
    for b in range(B):
        for s0 in range(0, N, _CHUNK):
            Xc = X[b, 2 * s0 : 2 * (s0 + _CHUNK)]
            Pc = P[b, 2 * s0 : 2 * (s0 + _CHUNK)]
            Mc = Mr[b, s0 : s0 + _CHUNK]
            if Ur is not None:
                Uc = Ur[b, s0 : s0 + _CHUNK]
            for i in range(Mc.size):
                re = Xc[2 * i]
                im = Xc[2 * i + 1]
                r = Mc[i] / (np.sqrt(re * re + im * im) + _EPS)
                if Ur is not None:
                    r += Uc[i]
                Pc[2 * i] = re * r
                Pc[2 * i + 1] = im * r


@_jit
def _chi2_sums(G, Mr, W, sums):
    B, N = Mr.shape
    for b in range(B):
        spm = 0.0
        spp = 0.0
        for s0 in range(0, N, _CHUNK):
            Gc = G[b, 2 * s0 : 2 * (s0 + _CHUNK)]
            Mc = Mr[b, s0 : s0 + _CHUNK]
            if W is not None:
                Wc = W[b, s0 : s0 + _CHUNK]
            pm = np.float32(0.0)
            pp = np.float32(0.0)
            for i in range(Mc.size):
                g2 = Gc[2 * i] * Gc[2 * i] + Gc[2 * i + 1] * Gc[2 * i + 1]
                pm += np.sqrt(g2) * Mc[i]
                pp += g2 if W is None else g2 * Wc[i]
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
                gr = Gc[2 * i]
                gi = Gc[2 * i + 1]
                re = a * Ec[2 * i] + b * Pc[2 * i] + c * gr
                im = a * Ec[2 * i + 1] + b * Pc[2 * i + 1] + c * gi
                Ec[2 * i] = re - gr
                Ec[2 * i + 1] = im - gi
                r = Mc[i] / (np.sqrt(re * re + im * im) + _EPS)
                # chi² sums of G = F[S·x_next], the object after this step
                g2 = gr * gr + gi * gi
                pm += np.sqrt(g2) * Mc[i]
                if Ur is None:
                    pp += g2
                else:
                    r += Uc[i]
                    pp += g2 * Wc[i]
                Pc[2 * i] = re * r
                Pc[2 * i + 1] = im * r
            spm += pm
            spp += pp
        sums[f, 0] = spm
        sums[f, 1] = spp


@_jit
def _keep_best(sums, smm, root_hw, tie, it, rows, S, r0, c0, c1, best_chi2, best_iteration, best_box, best_x, best_S):
    # chi² exactly as _numba._history computes it, in float64
    h = rows.shape[1]
    for f in range(sums.shape[0]):
        spm = sums[f, 0] * root_hw
        chi = 1.0 - spm * spm / max(sums[f, 1] * smm[f], 1e-12)
        if chi <= best_chi2[f] + tie:
            best_chi2[f] = min(chi, best_chi2[f])
            best_iteration[f] = it
            best_box[f, 0] = r0
            best_box[f, 1] = r0 + h
            best_box[f, 2] = c0
            best_box[f, 3] = c1
            for i in range(h):
                for j in range(2 * c0, 2 * c1):
                    best_x[f, r0 + i, j] = rows[f, i, j]
                for j in range(c0, c1):
                    best_S[f, r0 + i, j] = S[f, r0 + i, j]


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
) -> None:
    """Modulus projection ``F <- F·Mr/(|F|+eps) [+ F·Ur]`` in place.

    Parameters
    ----------
    F : (B, H, W) complex64, contiguous, CPU; overwritten
    Mr : (B, H, W) float32, the measured modulus (0 where unmeasured) in FFT units
    unmeasured_r : (B, H, W) float32 or None, the factor kept on unmeasured pixels
    """
    # Each pixel is read before it is written, at the same index: in place is safe.
    project_modulus_to(F, F, Mr, unmeasured_r)


def project_modulus_to(X: torch.Tensor, P: torch.Tensor, Mr: torch.Tensor, unmeasured_r: torch.Tensor | None) -> None:
    """:func:`project_modulus` out of place: ``P <- P_M(X)``, X unchanged (same arguments)."""
    Mv, Uv = _flat(Mr, unmeasured_r)
    _project_to(_interleaved(X), _interleaved(P), Mv, Uv)


def chi2_sums(G: torch.Tensor, Mr: torch.Tensor, measured: torch.Tensor | None, sums: np.ndarray) -> None:
    """The chi² sums of a spectrum G (B, H, W) complex64: ``Σ |G|·Mr``, ``Σ_measured |G|²``
    per frame into ``sums`` (B, 2) float64; measured (B, H, W) float32 (1 = measured) or None."""
    Mv, Wv = _flat(Mr, measured)
    _chi2_sums(_interleaved(G), Mv, Wv, sums)


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

    ``X = a·E + b·P + c·G``, then ``E <- X - G``, ``P <- P_M(X)``, and the chi² sums of G
    (:func:`chi2_sums`).

    E, P, G : (B, ...) complex64, contiguous, CPU; E and P overwritten
    coefficients : (a, b, c); measured : as in :func:`chi2_sums`; the rest as in
    :func:`project_modulus`
    """
    a, b, c = (np.float32(v) for v in coefficients)
    Mv, Uv, Wv = _flat(Mr, unmeasured_r, measured)
    _advance_project(_interleaved(E), _interleaved(P), _interleaved(G), Mv, Uv, Wv, a, b, c, sums)


class BestKeeper:
    """Per frame, the object of lowest chi² met so far in ``_numba._run_box_pruned`` (a later
    one within ``resolution`` of it replaces it).

    The object and its support are copied box by box, with the box recorded;
    :meth:`result` clears what lies outside each frame's box.
    """

    def __init__(self, shape: tuple[int, int, int], smm: torch.Tensor, hw: int, resolution: float):
        B, H, W = shape
        self.x = torch.zeros((B, H, W), dtype=torch.complex64)
        self.S = torch.zeros((B, H, W), dtype=torch.bool)
        self.chi2 = np.full(B, np.inf)
        self.iteration = np.zeros(B, dtype=np.int64)
        self.box = np.zeros((B, 4), dtype=np.int64)
        self._smm = smm.double().numpy()
        self._root_hw = float(np.sqrt(hw))
        self._tie = float(resolution)
        self._x = torch.view_as_real(self.x).view(B, H, 2 * W).numpy()

    def consider(self, it: int, sums: np.ndarray, rows: torch.Tensor, S: torch.Tensor, box) -> None:
        """The object after ``it`` iterations: ``rows`` (B, r1 - r0, W) complex64 holds its
        rows r0:r1 (zero outside columns c0:c1), ``sums`` its chi² sums, S (B, H, W) bool its
        support."""
        r0, _, c0, c1 = box
        B, h, W = rows.shape
        _keep_best(
            sums, self._smm, self._root_hw, self._tie, it, torch.view_as_real(rows).view(B, h, 2 * W).numpy(),
            S.view(torch.uint8).numpy(), r0, c0, c1, self.chi2, self.iteration, self.box, self._x,
            self.S.view(torch.uint8).numpy(),
        )  # fmt: skip

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(object (B, H, W) complex64, support (B, H, W) bool, iterations behind it (B,) int64)."""
        for f, (r0, r1, c0, c1) in enumerate(self.box.tolist()):
            inside = torch.zeros(self.S.shape[1:], dtype=torch.bool)
            inside[r0:r1, c0:c1] = True
            self.x[f].masked_fill_(~inside, 0)
            self.S[f].masked_fill_(~inside, False)
        return self.x, self.S, torch.from_numpy(self.iteration)


def modulus(x: torch.Tensor) -> torch.Tensor:
    """|x| of a contiguous complex64 CPU tensor, float32 of the same shape."""
    out = torch.empty(x.shape, dtype=torch.float32)
    _modulus(torch.view_as_real(x).view(-1).numpy(), out.view(-1).numpy())
    return out
