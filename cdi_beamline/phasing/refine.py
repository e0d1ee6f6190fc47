"""Batched iterative phase retrieval: ER, HIO, RAAR with shrink-wrap, masks and chi².

2-D and 3-D from the same code: the frames are (B, *spatial), spatial (H, W) or (D, H, W),
and every FFT, sum and shift acts on the spatial axes (``modulus.ndim - 1`` of them).

Internally the loop runs in *FFT order* (origin at pixel (0, 0) in both spaces), so that
no shift is needed per iteration: the centred arrays of :mod:`cdi_beamline.fourier` are
moved into FFT order once on entry (:func:`._common.to_fft_order`) and back once on exit.
``to_detector(o) == fftshift(fft2(ifftshift(o)))``, hence with ``o_u = ifftshift(o)``
and ``F_u = ifftshift(F)`` the loop simply computes ``F_u = fft2(o_u, norm="ortho")``
(in practice unscaled FFTs, with the factors folded into the data: same result).

All three algorithms are one update ``x <- a * x + b * P_M(x)`` with real
coefficient maps built from the support S (recomputed only when S changes):

=====  ===================  =====================================
 alg    a (outside S only)   b
=====  ===================  =====================================
 ER     0                    S
 HIO    1 - S                S - beta (1 - S)
 RAAR   beta (1 - S)         S + (1 - 2 beta)(1 - S)
=====  ===================  =====================================

``RefineConfig.backend`` picks the loop; "auto" is "numba" on the CPU where numba
imports, "torch" elsewhere:

- "numba" (CPU, :mod:`._numba`): the iterate is kept in Fourier space, only S·y crosses to
  real space, through DFTs pruned to the supports' box (2-D; full n-D FFTs on volumes), and
  the element-wise work is in the fused kernels of :mod:`._numba_kernels` (about 2x faster
  per pattern than "torch" in 2-D, 3x on 64³ volumes; same arithmetic up to float
  rounding). With positivity: the torch loop with the kernels' modulus projection.
- "torch" (any device, :mod:`._torch`): one iteration is a pure function of tensors.
- "compiled" (:mod:`._compiled`): that function through torch.compile (the element-wise
  work fused into a few kernels between the FFTs; CUDA graphs on CUDA with
  ``RefineConfig.cuda_graphs``). If compiling fails, the torch iteration runs and
  ``RefineResult.backend`` says why.

The maths all backends share (coefficients, shrink-wrap, chi²) is in :mod:`._common`.

Every iteration n yields an object, ``x_n·S`` (the iterate restricted to the support in
force), and its chi²; n = 0 is the start restricted to its support. ``RefineConfig.keep``
chooses what is returned, per frame: the object of lowest chi² with its support ("best",
the default: HIO's excursions and a good start's head start are not lost) or the last one.
chi² favours looser supports, so "best" compares the objects whose support estimates the
object's (:func:`._common.candidates`): the support given with the start, or one
shrink-wrapped from an ER iterate; and always the last object.

chi² (eq. 5 of Wu et al. 2021) is scale invariant: before comparing, the model modulus
is multiplied by the scale ``s`` that minimises the error in closed form,
``s = Σ m|F|M / Σ m|F|²``, which gives ``chi² = 1 - (Σ m|F|M)² / (Σ m|F|² Σ m M²)``
over measured pixels ``m``. The history holds the chi² of the object after n = 0 … T-1
iterations, and ``RefineResult.chi2`` is that of the returned object (after T iterations
with ``keep="last"``; the lowest of the history and of the object after T with "best").
The numba backend gets each from the spectrum of ``S·x`` that its step computes anyway
(two reductions in the same pass); the torch backends pay one more FFT per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RefineConfig
from ..config.schedule import parse_schedule
from ..errors import CDIRuntimeError, CDIValueError
from . import _compiled, _torch
from ._common import (
    EPS,
    Problem,
    abs2,
    candidates,
    chi2_closed_form,
    from_fft_order,
    gaussian_transfer,
    per_frame,
    spatial_dims,
    to_fft_order,
)

__all__ = [
    "InitialEstimate",
    "RefineResult",
    "chi2",
    "refine",
    "square_support",
    "random_initial_object",
]


@dataclass
class InitialEstimate:
    """A starting point for :func:`refine`, on the pattern's grid (centred).

    object : (B, *spatial) complex64, or None for random phases (amplitude 1 in the support)
    support : (B, *spatial) bool, or None for the rectangular initial support

    spatial is (H, W) or (D, H, W), that of the patterns.
    """

    object: torch.Tensor | None = None
    support: torch.Tensor | None = None


@dataclass
class RefineResult:
    """Result of :func:`refine`, centred, on the device of the input.

    object : (B, *spatial) complex64, zero outside the support, on the data's scale
    support : (B, *spatial) bool
    chi2 : (B,) float32, chi² (eq. 5) of ``|to_detector(object)|`` against the data
    chi2_history : (B, T) float32, chi² of the object after n = 0 … T-1 iterations
        (n = 0: the start restricted to its support)
    best_iteration : (B,) int64, the iterations behind the returned object (0 … T; T with
        ``keep="last"``)
    schedule : the schedule run, as a string
    backend : what ran: "numba", "torch", "compiled", or "torch (compiled unavailable: <why>)"
    """

    object: torch.Tensor
    support: torch.Tensor
    chi2: torch.Tensor
    chi2_history: torch.Tensor
    best_iteration: torch.Tensor
    schedule: str
    backend: str


def chi2(
    pred_modulus: torch.Tensor, modulus: torch.Tensor, mask: torch.Tensor | None = None, *, ndim: int = 2
) -> torch.Tensor:
    """Scale-invariant chi² of eq. 5 per frame.

    ``Σ_m (s·pred - M)² / Σ_m M²`` with the optimal scale ``s`` (closed form), over
    measured pixels ``m`` (``mask`` True, all pixels if None).

    Parameters
    ----------
    pred_modulus, modulus : (B, *spatial) or (*spatial) real tensors
    mask : bool, broadcastable to ``modulus``, True = measured
    ndim : the number of spatial axes summed over, 2 (H, W) or 3 (D, H, W)

    Returns
    -------
    (B,) tensor (a 0-d tensor for input of ``ndim`` axes)
    """
    if pred_modulus.shape != modulus.shape:
        raise CDIValueError(
            f"chi2: model modulus shape {tuple(pred_modulus.shape)} != data shape {tuple(modulus.shape)}"
        )
    p = pred_modulus.double()
    m = modulus.double()
    if mask is not None:
        w = mask.to(p.dtype).expand_as(m)
        p, m = p * w, m * w
    dims = spatial_dims(ndim)
    spm = (p * m).sum(dims)
    spp = (p * p).sum(dims)
    smm = (m * m).sum(dims)
    return chi2_closed_form(spm, spp, smm, 1e-300).clamp_min(0.0).to(torch.float32)


def square_support(shape: tuple[int, ...], size: float, device=None) -> torch.Tensor:
    """Centred square or cube of side ``size·min(shape)`` (clipped to the frame), shape
    (H, W) or (D, H, W) -> bool of that shape."""
    side = max(1, int(round(size * min(shape))))
    out = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    box = tuple(slice(max(n // 2 - side // 2, 0), n // 2 - side // 2 + side) for n in shape)
    out[box] = True
    return out


def random_initial_object(support: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Unit amplitude with uniformly random phase inside ``support`` (B, *spatial) -> complex64.

    Drawn on the CPU with ``generator`` so that a seed gives the same start on any device.
    """
    phase = torch.rand(support.shape, generator=generator) * (2 * math.pi)
    obj = torch.polar(torch.ones_like(phase), phase).to(support.device)
    return obj * support


def _check_inputs(modulus, mask, init):
    if modulus.ndim < 3:  # one frame without its batch axis
        raise CDIValueError(f"modulus must be (B, H, W), got shape {tuple(modulus.shape)}")
    if modulus.ndim > 4:
        raise CDIValueError(f"modulus must be (B, H, W) or (B, D, H, W), got shape {tuple(modulus.shape)}")
    if modulus.is_complex() or not modulus.is_floating_point():
        raise CDIValueError(f"modulus must be a real floating tensor, got {modulus.dtype}")
    if not torch.isfinite(modulus).all():
        raise CDIValueError("modulus contains NaN or inf")
    if (modulus < 0).any():
        raise CDIValueError("modulus contains negative values (pass sqrt(intensity))")
    frames, spatial = tuple(modulus.shape), tuple(modulus.shape[1:])
    if mask is not None:
        if mask.dtype != torch.bool:
            raise CDIValueError(f"mask must be bool (True = measured), got {mask.dtype}")
        if tuple(mask.shape) not in (spatial, frames):
            raise CDIValueError(
                f"mask shape {tuple(mask.shape)} does not match the frames: expected {spatial} or {frames}"
            )
    if init is not None:
        for name in ("object", "support"):
            t = getattr(init, name)
            if t is not None and tuple(t.shape) != frames:
                raise CDIValueError(f"initial {name} shape {tuple(t.shape)} != frames {frames}")


def _numba_backend():
    """:mod:`._numba`, or None where numba does not import."""
    try:
        from . import _numba
    except ImportError:
        return None
    return _numba


def _backend(config: RefineConfig, device: torch.device):
    """The module whose ``run(problem)`` refines: config.backend, "auto" resolved."""
    name = config.backend
    if name == "auto":
        numba = _numba_backend() if device.type == "cpu" else None
        return numba if numba is not None else _torch
    if name == "numba":
        if device.type != "cpu":
            raise CDIValueError(
                f"RefineConfig.backend 'numba' runs on the CPU, the data are on {device}: use 'torch' or 'compiled'"
            )
        numba = _numba_backend()
        if numba is None:
            raise CDIRuntimeError("RefineConfig.backend 'numba' needs the numba package, which does not import")
        return numba
    return _compiled if name == "compiled" else _torch


@torch.no_grad()
def refine(
    modulus: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    init: InitialEstimate | None = None,
    config: RefineConfig | None = None,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RefineResult:
    """Refine a batch of objects against measured Fourier moduli.

    The number of spatial axes follows the data: 2 for (B, H, W) patterns, 3 for
    (B, D, H, W) volumes; every array below has the patterns' spatial shape.

    Parameters
    ----------
    modulus : (B, *spatial) float tensor, centred sqrt(intensity), on the device to run on
    mask : (*spatial) or (B, *spatial) bool, True = measured; unmeasured pixels keep the
        current estimate's Fourier value. None = all measured.
    init : starting object and/or support; missing parts are random phases (seeded)
        and the rectangular support of ``config.init_support_size``.
    config : schedule, beta, shrink-wrap, support sizes, backend (default :class:`RefineConfig`)
    seed : seed of the random initial phases (None = 0)
    progress : called as ``progress(iterations_done, total)`` after each schedule step

    Returns
    -------
    RefineResult

    Raises
    ------
    CDIValueError
        bad input (shape, dtype, NaN/inf, negative modulus, mask or start not matching the
        frames), or backend "numba" for data not on the CPU
    CDIRuntimeError
        backend "numba" without numba
    """
    config = config or RefineConfig()
    device = modulus.device
    backend = _backend(config, device)
    _check_inputs(modulus, mask, init)
    schedule = parse_schedule(config.schedule)
    B, spatial = modulus.shape[0], tuple(modulus.shape[1:])
    nd = len(spatial)
    dims = spatial_dims(nd)
    N = math.prod(spatial)
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))

    # Data in FFT order, normalised per frame (scale restored on exit).
    M = to_fft_order(modulus.to(torch.float32), nd)
    measured = None if mask is None else to_fft_order(mask.to(device).expand(B, *spatial), nd).contiguous()
    Mm = M if measured is None else M * measured
    scale = Mm.square().sum(dims).sqrt().clamp_min(EPS)  # (B,)
    Mm = (Mm / per_frame(scale, nd)).contiguous()

    if init is not None and init.support is not None:
        S = to_fft_order(init.support.to(device=device, dtype=torch.bool), nd)
    else:
        S = to_fft_order(square_support(spatial, config.init_support_size, device), nd).expand(B, *spatial)
    if init is not None and init.object is not None:
        x = to_fft_order(init.object.to(device=device, dtype=torch.complex64), nd).clone()
        # Put the given object on the data's scale with the optimal factor.
        a = abs2(torch.fft.fftn(x, dim=dims, norm="ortho")).sqrt_()
        w = 1.0 if measured is None else measured
        s = (a * Mm * w).sum(dims) / (a.square() * w).sum(dims).clamp_min(EPS)
        x *= per_frame(s, nd)
    else:
        x = to_fft_order(random_initial_object(from_fft_order(S, nd), gen), nd).contiguous()
        x *= per_frame(1.0 / x.abs().square().sum(dims).sqrt().clamp_min(EPS), nd)

    problem = Problem(
        x=x,
        S=S.contiguous(),
        support2=to_fft_order(square_support(spatial, config.support2_size, device), nd),
        Mm=Mm,
        Mr=Mm * (1.0 / math.sqrt(N)),
        measured=measured,
        unmeasured_r=None if measured is None else (~measured).to(torch.float32) * (1.0 / N),
        smm=Mm.square().sum(dims),
        steps=list(schedule),
        config=config,
        blur=gaussian_transfer(spatial, config.shrinkwrap_sigma, device) if config.shrinkwrap else None,
        candidates=candidates(list(schedule), config, init is not None and init.support is not None),
        progress=progress,
    )
    obj, S, history, iterations, *ran = backend.run(problem)
    final = chi2(abs2(torch.fft.fftn(obj, dim=dims, norm="ortho")).sqrt_(), Mm, measured, ndim=nd)
    return RefineResult(
        object=from_fft_order(obj * per_frame(scale, nd), nd),
        support=from_fft_order(S, nd),
        chi2=final,
        chi2_history=history.T.clamp_min(0.0).contiguous(),
        best_iteration=iterations.to(device),
        schedule=str(schedule),
        backend=ran[0] if ran else backend.__name__.rsplit("._", 1)[1],
    )
