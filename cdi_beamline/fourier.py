"""The one place where FFT conventions live.

Convention: real-space objects and detector patterns are both *centred*: the origin
(zero frequency / object centre) sits at pixel ``(H // 2, W // 2)``. The transform is
unitary (``norm="ortho"``), so Parseval holds without factors:
``sum |to_detector(o)|**2 == sum |o|**2``.

    to_detector(o) = fftshift(fft2(ifftshift(o), norm="ortho"))
    to_object(F)   = fftshift(ifft2(ifftshift(F), norm="ortho"))

All functions act on the last two axes of torch tensors shaped (..., H, W).

The one global-phase convention of the package also lives here (:func:`fix_global_phase`):
a modulus cannot tell ``o`` from ``o·e^{ic}``, so every object the package returns or
learns is rotated so that its amplitude-weighted mean phase, ``angle(Σ o)``, is zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import CDIValueError

__all__ = [
    "FFT_CONVENTION",
    "FFT_CONVENTION_3D",
    "to_detector",
    "to_object",
    "fourier_modulus",
    "embed_centre",
    "crop_centre",
    "fix_global_phase",
    "bin_pattern",
    "binning_ramp",
    "fourier_upsample",
]

FFT_CONVENTION = (
    "detector = fftshift(fft2(ifftshift(object), norm='ortho')); "
    "origin at pixel (H//2, W//2) in both spaces; modulus = |detector|, intensity = modulus**2"
)

FFT_CONVENTION_3D = (
    "detector = fftshift(fftn(ifftshift(object), norm='ortho')) over the axes (D, H, W); "
    "origin at voxel (D//2, H//2, W//2) in both spaces; modulus = |detector|, intensity = modulus**2"
)
"""The same convention for a 3D pattern (``cdi-beamline reconstruct --ndim 3``)."""

_DIMS = (-2, -1)


def to_detector(obj: torch.Tensor) -> torch.Tensor:
    """Centred unitary 2D FFT: object (..., H, W) -> complex detector field (..., H, W)."""
    x = torch.fft.ifftshift(obj, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=_DIMS)


def to_object(field: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_detector`: detector field (..., H, W) -> object (..., H, W)."""
    x = torch.fft.ifftshift(field, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(x, norm="ortho"), dim=_DIMS)


def fourier_modulus(obj: torch.Tensor) -> torch.Tensor:
    """|to_detector(obj)|, real (..., H, W)."""
    return to_detector(obj).abs()


def _offsets(small: tuple[int, int], big: tuple[int, int]) -> tuple[int, int]:
    # The small array's centre pixel (h//2, w//2) lands on the big one's (H//2, W//2).
    return big[0] // 2 - small[0] // 2, big[1] // 2 - small[1] // 2


def embed_centre(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad (..., h, w) into (..., H, W) keeping the centre pixel at (H//2, W//2)."""
    h, w = x.shape[-2:]
    H, W = shape
    if h > H or w > W:
        raise CDIValueError(f"cannot embed {(h, w)} into smaller {(H, W)}")
    r0, c0 = _offsets((h, w), (H, W))
    out = x.new_zeros((*x.shape[:-2], H, W))
    out[..., r0 : r0 + h, c0 : c0 + w] = x
    return out


def crop_centre(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre crop (..., H, W) to (..., h, w); inverse of :func:`embed_centre`."""
    H, W = x.shape[-2:]
    h, w = shape
    if h > H or w > W:
        raise CDIValueError(f"cannot crop {(H, W)} to larger {(h, w)}")
    r0, c0 = _offsets((h, w), (H, W))
    return x[..., r0 : r0 + h, c0 : c0 + w]


def fix_global_phase(obj: torch.Tensor) -> torch.Tensor:
    """Rotate each complex object (..., H, W) so that its amplitude-weighted mean phase is 0.

    ``c = angle(Σ o) = angle(Σ |o|·e^{iφ})``, returns ``o·e^{−ic}`` (an object whose sum is 0
    is unchanged). The package's one convention: the Reconstructor's results, the CNN's
    training target (hence its predictions) use it. It is twin-consistent: the twin ``conj(o(−r))`` has
    ``−c``, so the twin of a fixed object is fixed too.
    """
    return obj * torch.exp(-1j * torch.angle(obj.sum(_DIMS, keepdim=True)))


def bin_pattern(intensity: torch.Tensor, factors: Sequence[int], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum ``factors = (ky, kx)`` blocks of a centred pattern: (..., H, W) -> (..., H/ky, W/kx).

    The centre pixel (H//2, W//2) falls in block (H//2/ky, W//2/kx), the binned centre; the
    block's own centre is ``(k - 1)/2`` pixels further out (see :func:`binning_ramp`). With
    ``mask`` (broadcastable, True = measured) a block sums its measured pixels scaled by
    ``ky·kx / n_measured`` (an unmeasured block is 0).
    """
    ky, kx = (int(k) for k in factors)
    H, W = intensity.shape[-2:]
    if ky < 1 or kx < 1 or H % ky or W % kx:
        raise CDIValueError(f"binning {ky}x{kx} does not divide the {H}x{W} pattern")

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-2], H // ky, ky, W // kx, kx).sum((-3, -1))

    if mask is None:
        return blocks(intensity)
    m = mask.to(intensity.dtype).expand_as(intensity)
    n = blocks(m)
    return blocks(intensity * m) * (ky * kx) / n.clamp_min(1)


def binning_ramp(shape: Sequence[int], factors: Sequence[int]) -> torch.Tensor:
    """(H, W) complex64 phase ramp that puts the object of a pattern binned by ``factors`` back
    where the object of the (H, W) pattern is.

    Binned pixel J sums pixels ``k·J … k·J + k − 1``, centred ``(k − 1)/2`` pixels beyond the
    q it is taken for: the binned pattern is (to the blocks' smoothing) that of
    ``o · exp(−2πi·(k − 1)/2 · x / H)`` per axis, on a grid with the same real-space pixel and
    a k times smaller field of view. Multiply the binned pattern's object by this ramp.
    """
    H, W = shape
    ky, kx = factors
    y = torch.arange(H, dtype=torch.float64) - H // 2
    x = torch.arange(W, dtype=torch.float64) - W // 2
    angle = torch.pi * ((ky - 1) * y[:, None] / H + (kx - 1) * x[None, :] / W)
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)


def fourier_upsample(obj: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Fourier interpolation of centred objects (..., h, w) onto a finer (..., H, W) grid with
    the same field of view (pixel h/H, w/W as large): the spectrum zero-padded about its
    centre. Values keep their scale (an object of ones stays ones away from edges)."""
    h, w = obj.shape[-2:]
    H, W = shape
    up = to_object(embed_centre(to_detector(obj), (H, W)))
    return up * ((H * W) / (h * w)) ** 0.5
