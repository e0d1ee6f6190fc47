"""Comparing solutions up to the ambiguities of phase retrieval, and phase unwrapping.

A Fourier modulus cannot tell ``o(r)`` from ``o(r - t)``, ``o(r)·e^{ic}`` or the twin
``conj(o(-r))``. :func:`align` removes all three before measuring errors, in 2-D (H, W) or
3-D (D, H, W).

With the centred convention (origin at pixel N//2), the inversion ``r -> -r`` maps
index ``i`` to ``(2·(N//2) - i) mod N``: for even N that is ``(-i) mod N``, for odd N a
plain flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AlignedPair", "align", "invert", "twin", "unwrap"]


def invert(x: np.ndarray, ndim: int = 2) -> np.ndarray:
    """``x(-r)`` about the centre pixel (N//2) on the last ``ndim`` axes."""
    for axis in range(-ndim, 0):
        n = x.shape[axis]
        idx = (2 * (n // 2) - np.arange(n)) % n
        x = np.take(x, idx, axis=axis)
    return x


def twin(x: np.ndarray, ndim: int = 2) -> np.ndarray:
    """The twin image ``conj(x(-r))`` on the last ``ndim`` axes: same Fourier modulus."""
    return np.conj(invert(x, ndim))


@dataclass
class AlignedPair:
    """``recon`` aligned onto ``reference`` and the errors after alignment.

    recon, reference : (*spatial) complex, spatial (H, W) or (D, H, W)
    shift : integer roll per axis applied to the (possibly twinned) reconstruction, (dy, dx)
        or (dz, dy, dx)
    global_phase : radians multiplied in (``e^{i·global_phase}``)
    twin : whether the twin was taken
    chi2_amplitude : ``Σ (s|recon| - |ref|)² / Σ |ref|²`` with the optimal scale s
    chi2_phase : ``mean_support (Δφ/π)²``, Δφ = angle(recon·conj(ref)) wrapped to
        (-π, π], over the reference support: 0 = equal, 1/3 = unrelated phases
    """

    recon: np.ndarray
    reference: np.ndarray
    shift: tuple[int, ...]
    global_phase: float
    twin: bool
    chi2_amplitude: float
    chi2_phase: float

    def move(self, x: np.ndarray) -> np.ndarray:
        """The inversion (if :attr:`twin`) and the shift that aligned ``recon``, applied to
        another array on its grid, e.g. its support (no conjugation, no phase)."""
        nd = len(self.shift)
        x = invert(x, nd) if self.twin else x
        return np.roll(x, self.shift, axis=tuple(range(-nd, 0)))


def _best_shift(a: np.ndarray, ref: np.ndarray) -> tuple[float, tuple[int, ...], complex]:
    """Peak of the complex cross-correlation of ``ref`` with ``a``: (|peak|, shift, peak)."""
    xc = np.fft.ifftn(np.fft.fftn(ref) * np.conj(np.fft.fftn(a)))
    k = int(np.argmax(np.abs(xc)))
    peak = np.unravel_index(k, xc.shape)
    shift = tuple(int(d - n if d > n // 2 else d) for d, n in zip(peak, xc.shape, strict=True))
    return float(np.abs(xc.flat[k])), shift, complex(xc.flat[k])


def align(recon, reference, support=None) -> AlignedPair:
    """Align ``recon`` to ``reference`` up to translation, twin and global phase.

    Parameters
    ----------
    recon, reference : (*spatial) complex arrays (numpy or torch), same shape, spatial
        (H, W) or (D, H, W)
    support : (*spatial) bool where the phase error is measured; default
        ``|reference| > 0.1 max|reference|``

    Returns
    -------
    AlignedPair
    """
    rec = _numpy(recon).astype(np.complex128)
    ref = _numpy(reference).astype(np.complex128)
    # (1, H, W) is a stack of one frame, not a volume
    if rec.ndim not in (2, 3) or rec.shape != ref.shape or (rec.ndim == 3 and rec.shape[0] < 2):
        raise ValueError(
            f"align needs two (H, W) arrays of one shape, or two (D, H, W) volumes, got {rec.shape} and {ref.shape}"
        )
    if not (np.isfinite(rec).all() and np.isfinite(ref).all()):
        raise ValueError("align: inputs contain NaN or inf")
    best = None
    for is_twin, cand in ((False, rec), (True, twin(rec, rec.ndim))):
        peak, shift, value = _best_shift(cand, ref)
        if best is None or peak > best[0] * (1 + 1e-9):
            best = (peak, shift, value, is_twin, cand)
    assert best is not None  # the first candidate always wins over None
    _, shift, value, is_twin, cand = best
    cand = np.roll(cand, shift, axis=tuple(range(rec.ndim)))
    phase = float(np.angle(value))
    cand = cand * np.exp(1j * phase)

    a, r = np.abs(cand), np.abs(ref)
    denom = float((r * r).sum())
    s = float((a * r).sum() / max((a * a).sum(), 1e-300))
    chi2_amp = float(((s * a - r) ** 2).sum() / max(denom, 1e-300))
    if support is None:
        support = r > 0.1 * r.max()
    support = _numpy(support).astype(bool)
    if support.shape != ref.shape:
        raise ValueError(f"align: support shape {support.shape} != {ref.shape}")
    dphi = np.angle(cand * np.conj(ref))[support]
    chi2_phase = float(np.mean((dphi / np.pi) ** 2)) if dphi.size else float("nan")
    return AlignedPair(
        recon=cand.astype(np.complex64),
        reference=ref.astype(np.complex64),
        shift=shift,
        global_phase=phase,
        twin=is_twin,
        chi2_amplitude=chi2_amp,
        chi2_phase=chi2_phase,
    )


def unwrap(phase, mask=None, *, rng=0) -> np.ndarray:
    """2-D phase unwrapping (Herráez et al. 2002, the paper's Appendix C) by scikit-image.

    Parameters
    ----------
    phase : (H, W) wrapped phase, radians
    mask : (H, W) bool, True = valid pixel (e.g. the support); None = all valid

    Returns
    -------
    (H, W) float64 unwrapped phase; 0 outside ``mask``
    """
    from skimage.restoration import unwrap_phase

    p = _numpy(phase).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"unwrap needs a 2-D phase, got shape {p.shape}")
    if mask is None:
        return unwrap_phase(p, rng=rng)
    m = _numpy(mask).astype(bool)
    if m.shape != p.shape:
        raise ValueError(f"unwrap: mask shape {m.shape} != phase shape {p.shape}")
    if not m.any():
        return np.zeros_like(p)
    out = unwrap_phase(np.ma.masked_array(p, mask=~m), rng=rng)
    return np.ma.filled(out, 0.0)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
