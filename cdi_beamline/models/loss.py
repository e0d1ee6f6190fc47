"""Training losses: the paper's eq. 4 and a twin-aware variant.

Shapes: amplitudes and phases (B, h, w) with the object in the central h×w of the
pattern's (B, H, W) grid (h = H/2 for the CNN); the modulus is √I, centred.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..fourier import embed_centre, fix_global_phase, fourier_modulus

__all__ = [
    "cdi_loss",
    "twin_aware_loss",
    "LossTerms",
    "normalised_error",
    "pearson_loss",
    "predicted_modulus",
    "fixed_phase",
    "inversion",
]

_EPS = 1e-12


class LossTerms(dict):
    """Per-sample loss terms (B,) keyed by name, plus ``"total"`` (B,)."""


def normalised_error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """L1 = L2 of eq. 4: ``‖p − g‖₂ / ‖g‖₂`` per sample over the last two axes -> (B,).

    Works for real and complex tensors.
    """
    num = (pred - true).abs().square().sum(dim=(-2, -1))
    den = true.abs().square().sum(dim=(-2, -1))
    return torch.sqrt(num + _EPS) / torch.sqrt(den + _EPS)


def pearson_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """L3 of eq. 4: ``1 − Pearson(p, g)`` per sample over the last two axes -> (B,).

    Invariant to positive scaling and offsets of either argument.
    """
    p = pred.flatten(-2)
    g = true.flatten(-2)
    p = p - p.mean(-1, keepdim=True)
    g = g - g.mean(-1, keepdim=True)
    cov = (p * g).sum(-1)
    return 1.0 - cov / torch.sqrt(p.square().sum(-1) * g.square().sum(-1) + _EPS)


def predicted_modulus(amplitude: torch.Tensor, phase: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """|to_detector(embed_centre(A·e^{iφ}, shape))|: the modulus the prediction implies, (B, H, W)."""
    obj = torch.polar(amplitude.float(), phase.float())
    return fourier_modulus(embed_centre(obj, shape))


def inversion(x: torch.Tensor) -> torch.Tensor:
    """``x(−r)`` about the centre pixel (h//2, w//2) of the last two axes: index i -> (h − i) mod h.

    The twin of an object o is ``conj(inversion(o))``; it gives the same modulus.
    """
    return torch.roll(torch.flip(x, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def fixed_phase(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """The phase (B, h, w) of ``A·e^{iφ}`` after :func:`cdi_beamline.fourier.fix_global_phase`.

    Wrapped to (−π, π], and 0 where A = 0.
    """
    rotated = torch.angle(fix_global_phase(torch.polar(amplitude.float(), phase.float())))
    return torch.where(amplitude > 0, rotated, torch.zeros_like(rotated))


def _weights(weights: tuple[float, float, float]) -> tuple[float, float, float, float]:
    l1, l2, l3 = (float(w) for w in weights)
    return l1, l2, l3, l1 + l2 + l3


def cdi_loss(
    pred_amp: torch.Tensor,
    pred_phase: torch.Tensor,
    true_amp: torch.Tensor,
    true_phase: torch.Tensor,
    modulus: torch.Tensor,
    *,
    weights: tuple[float, float, float] = (1.0, 1.0, 4.0),
    reduction: str = "mean",
) -> torch.Tensor | LossTerms:
    """Eq. 4 of Wu et al. (2021), as published.

    ``(λ1·L1(A) + λ2·L2(φ) + λ3·L3(√I)) / (λ1 + λ2 + λ3)`` with L1 = L2 the normalised
    L2 error and L3 = 1 − Pearson correlation of the predicted and measured modulus.

    Parameters
    ----------
    pred_amp, pred_phase, true_amp, true_phase : Tensor (B, h, w)
    modulus : Tensor (B, H, W), the input √I (any scale)
    weights : (λ1, λ2, λ3), default the paper's (1, 1, 4)
    reduction : "mean" -> scalar; "none" -> :class:`LossTerms` of (B,) tensors

    Returns
    -------
    Tensor () or LossTerms
    """
    l1, l2, l3, total_w = _weights(weights)
    la = normalised_error(pred_amp, true_amp)
    lp = normalised_error(pred_phase, true_phase)
    lm = pearson_loss(predicted_modulus(pred_amp, pred_phase, modulus.shape[-2:]), modulus)
    total = (l1 * la + l2 * lp + l3 * lm) / total_w
    if reduction == "none":
        return LossTerms(total=total, amplitude=la, phase=lp, modulus=lm)
    return total.mean()


def twin_aware_loss(
    pred_amp: torch.Tensor,
    pred_phase: torch.Tensor,
    true_amp: torch.Tensor,
    true_phase: torch.Tensor,
    modulus: torch.Tensor,
    *,
    weights: tuple[float, float, float] = (1.0, 1.0, 4.0),
    reduction: str = "mean",
) -> torch.Tensor | LossTerms:
    """Eq. 4 made blind to the ambiguities the pattern cannot resolve.

    * Global phase: the target is rotated by :func:`fixed_phase` (the network learns
      that convention; the prediction is not rotated).
    * Phase wrapping: the phase term is the normalised error of the complex object,
      ``‖A_p e^{iφ_p} − A_g e^{iφ_g}‖ / ‖A_g‖``, which does not see the ±π seam and
      ignores the phase where there is no amplitude.
    * Twin: per sample, the smaller real-space loss of the target and its twin
      ``conj(o_g(−r))``.

    The Fourier term λ3·L3 is eq. 4's (twin- and phase-invariant already). Arguments
    and return as :func:`cdi_loss`; terms: total, amplitude, object, modulus (B,).
    """
    l1, l2, l3, total_w = _weights(weights)
    true_phase = fixed_phase(true_amp, true_phase)
    pred_obj = torch.polar(pred_amp.float(), pred_phase.float())
    real_space = []
    for amp_g, phase_g in ((true_amp, true_phase), (inversion(true_amp), -inversion(true_phase))):
        la = normalised_error(pred_amp, amp_g)
        lo = normalised_error(pred_obj, torch.polar(amp_g.float(), phase_g.float()))
        real_space.append((l1 * la + l2 * lo, la, lo))
    use_twin = real_space[1][0] < real_space[0][0]
    pick = lambda k: torch.where(use_twin, real_space[1][k], real_space[0][k])  # noqa: E731
    lm = pearson_loss(fourier_modulus(embed_centre(pred_obj, modulus.shape[-2:])), modulus)
    total = (pick(0) + l3 * lm) / total_w
    if reduction == "none":
        return LossTerms(total=total, amplitude=pick(1), object=pick(2), modulus=lm)
    return total.mean()
