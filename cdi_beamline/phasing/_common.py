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


def to_fft_order(x: torch.Tensor) -> torch.Tensor:
    """Centred (origin at (H//2, W//2)) -> FFT order (origin at (0, 0)), last two axes."""
    return torch.fft.ifftshift(x, dim=(-2, -1))


def from_fft_order(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_fft_order`."""
    return torch.fft.fftshift(x, dim=(-2, -1))


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


def gaussian_transfer(shape: tuple[int, int], sigma: float, device) -> torch.Tensor:
    """rfft2 of a unit-sum periodic Gaussian of std ``sigma`` px: (H, W//2+1) real."""
    H, W = shape
    fy = torch.fft.fftfreq(H, device=device)[:, None]
    fx = torch.fft.rfftfreq(W, device=device)[None, :]
    return torch.exp(-2.0 * (math.pi * sigma) ** 2 * (fy**2 + fx**2)).to(torch.float32)


def shrinkwrap_due(it: int, config: RefineConfig) -> bool:
    """Whether shrink-wrap updates the support before iteration ``it`` (0-based)."""
    start = config.shrinkwrap_start
    return it >= start and (it - start) % config.shrinkwrap_every == 0


def shrinkwrap(x, blur, threshold, support2, previous, modulus: Callable | None = None):
    """Marchesini shrink-wrap: blurred |x| above ``threshold``·max, inside Support 2.

    x : (B, H, W) complex64; blur : :func:`gaussian_transfer`; support2 : (H, W) bool;
    previous : (B, H, W) bool, kept by frames whose new support would be empty.
    modulus : |x| for complex64 (the CPU kernels': torch's complex abs is slow there), or None.
    """
    B, H, W = x.shape
    amp = abs2(x).sqrt_() if modulus is None else modulus(x)
    smooth = torch.fft.irfft2(torch.fft.rfft2(amp) * blur, s=(H, W))
    peak = smooth.amax((-2, -1), keepdim=True)
    new = (smooth > threshold * peak) & support2
    # (a uint8 max: bool any() over two axes costs as much as the blur's multiply)
    empty = new.view(torch.uint8).view(B, -1).amax(1) == 0
    if not empty.any():
        return new
    return torch.where(empty[:, None, None], previous, new)


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
    """What a backend needs, built by :func:`.refine.refine`; arrays in FFT order.

    x : (B, H, W) complex64, the start on the normalised scale
    S : (B, H, W) bool, the start support; support2 : (H, W) bool
    Mm : (B, H, W) float32, the normalised data, zero on unmeasured pixels
    Mr : ``Mm / sqrt(HW)``: the data in the units of the unscaled FFT, / HW
    measured : (B, H, W) bool, or None (all measured)
    unmeasured_r : ``(1 - measured) / HW`` float32, or None
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
