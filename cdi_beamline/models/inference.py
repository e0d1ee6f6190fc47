"""Running the CNN: ``predict`` (amplitude, phase) and ``initial_estimate`` (seed for refinement)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import CDIValueError
from ..fourier import embed_centre
from .network import CDINet
from .symmetry import SYMMETRIES, dihedral, undo_dihedral

__all__ = ["predict", "initial_estimate", "SUPPORT_THRESHOLD"]

SUPPORT_THRESHOLD = 0.1
"""Default support binarisation: pixels whose predicted amplitude is >= 10 % of the frame's maximum."""


def _as_modulus(net: CDINet, modulus: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A real (B, S, S) modulus batch on the net's device as float32.

    Only the call's contract (shape, real dtype) is checked here: whether a frame is
    usable is decided by :func:`cdi_beamline.pipeline.validate_frame`, before the CNN.
    """
    s = net.config.input_size
    x = torch.as_tensor(np.asarray(modulus) if not isinstance(modulus, torch.Tensor) else modulus)
    if x.ndim != 3 or tuple(x.shape[-2:]) != (s, s):
        raise CDIValueError(f"modulus must have shape (B, {s}, {s}), got {tuple(x.shape)}")
    if x.is_complex():
        raise CDIValueError("modulus must be real (√I), got a complex tensor")
    return x.to(device=next(net.parameters()).device, dtype=torch.float32)


@torch.inference_mode()
def predict(net: CDINet, modulus: torch.Tensor | np.ndarray, symmetries: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude and phase of the objects behind a batch of diffraction moduli.

    Parameters
    ----------
    net : CDINet (put in eval mode by the caller; :func:`cdinet` returns it so)
    modulus : (B, 64, 64) √I, centred, any photon scale; numpy or torch
    symmetries : 1, or 8 for test-time augmentation: the net also sees the pattern under
        the 7 other symmetries of the square (each the exact pattern of the same map of
        the object), the predictions are mapped back, and per frame the one whose
        modulus best fits the data (chi² of eq. 5) is kept. 8× the cost; lower chi² of
        modulus, amplitude and phase (docs/evaluation.md).

    Returns
    -------
    amplitude : Tensor (B, 32, 32) float32, >= 0, on the net's device
    phase : Tensor (B, 32, 32) float32, radians wrapped to [−π, π), global phase fixed so
        the amplitude-weighted mean phase is about 0 (the training convention)

    Raises
    ------
    CDIValueError
        wrong shape or complex input. Frames are not checked for content (NaN, negative,
        all zero): :func:`cdi_beamline.pipeline.validate_frame` does that.
    """
    if symmetries not in (1, SYMMETRIES):
        raise CDIValueError(f"symmetries must be 1 or {SYMMETRIES}, got {symmetries}")
    x = _as_modulus(net, modulus)
    amp, phase = (t.float() for t in net(x))
    if symmetries > 1:
        amp, phase = _best_of_symmetries(net, x, amp, phase)
    phase = torch.remainder(phase + math.pi, 2 * math.pi) - math.pi
    return amp, phase


def _best_of_symmetries(net: CDINet, x: torch.Tensor, amp: torch.Tensor, phase: torch.Tensor):
    """Per frame, the prediction under the square's symmetries that best fits ``x`` (B, S, S)."""
    from ..phasing import chi2
    from .loss import predicted_modulus

    best = chi2(predicted_modulus(amp, phase, x.shape[-2:]), x)
    for k in range(1, SYMMETRIES):
        a, p = (undo_dihedral(t.float(), k) for t in net(dihedral(x, k)))
        c = chi2(predicted_modulus(a, p, x.shape[-2:]), x)
        better = c < best
        amp = torch.where(better[:, None, None], a, amp)
        phase = torch.where(better[:, None, None], p, phase)
        best = torch.minimum(best, c)
    return amp, phase


def initial_estimate(
    net: CDINet, modulus: torch.Tensor | np.ndarray, threshold: float = SUPPORT_THRESHOLD, symmetries: int = 1
):
    """The CNN's object and support on the pattern's grid, to seed iterative refinement.

    ``object = s · A·e^{iφ}`` embedded in the (H, W) grid with
    :func:`cdi_beamline.fourier.embed_centre`, where the scale ``s`` makes
    ``Σ|object|² = Σ modulus²`` (Parseval: the object then matches the data's scale).
    ``support = A >= threshold · max(A)`` per frame, embedded the same way.

    Parameters
    ----------
    net : CDINet
    modulus : (B, 64, 64) √I (the CNN's input size; other sizes are refused)
    threshold : float in (0, 1), fraction of each frame's maximum predicted amplitude
    symmetries : 1 or 8, test-time augmentation of :func:`predict`

    Returns
    -------
    cdi_beamline.phasing.InitialEstimate with object (B, H, W) complex64 and support
    (B, H, W) bool, on the net's device.
    """
    from ..phasing import InitialEstimate

    if not 0.0 < threshold < 1.0:
        raise CDIValueError(f"support threshold must be in (0, 1), got {threshold}")
    x = _as_modulus(net, modulus)
    amp, phase = predict(net, x, symmetries)
    shape = tuple(x.shape[-2:])
    support = amp >= threshold * amp.amax(dim=(-2, -1), keepdim=True)
    support &= amp > 0
    obj = embed_centre(torch.polar(amp, phase), shape)
    norm = obj.abs().square().sum(dim=(-2, -1), keepdim=True)
    scale = torch.sqrt(x.square().sum(dim=(-2, -1), keepdim=True) / norm.clamp_min(1e-30))
    obj = (obj * scale).to(torch.complex64)
    return InitialEstimate(object=obj, support=embed_centre(support, shape))
