"""The maths every refinement backend shares: update coefficients, shrink-wrap, chi², layout.

One owner for each: the coefficients of ``x <- a·x + b·P_M(x)`` per algorithm, the beta of
a schedule step, when and how shrink-wrap updates the support, the closed form of eq. 5,
and the move into and out of FFT order (see :mod:`.refine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RefineConfig

EPS = 1e-12

#: chi² differences below this are noise (float32 sums, ``1 - c²`` cancels): ``keep="best"``
#: takes a later object whose chi² is within it of the lowest so far
CHI2_RESOLUTION = 1e-7


def spatial_dims(ndim: int) -> tuple[int, ...]:
    """The last ``ndim`` axes, ``(-ndim, ..., -1)``: the spatial axes of (B, *spatial) arrays."""
    return tuple(range(-ndim, 0))


def to_fft_order(x: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Centred (origin at N//2 per axis) -> FFT order (origin at 0), the last ``ndim`` axes."""
    return torch.fft.ifftshift(x, dim=spatial_dims(ndim))


def from_fft_order(x: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Inverse of :func:`to_fft_order`."""
    return torch.fft.fftshift(x, dim=spatial_dims(ndim))


def per_frame(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (B,) tensor viewed as (B, 1, ...) to broadcast over (B, *spatial) with ``ndim`` spatial axes."""
    return v.view(-1, *([1] * ndim))


def abs2(z: torch.Tensor) -> torch.Tensor:
    """|z|² as a contiguous real tensor (several times faster on CPU than ``z.abs()``).

    Under torch.compile it is computed on the real view: inductor generates no code for
    complex operators (each would stay one eager kernel), but fuses real ones.
    """
    if torch.compiler.is_compiling():
        return torch.view_as_real(z).square().sum(-1)
    return (z * z.conj()).real.contiguous()


def chi2_closed_form(spm: torch.Tensor, spp: torch.Tensor, smm: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eq. 5 with the optimal scale: ``1 - (Σ pM)² / (Σ p² Σ M²)`` from the three sums."""
    return 1.0 - spm.square() / (spp * smm).clamp_min(eps)


def step_beta(beta: float | None, config: RefineConfig) -> float:
    """The beta of a schedule step: its own, else ``config.beta``."""
    return config.beta if beta is None else beta


def outside_coefficients(alg: str, beta: float) -> tuple[float, float]:
    """(a, b) of the update ``x <- a x + b P_M(x)`` outside the support (inside: 0, 1)."""
    if alg == "ER":
        return 0.0, 0.0
    if alg == "HIO":
        return 1.0, -beta
    return beta, 1.0 - 2.0 * beta  # RAAR


def coefficients(alg: str, beta: float, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real maps (a, b) of the update ``x <- a x + b P_M(x)`` for support ``s`` (float)."""
    a_out, b_out = outside_coefficients(alg, beta)
    out = 1.0 - s
    return a_out * out, s + b_out * out


def gaussian_transfer(shape: tuple[int, ...], sigma: float, device) -> torch.Tensor:
    """rfftn of a unit-sum periodic Gaussian of std ``sigma`` px over ``shape`` (2 or 3 axes):
    (..., W//2+1) real, e.g. (H, W//2+1) or (D, H, W//2+1)."""
    n = len(shape)
    f2 = torch.zeros((), device=device)
    for axis, size in enumerate(shape):
        f = torch.fft.rfftfreq(size, device=device) if axis == n - 1 else torch.fft.fftfreq(size, device=device)
        f2 = f2 + (f**2).view(*([1] * axis), -1, *([1] * (n - 1 - axis)))
    return torch.exp(-2.0 * (math.pi * sigma) ** 2 * f2).to(torch.float32)


def shrinkwrap_due(it: int, config: RefineConfig) -> bool:
    """Whether shrink-wrap updates the support before iteration ``it`` (0-based)."""
    start = config.shrinkwrap_start
    return it >= start and (it - start) % config.shrinkwrap_every == 0


def shrinkwrap(x, blur, threshold, support2, previous, modulus: Callable | None = None):
    """Marchesini shrink-wrap: blurred |x| above ``threshold``·max, inside Support 2.

    x : (B, *spatial) complex64, spatial (H, W) or (D, H, W); blur : :func:`gaussian_transfer`;
    support2 : (*spatial) bool; previous : (B, *spatial) bool, kept by frames whose new
    support would be empty.
    modulus : |x| for complex64 (the CPU kernels': torch's complex abs is slow there), or None.
    """
    B, *spatial = x.shape
    dims = spatial_dims(len(spatial))
    amp = abs2(x).sqrt_() if modulus is None else modulus(x)
    smooth = torch.fft.irfftn(torch.fft.rfftn(amp, dim=dims) * blur, s=spatial, dim=dims)
    peak = smooth.amax(dims, keepdim=True)
    new = (smooth > threshold * peak) & support2
    # (a uint8 max: bool any() over two axes costs as much as the blur's multiply)
    empty = new.view(torch.uint8).view(B, -1).amax(1) == 0
    if not empty.any():
        return new
    return torch.where(per_frame(empty, len(spatial)), previous, new)


def candidates(steps: list, config: RefineConfig, support_given: bool) -> list[bool]:
    """Which objects ``x_n·S`` (n = 0 … T) ``keep="best"`` may return.

    chi² favours looser supports (more pixels to fit with), so the objects compared are
    those whose support is an estimate of the object's: the support given with the start
    (``support_given``) or a shrink-wrap of an ER iterate; not the default rectangle (a
    bound to shrink from) nor a shrink-wrap of an HIO or RAAR iterate (it also blurs the
    iterate's exterior, the feedback term: a looser support, often with islands). With
    positivity, only objects made by an ER step (real and non-negative). The last object
    (n = T) always counts, so "best" is never worse than "last".
    """
    out = [support_given and not config.positivity]
    ok = support_given
    for it, (alg, _) in enumerate(steps):
        if config.shrinkwrap and shrinkwrap_due(it, config):
            ok = support_given if it == 0 else steps[it - 1][0] == "ER"
        out.append(ok and (alg == "ER" or not config.positivity))
    out[-1] = True
    return out


@dataclass
class Problem:
    """What a backend needs, built by :func:`.refine.refine`; arrays in FFT order, shaped
    (B, *spatial) with spatial (H, W) or (D, H, W) (N pixels per frame).

    x : (B, *spatial) complex64, the start on the normalised scale
    S : (B, *spatial) bool, the start support; support2 : (*spatial) bool
    Mm : (B, *spatial) float32, the normalised data, zero on unmeasured pixels
    Mr : ``Mm / sqrt(N)``: the data in the units of the unscaled FFT, / N
    measured : (B, *spatial) bool, or None (all measured)
    unmeasured_r : ``(1 - measured) / N`` float32, or None
    smm : (B,) float32, ``Σ Mm²``
    steps : [(algorithm, beta or None)] per iteration
    blur : :func:`gaussian_transfer` or None (no shrink-wrap)
    candidates : T + 1 bools, :func:`candidates`
    progress : ``progress(done, total)`` after each schedule step, or None
    """

    x: torch.Tensor
    S: torch.Tensor
    support2: torch.Tensor
    Mm: torch.Tensor
    Mr: torch.Tensor
    measured: torch.Tensor | None
    unmeasured_r: torch.Tensor | None
    smm: torch.Tensor
    steps: list
    config: RefineConfig
    blur: torch.Tensor | None
    candidates: list[bool]
    progress: Callable[[int, int], None] | None

    @property
    def ndim(self) -> int:
        """The number of spatial axes, 2 or 3."""
        return self.x.ndim - 1

    @property
    def dims(self) -> tuple[int, ...]:
        """The spatial axes (:func:`spatial_dims`)."""
        return spatial_dims(self.ndim)

    def report(self, it: int) -> None:
        """Call ``progress`` after iteration ``it`` if it ends a schedule step."""
        steps = self.steps
        if self.progress is not None and (it + 1 == len(steps) or steps[it + 1] != steps[it]):
            self.progress(it + 1, len(steps))

    def shrinkwrap_due(self, it: int) -> bool:
        """Whether shrink-wrap updates the support before iteration ``it``."""
        return self.blur is not None and shrinkwrap_due(it, self.config)

    def new_support(self, x: torch.Tensor, S: torch.Tensor, support2: torch.Tensor, modulus: Callable | None = None):
        """Shrink-wrap (:func:`shrinkwrap`) of x with the config's threshold, in x's order (support2 too)."""
        return shrinkwrap(x, self.blur, self.config.shrinkwrap_threshold, support2, S, modulus)
