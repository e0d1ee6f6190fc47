"""Several random starts for one pattern, the best kept, aligned and averaged.

:func:`multistart` runs ``starts`` random starts of :func:`.refine.refine` as one batch
(B = starts: one pass of the loop for all, on the pattern's device), keeps the ``keep``
of lowest chi² (eq. 5), aligns each onto the best up to the ambiguities of phase
retrieval (translation, twin, global phase: :func:`.align.align`) and averages them.
The spread of the kept solutions about their mean says how well the solution is
determined. cohere's "generations" and PyNX's ``nb_run_keep`` select the same way; see
docs/phasing.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RefineConfig
from ..errors import CDIValueError
from ..fourier import fix_global_phase
from ._common import abs2, spatial_dims, to_fft_order
from .align import align
from .refine import chi2, refine

__all__ = ["MultiStartResult", "multistart"]


@dataclass
class MultiStartResult:
    """Result of :func:`multistart`, centred, on the device of the pattern.

    object : (*spatial) complex64, the aligned average of the kept solutions, on the data's
        scale, global phase fixed (:func:`cdi_beamline.fourier.fix_global_phase`)
    support : (*spatial) bool, the union of the kept solutions' aligned supports
    chi2 : chi² (eq. 5) of ``|to_detector(object)|`` against the data
    chi2_starts : (starts,) float32 on the CPU, each start's final chi²
    kept : (keep,) int64 on the CPU, the starts kept, lowest chi² first (the first is the
        reference the others are aligned onto)
    spread_amplitude : rms over the support of the kept amplitudes about their mean,
        relative to the mean amplitude over the support
    spread_phase : rms over the support of the kept phases about the mean's phase, weighted
        by the mean's intensity ``|object|²`` (the phase of the faint rim is noise), radians
    schedule, backend : as in :class:`.refine.RefineResult`
    """

    object: torch.Tensor
    support: torch.Tensor
    chi2: float
    chi2_starts: torch.Tensor
    kept: torch.Tensor
    spread_amplitude: float
    spread_phase: float
    schedule: str
    backend: str


def _check(modulus: torch.Tensor, mask: torch.Tensor | None, starts: int, keep: int) -> None:
    if modulus.ndim not in (2, 3):
        raise CDIValueError(
            f"multistart: modulus must be one pattern (H, W) or (D, H, W), got shape {tuple(modulus.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(modulus.shape):
        raise CDIValueError(
            f"multistart: mask shape {tuple(mask.shape)} does not match the pattern {tuple(modulus.shape)}"
        )
    if starts < 1 or not 1 <= keep <= starts:
        raise CDIValueError(f"multistart: need 1 <= keep <= starts, got starts={starts}, keep={keep}")


@torch.no_grad()
def multistart(
    modulus: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    config: RefineConfig | None = None,
    starts: int = 8,
    keep: int = 1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> MultiStartResult:
    """Refine ``starts`` random starts of one pattern in one batch; average the best ``keep``.

    Parameters
    ----------
    modulus : (*spatial) real tensor, spatial (H, W) or (D, H, W): centred sqrt(intensity),
        on the device to run on
    mask : (*spatial) bool, True = measured, or None (all measured)
    config : as for :func:`.refine.refine` (default :class:`RefineConfig`)
    starts : random starts, run as one batch
    keep : solutions of lowest chi² averaged. Default 1, the best start alone: averaging
        starts that converged to different local solutions raises chi² (APS 34-ID-C 64³
        crop, 600 iterations: best start 0.0056, the average of the best 4: 0.02; 2-core
        x86-64 CPU, 2026-12-03), though it shows their spread
    seed : seed of the random starts (start ``i`` differs from start ``j``)
    progress : ``progress(iterations_done, total)``, as for :func:`.refine.refine`

    Returns
    -------
    MultiStartResult

    Raises
    ------
    CDIValueError
        a modulus that is not one 2-D or 3-D pattern, a mask of another shape, keep not in
        1 … starts, or any bad input :func:`.refine.refine` refuses
    """
    _check(modulus, mask, starts, keep)
    nd = modulus.ndim
    device = modulus.device
    result = refine(modulus.expand(starts, *modulus.shape), mask=mask, config=config, seed=seed, progress=progress)
    chi2_starts = result.chi2.cpu()
    kept = torch.argsort(chi2_starts, stable=True)[:keep]

    first = int(kept[0])
    reference = result.object[first]
    objects, supports = [reference.cpu().numpy()], [result.support[first].cpu().numpy()]
    for i in kept[1:].tolist():
        pair = align(result.object[i], reference, support=supports[0])
        objects.append(pair.recon)
        supports.append(pair.move(result.support[i].cpu().numpy()))
    stack = torch.from_numpy(np.stack(objects)).to(device)  # (keep, *spatial)
    support = torch.from_numpy(np.logical_or.reduce(supports)).to(device)
    mean = stack.mean(0)

    amp, mean_amp = stack.abs(), mean.abs()
    inside = support.expand_as(amp)
    spread_amplitude = float(
        (amp - mean_amp)[inside].square().mean().sqrt() / mean_amp[support].mean().clamp_min(1e-30)
    )
    # weighted by the mean's intensity: at the support's faint rim the phase is noise
    weight = mean_amp.square().expand_as(amp)[inside]
    dphi2 = torch.angle(stack * mean.conj())[inside].square()
    spread_phase = float(((weight * dphi2).sum() / weight.sum().clamp_min(1e-30)).sqrt())

    # fix_global_phase sums over the last two axes: one row of all pixels
    mean = fix_global_phase(mean.reshape(1, -1)).reshape(modulus.shape)
    dims = spatial_dims(nd)
    predicted = abs2(torch.fft.fftn(to_fft_order(mean, nd), dim=dims, norm="ortho")).sqrt_()
    measured = None if mask is None else to_fft_order(mask.to(device), nd)
    final = chi2(predicted, to_fft_order(modulus.to(torch.float32), nd), measured, ndim=nd)
    return MultiStartResult(
        object=mean.to(torch.complex64),
        support=support,
        chi2=float(final),
        chi2_starts=chi2_starts,
        kept=kept.to(torch.int64),
        spread_amplitude=spread_amplitude,
        spread_phase=spread_phase,
        schedule=result.schedule,
        backend=result.backend,
    )
