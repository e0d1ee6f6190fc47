"""Batched iterative phase retrieval: ER, HIO, RAAR with shrink-wrap, masks and chi².

Internally the loop runs in *FFT order* (origin at pixel (0, 0) in both spaces), so that
no shift is needed per iteration: the centred arrays of :mod:`cdi_beamline.fourier` are
moved into FFT order once on entry (:func:`_to_fft_order`) and back once on exit.
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

On the CPU (with numba, without positivity) the same iteration runs as
:func:`_refine_box_pruned`: the iterate is kept in Fourier space, only S·y crosses to real
space, through DFTs pruned to the supports' box, and the element-wise work is in the fused
kernels of :mod:`._numba_kernels` (about 2x faster per pattern than the torch path, which
runs everywhere else; same arithmetic up to float rounding). One iteration of the torch
path is the pure function :func:`_torch_iteration`; ``RefineConfig.fused`` runs it compiled
by torch.compile (:func:`_fused_iteration`: the element-wise work fused into a few kernels
between the FFTs, with CUDA graphs on CUDA); off by default until timed on a GPU.

chi² (eq. 5 of Wu et al. 2021) is scale invariant: before comparing, the model modulus
is multiplied by the scale ``s`` that minimises the error in closed form,
``s = Σ m|F|M / Σ m|F|²``, which gives ``chi² = 1 - (Σ m|F|M)² / (Σ m|F|² Σ m M²)``
over measured pixels ``m``. The history costs two reductions per iteration on the
``|F|`` that the modulus projection computes anyway; it is the chi² of the iterate
entering each iteration, and ``RefineResult.chi2`` is that of the returned object.
"""

from __future__ import annotations

import logging
import math
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RefineConfig
from ..config.schedule import parse_schedule

__all__ = [
    "InitialEstimate",
    "RefineResult",
    "chi2",
    "refine",
    "square_support",
    "random_initial_object",
]

_EPS = 1e-12
_log = logging.getLogger(__name__)


@dataclass
class InitialEstimate:
    """A starting point for :func:`refine`, on the pattern's grid (centred).

    object : (B, H, W) complex64, or None for random phases (amplitude 1 in the support)
    support : (B, H, W) bool, or None for the rectangular initial support
    """

    object: torch.Tensor | None = None
    support: torch.Tensor | None = None


@dataclass
class RefineResult:
    """Result of :func:`refine`, centred, on the device of the input.

    object : (B, H, W) complex64, zero outside the support, on the data's scale
    support : (B, H, W) bool
    chi2 : (B,) float32, chi² (eq. 5) of ``|to_detector(object)|`` against the data
    chi2_history : (B, T) float32, chi² of the iterate entering each of the T iterations
    schedule : the schedule run, as a string
    """

    object: torch.Tensor
    support: torch.Tensor
    chi2: torch.Tensor
    chi2_history: torch.Tensor
    schedule: str


def chi2(pred_modulus: torch.Tensor, modulus: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scale-invariant chi² of eq. 5 per frame.

    ``Σ_m (s·pred - M)² / Σ_m M²`` with the optimal scale ``s`` (closed form), over
    measured pixels ``m`` (``mask`` True, all pixels if None).

    Parameters
    ----------
    pred_modulus, modulus : (B, H, W) or (H, W) real tensors
    mask : bool, broadcastable to ``modulus``, True = measured

    Returns
    -------
    (B,) tensor (a 0-d tensor for 2-D input)
    """
    if pred_modulus.shape != modulus.shape:
        raise ValueError(f"chi2: model modulus shape {tuple(pred_modulus.shape)} != data shape {tuple(modulus.shape)}")
    p = pred_modulus.double()
    m = modulus.double()
    if mask is not None:
        w = mask.to(p.dtype).expand_as(m)
        p, m = p * w, m * w
    dims = (-2, -1)
    spm = (p * m).sum(dims)
    spp = (p * p).sum(dims)
    smm = (m * m).sum(dims)
    out = 1.0 - spm**2 / (spp * smm).clamp_min(1e-300)
    return out.clamp_min(0.0).to(torch.float32)


def square_support(shape: tuple[int, int], size: float, device=None) -> torch.Tensor:
    """Centred square (rectangle for non-square frames) of side ``size·min(H, W)``, (H, W) bool."""
    H, W = shape
    side = max(1, int(round(size * min(H, W))))
    out = torch.zeros((H, W), dtype=torch.bool, device=device)
    r0, c0 = H // 2 - side // 2, W // 2 - side // 2
    out[max(r0, 0) : r0 + side, max(c0, 0) : c0 + side] = True
    return out


def random_initial_object(support: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Unit amplitude with uniformly random phase inside ``support`` (B, H, W) -> complex64.

    Drawn on the CPU with ``generator`` so that a seed gives the same start on any device.
    """
    phase = torch.rand(support.shape, generator=generator) * (2 * math.pi)
    obj = torch.polar(torch.ones_like(phase), phase).to(support.device)
    return obj * support


def _to_fft_order(x: torch.Tensor) -> torch.Tensor:
    # Centred (origin at (H//2, W//2)) -> FFT order (origin at (0, 0)); see module doc.
    return torch.fft.ifftshift(x, dim=(-2, -1))


def _from_fft_order(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(x, dim=(-2, -1))


def _gaussian_transfer(shape: tuple[int, int], sigma: float, device) -> torch.Tensor:
    """rfft2 of a unit-sum periodic Gaussian of std ``sigma`` px: (H, W//2+1) real."""
    H, W = shape
    fy = torch.fft.fftfreq(H, device=device)[:, None]
    fx = torch.fft.rfftfreq(W, device=device)[None, :]
    return torch.exp(-2.0 * (math.pi * sigma) ** 2 * (fy**2 + fx**2)).to(torch.float32)


def _abs2(z: torch.Tensor) -> torch.Tensor:
    """|z|² as a contiguous real tensor (several times faster on CPU than ``z.abs()``).

    Under torch.compile it is computed on the real view, like every complex product of
    :func:`_torch_iteration`: inductor generates no code for complex operators (each would
    stay one eager kernel), but fuses real ones.
    """
    if torch.compiler.is_compiling():
        return torch.view_as_real(z).square().sum(-1)
    return (z * z.conj()).real.contiguous()


def _load_cpu_kernels():
    """The fused CPU kernels (:mod:`._numba_kernels`), or None where numba is missing."""
    try:
        from . import _numba_kernels
    except ImportError:
        return None
    return _numba_kernels


def _fft2_t(x: torch.Tensor) -> torch.Tensor:
    """Unscaled 2-D DFT of (B, H, W) returned *transposed*, (B, W, H) contiguous.

    Two 1-D FFTs along the contiguous axis, the second on the transposed view: ~15 %
    faster than ``fft2`` with MKL on the CPU, whose column pass is strided. The
    element-wise Fourier-space work does not mind the layout.
    """
    return torch.fft.fft(torch.fft.fft(x, dim=-1).mT, dim=-1)


def _ifft2_t(Ft: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_fft2_t` without the 1/(HW) factor: (B, W, H) -> (B, H, W)."""
    return torch.fft.ifft(torch.fft.ifft(Ft, dim=-1, norm="forward").mT, dim=-1, norm="forward")


def _outside_coefficients(alg: str, beta: float) -> tuple[float, float]:
    """(a, b) of the update ``x <- a x + b P_M(x)`` outside the support (inside: 0, 1)."""
    if alg == "ER":
        return 0.0, 0.0
    if alg == "HIO":
        return 1.0, -beta
    return beta, 1.0 - 2.0 * beta  # RAAR


def _coefficients(alg: str, beta: float, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real maps (a, b) of the update ``x <- a x + b P_M(x)`` for support ``s`` (float)."""
    a_out, b_out = _outside_coefficients(alg, beta)
    out = 1.0 - s
    return a_out * out, s + b_out * out


def _times_real_(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``z·r`` for complex z and real r of the same shape; in place on z in eager."""
    if torch.compiler.is_compiling():
        return torch.view_as_complex(torch.view_as_real(z) * r.unsqueeze(-1))
    return z.mul_(r.to(z.dtype))


def _update(x, y, ca, cb, er: bool, outside=None):
    """The update ``a·x + b·y`` (ER: ``b·y``, x unused) for real maps a = ca, b = cb.

    x, y : (B, H, W) complex64 (y is overwritten in eager); ca, cb : (B, H, W), float32 or
    complex64 with zero imaginary part. outside : None, or with positivity the (2,) (a, b)
    outside the support: y is projected onto real values and its non-positive pixels are
    treated as outside the support.
    """
    compiling = torch.compiler.is_compiling()
    if outside is not None:
        yr = y.real
        keep = yr > 0  # inside S: (a, b) = (0, 1); outside S or where y <= 0: `outside`
        ca, cb = torch.where(keep, ca, outside[0]), torch.where(keep, cb, outside[1])
        zero = torch.zeros_like(yr)
        y = torch.view_as_complex(torch.stack((yr, zero), -1)) if compiling else torch.complex(yr, zero)
    if compiling:
        by = torch.view_as_real(y) * cb.real.unsqueeze(-1)
        return torch.view_as_complex(by if er else torch.view_as_real(x) * ca.real.unsqueeze(-1) + by)
    return y.mul_(cb) if er else (x * ca).addcmul_(y, cb)


def _torch_iteration(x, ca, cb, Mm, Mr, measured, unmeasured_r, smm, er: bool, outside=None):
    """One iteration of the torch path: modulus projection, chi² of x, update.

    No argument is modified, so that torch.compile can fuse it (:func:`_fused_iteration`).
    In eager the element-wise work stays on complex-by-complex or contiguous real tensors:
    on the CPU, torch's complex abs, strided real/imag arithmetic and broadcasting over
    view_as_real's last axis each cost as much as an FFT.

    Parameters
    ----------
    x : (B, H, W) complex64, the iterate in FFT order
    ca, cb : (B, H, W) maps (a, b) of the update ``x <- a·x + b·P_M(x)`` (:func:`_coefficients`),
        float32 or complex64 with zero imaginary part (faster in eager on the CPU)
    Mm : (B, H, W) float32, the normalised data, zero on unmeasured pixels
    Mr : (B, H, W) float32, ``Mm / sqrt(HW)``: the data in the units of the unscaled FFT, / HW
    measured : (B, H, W) bool, True = measured, or None (all measured)
    unmeasured_r : (B, H, W) float32, ``(1 - measured) / HW``, or None
    smm : (B,) float32, ``Σ Mm²``
    er : ER's update (``b·y``; x is not read)
    outside : None, or with positivity the (2,) float32 (a, b) outside the support (see :func:`_update`)

    Returns
    -------
    x_next : (B, H, W) complex64
    chi2 : (B,) float32, chi² of x (eq. 5)
    """
    F = torch.fft.fft2(x, norm="backward")  # unscaled: sqrt(HW) x the unitary transform
    amp2 = _abs2(F)
    amp = amp2.sqrt()
    # chi² from the |F| the projection needs anyway: two reductions.
    spm = (amp * Mm).sum((-2, -1))
    spp = (amp2 if measured is None else amp2 * measured).sum((-2, -1))
    # Modulus projection: F *= M/|F| on measured pixels, 1 elsewhere; the 1/(HW) of the
    # unscaled inverse FFT is folded into the ratio (one pass instead of three).
    amp.add_(_EPS)
    ratio = Mr / amp if unmeasured_r is None else torch.addcmul(Mr, unmeasured_r, amp).div_(amp)
    y = torch.fft.ifft2(_times_real_(F, ratio), norm="forward")  # unscaled
    return _update(x, y, ca, cb, er, outside), 1.0 - spm.square() / (spp * smm).clamp_min(_EPS)


#: The compiled iteration per variant (device, shape, dtype, mask or not, ER or not,
#: positivity or not, CUDA graphs or not), each from its own copy of :func:`_torch_iteration`: dynamo keeps its
#: graphs per code object, at most ``recompile_limit`` (8) of them, and a copy per variant
#: keeps every variant to one graph without touching that global setting.
_compiled: dict[tuple, Callable] = {}
#: Why the fused path is off in this process (its first failure), or None.
_fused_failure: str | None = None
#: CUDA graphs for the fused iteration on CUDA. They replace ~10 launches per iteration by
#: one, but copy the tensor arguments into the graph's own buffers at each replay: at large
#: batches that copy may cost more than the launches (benchmarks/phasing.py times both).
_cuda_graphs = True


def _fused_iteration(x, ca, cb, Mm, Mr, measured, unmeasured_r, smm, er: bool, outside=None):
    """:func:`_torch_iteration` compiled by torch.compile: the same arguments and results.

    Mode "reduce-overhead" on CUDA (CUDA graphs: one launch per iteration instead of ~10,
    which dominate at small batches; see ``_cuda_graphs``), "default" elsewhere;
    ``dynamic=False``, whole graph.
    Compiled on the first call of each variant; beta and the support change only the
    values of ca, cb and outside, so they reuse the graph. The first time compiling or
    running fails (no C++ compiler, no Triton, ...), one warning is logged and the eager
    :func:`_torch_iteration` runs from then on in this process. The returned chi² may be
    overwritten by the next call (CUDA graphs): copy it.
    """
    global _fused_failure
    args = (x, ca, cb, Mm, Mr, measured, unmeasured_r, smm, er, outside)
    if _fused_failure is None:
        cuda_graphs = x.device.type == "cuda" and _cuda_graphs
        key = (x.device, tuple(x.shape), x.dtype, measured is not None, er, outside is not None, cuda_graphs)
        try:
            step = _compiled.get(key)
            if step is None:
                # inductor warns once that it generates no code for complex operators, which
                # "may be worse than eager": here only the views view_as_real/view_as_complex
                # are complex (see _abs2), so that message is silenced.
                warnings.filterwarnings(
                    "ignore",
                    "Torchinductor does not support code generation for complex",
                    UserWarning,
                    r"torch\._inductor\.lowering",
                )
                code = _torch_iteration.__code__
                copy = types.FunctionType(
                    code.replace(), _torch_iteration.__globals__, code.co_name, _torch_iteration.__defaults__
                )
                mode = "reduce-overhead" if cuda_graphs else "default"
                step = _compiled[key] = torch.compile(copy, mode=mode, dynamic=False, fullgraph=True)
            x_next, c = step(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # compilation failed: never fail the reconstruction
            text = str(exc).strip()
            _fused_failure = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
            _log.warning(
                "refine: fused (torch.compile) iteration unavailable, running the eager torch path: %s", _fused_failure
            )
            _log.debug("refine: torch.compile failure", exc_info=True)
        else:
            # A CUDA graph's outputs are overwritten by its next replay, and x is fed back.
            return (x_next.clone() if cuda_graphs else x_next), c
    return _torch_iteration(*args)


def _check_inputs(modulus, mask, init):
    if modulus.ndim != 3:
        raise ValueError(f"modulus must be (B, H, W), got shape {tuple(modulus.shape)}")
    if modulus.is_complex() or not modulus.is_floating_point():
        raise ValueError(f"modulus must be a real floating tensor, got {modulus.dtype}")
    if not torch.isfinite(modulus).all():
        raise ValueError("modulus contains NaN or inf")
    if (modulus < 0).any():
        raise ValueError("modulus contains negative values (pass sqrt(intensity))")
    B, H, W = modulus.shape
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (True = measured), got {mask.dtype}")
        if mask.shape not in ((H, W), (B, H, W)):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match the frames: expected {(H, W)} or {(B, H, W)}"
            )
    if init is not None:
        for name in ("object", "support"):
            t = getattr(init, name)
            if t is not None and tuple(t.shape) != (B, H, W):
                raise ValueError(f"initial {name} shape {tuple(t.shape)} != frames {(B, H, W)}")


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

    Parameters
    ----------
    modulus : (B, H, W) float tensor, centred sqrt(intensity), on the device to run on
    mask : (H, W) or (B, H, W) bool, True = measured; unmeasured pixels keep the
        current estimate's Fourier value. None = all measured.
    init : starting object and/or support; missing parts are random phases (seeded)
        and the rectangular support of ``config.init_support_size``.
    config : schedule, beta, shrink-wrap and support sizes (default :class:`RefineConfig`)
    seed : seed of the random initial phases (None = 0)
    progress : called as ``progress(iterations_done, total)`` after each schedule step

    Returns
    -------
    RefineResult
    """
    config = config or RefineConfig()
    _check_inputs(modulus, mask, init)
    schedule = parse_schedule(config.schedule)
    steps = list(schedule)
    T = len(steps)
    B, H, W = modulus.shape
    device = modulus.device
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))

    # Data in FFT order, normalised per frame (scale restored on exit).
    M = _to_fft_order(modulus.to(torch.float32))
    measured = None if mask is None else _to_fft_order(mask.to(device).expand(B, H, W)).contiguous()
    Mm = M if measured is None else M * measured
    scale = Mm.square().sum((-2, -1)).sqrt().clamp_min(_EPS)  # (B,)
    Mm = (Mm / scale[:, None, None]).contiguous()
    smm = Mm.square().sum((-2, -1))
    unmeasured = None if measured is None else (~measured).to(torch.float32)
    Mr = Mm * (1.0 / math.sqrt(H * W))  # the data in the units of the unscaled FFT, / (HW)
    unmeasured_r = None if unmeasured is None else unmeasured * (1.0 / (H * W))

    support2 = _to_fft_order(square_support((H, W), config.support2_size, device))
    if init is not None and init.support is not None:
        S = _to_fft_order(init.support.to(device=device, dtype=torch.bool))
    else:
        S = _to_fft_order(square_support((H, W), config.init_support_size, device)).expand(B, H, W)
    S = S.contiguous()
    if init is not None and init.object is not None:
        x = _to_fft_order(init.object.to(device=device, dtype=torch.complex64)).clone()
        # Put the given object on the data's scale with the optimal factor.
        a = _abs2(torch.fft.fft2(x, norm="ortho")).sqrt_()
        w = 1.0 if measured is None else measured
        s = (a * Mm * w).sum((-2, -1)) / (a.square() * w).sum((-2, -1)).clamp_min(_EPS)
        x *= s[:, None, None]
    else:
        x = _to_fft_order(random_initial_object(_from_fft_order(S), gen)).contiguous()
        x *= (1.0 / x.abs().square().sum((-2, -1)).sqrt().clamp_min(_EPS))[:, None, None]

    blur = _gaussian_transfer((H, W), config.shrinkwrap_sigma, device) if config.shrinkwrap else None
    # On the CPU with numba and without positivity: _refine_box_pruned. Otherwise the loop
    # below, whose iteration is _torch_iteration, eager or compiled (config.fused), or (CPU
    # with numba and positivity, not fused) the numba modulus projection and _update.
    kernels = _load_cpu_kernels() if device.type == "cpu" else None
    if kernels is not None:
        # Fourier space is transposed on this path (see _fft2_t): so are the data.
        fourier_data = (
            Mr.mT.contiguous(),
            None if unmeasured_r is None else unmeasured_r.mT.contiguous(),
            None if measured is None else measured.mT.to(torch.float32).contiguous(),
        )
        if not config.positivity:
            sums = torch.empty((T + 1, B, 2), dtype=torch.float64)  # Σ|F|·Mr, Σ_measured |F|² per iteration
            obj, S = _refine_box_pruned(
                _from_fft_order(x),
                _from_fft_order(S),
                square_support((H, W), config.support2_size),
                steps,
                config,
                fourier_data,
                blur,
                kernels,
                sums,
                progress,
            )
            history = _history_from_sums(sums[:T], H * W, smm)
            # obj is centred: |DFT| is that of the FFT-order object (shift theorem)
            final = chi2(_abs2(torch.fft.fft2(obj, norm="ortho")).sqrt_(), Mm, measured)
            return RefineResult(
                object=obj * scale[:, None, None],
                support=S,
                chi2=final,
                chi2_history=history.T.clamp_min(0.0).contiguous(),
                schedule=str(schedule),
            )
    fused = config.fused == "on" or (config.fused == "auto" and device.type == "cuda")
    numba_projection = kernels is not None and not fused
    if numba_projection:
        sums = torch.empty((T, B, 2), dtype=torch.float64)
    else:
        history = torch.empty((T, B), dtype=torch.float32, device=device)
    iteration = _fused_iteration if fused else _torch_iteration
    coeff_key = None
    for it, (alg, beta) in enumerate(steps):
        beta = config.beta if beta is None else beta
        if blur is not None and _shrinkwrap_due(it, config):
            S = _shrinkwrap(x, blur, config.shrinkwrap_threshold, support2, S, kernels)
            coeff_key = None
        if coeff_key != (alg, beta):
            ca, cb = _coefficients(alg, beta, S.to(torch.float32))
            if not fused:  # complex-by-complex products: the fastest in eager on the CPU
                ca, cb = ca.to(torch.complex64), cb.to(torch.complex64)
            outside = torch.tensor(_outside_coefficients(alg, beta), device=device) if config.positivity else None
            coeff_key = (alg, beta)
        if numba_projection:
            Ft = _fft2_t(x)
            kernels.project_modulus(Ft, *fourier_data, sums[it].numpy())
            x = _update(x, _ifft2_t(Ft), ca, cb, alg == "ER", outside)
        else:
            x, history[it] = iteration(x, ca, cb, Mm, Mr, measured, unmeasured_r, smm, alg == "ER", outside)
        if progress is not None and (it + 1 == T or steps[it + 1] != steps[it]):
            progress(it + 1, T)

    if numba_projection:
        history = _history_from_sums(sums, H * W, smm)
    obj = x * S
    final = chi2(_abs2(torch.fft.fft2(obj, norm="ortho")).sqrt_(), Mm, measured)
    obj *= scale[:, None, None]
    return RefineResult(
        object=_from_fft_order(obj),
        support=_from_fft_order(S),
        chi2=final,
        chi2_history=history.T.clamp_min(0.0).contiguous(),
        schedule=str(schedule),
    )


def _history_from_sums(sums: torch.Tensor, HW: int, smm: torch.Tensor) -> torch.Tensor:
    """chi² history (T, B) from the kernels' (T, B, 2) sums ``Σ|F|·Mr``, ``Σ_measured |F|²``."""
    spm, spp = sums[..., 0] * math.sqrt(HW), sums[..., 1]
    return (1.0 - spm.square() / (spp * smm).clamp_min(_EPS)).to(torch.float32)


def _support_box(S: torch.Tensor) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 spanned by the supports of the whole batch (B, H, W)."""
    B, H, W = S.shape
    union = S.view(torch.uint8).amax(0)
    rows = [i for i, v in enumerate(union.amax(1).tolist()) if v]
    cols = [j for j, v in enumerate(union.amax(0).tolist()) if v]
    if not rows:
        return 0, H, 0, W
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


class _BoxDFT:
    """Pruned unscaled DFTs for objects that vanish outside the box rows r0:r1, cols c0:c1.

    Fourier space is in the transposed layout of :func:`_fft2_t`. ``forward`` skips the
    row transforms of the rows outside the box (they are zero); ``inverse`` returns only
    the box, computing the last pass for its rows only: each is ~25 % cheaper than the
    full transform for Support 2 of half the frame.
    """

    def __init__(self, shape: tuple[int, int, int], box: tuple[int, int, int, int]):
        B, H, W = shape
        self.r0, self.r1, self.c0, self.c1 = box
        # zero outside the box for good: only the box is ever written
        self.rows = torch.zeros((B, self.r1 - self.r0, W), dtype=torch.complex64)
        self.full_t = torch.zeros((B, W, H), dtype=torch.complex64)

    def box(self) -> torch.Tensor:
        """The object's box (B, h, w), a view: write it, then call :meth:`forward`."""
        return self.rows[:, :, self.c0 : self.c1]

    def forward(self) -> torch.Tensor:
        """DFT of the object in :meth:`box`, (B, W, H), transposed."""
        self.full_t[:, :, self.r0 : self.r1] = torch.fft.fft(self.rows, dim=-1).mT
        return torch.fft.fft(self.full_t, dim=-1)

    def inverse(self, Ft: torch.Tensor) -> torch.Tensor:
        """(B, W, H) transposed spectrum -> (B, h, w) box of its inverse DFT (no 1/(HW))."""
        cols = torch.fft.ifft(Ft, dim=-1, norm="forward")[:, :, self.r0 : self.r1]
        return torch.fft.ifft(cols.mT, dim=-1, norm="forward")[:, :, self.c0 : self.c1]


def _refine_box_pruned(x, S, support2, steps, config, fourier_data, blur, kernels, sums, progress):
    """The refinement loop on the CPU with the iterate kept in Fourier space.

    Every algorithm sets ``x_{n+1} = y_n`` inside S and ``a·x_n + b·y_n`` outside, with
    ``y_n = F⁻¹ P_M(F x_n)``, so by linearity (X = F x, P_n = P_M(X_n))::

        X_{n+1} = a·(X_n - F[S x_n]) + b·P_n + (1 - b)·F[S y_n]

    and ``F[S x_n] = F[S y_{n-1}]`` while S is unchanged. The state is
    ``E_n = X_n - F[S x_n]`` (the exterior's DFT), P_n and ``G_n = F[S y_n]``. Only S·y, which vanishes outside
    the box of the supports (Support 2 after shrink-wrap), ever goes through the real
    space: pruned DFTs (:class:`_BoxDFT`). The full inverse is taken only for shrink-wrap.
    Real space is in centred order here (a shift only multiplies X by a unit phase ramp,
    which the modulus projection and the linear update carry through unchanged).

    x : (B, H, W) complex64 centred start; S : (B, H, W) bool centred; support2 : (H, W)
    fourier_data : (Mr, Ur, measured) transposed as in :func:`refine`'s CPU path
    sums : (T + 1, B, 2) float64, filled with the chi² sums of each iteration (and of x_T)

    Returns
    -------
    (object x_T·S, S), centred, on the normalised scale
    """
    B, H, W = x.shape
    HW = float(H * W)

    def reset(S, x):  # after a change of S: box, buffers, S as complex on the box, F[S x]
        box = _support_box(S)
        dft = _BoxDFT((B, H, W), box)
        r0, r1, c0, c1 = box
        S_box = S[:, r0:r1, c0:c1].to(torch.complex64)
        torch.mul(x[:, r0:r1, c0:c1], S_box, out=dft.box())
        return dft, S_box, dft.forward()

    X = _fft2_t(x)
    P = torch.empty_like(X)
    dft, S_box, G = reset(S, x)
    kernels.project_modulus_to(X, P, *fourier_data, sums[0].numpy())
    E = X.sub_(G)
    for it, (alg, beta) in enumerate(steps):
        beta = config.beta if beta is None else beta
        if blur is not None and _shrinkwrap_due(it, config):
            X = E.add_(G)
            x = _ifft2_t(X).mul_(1.0 / HW)
            S = _shrinkwrap(x, blur, config.shrinkwrap_threshold, support2, S, kernels)
            dft, S_box, G = reset(S, x)
            E = X.sub_(G)
        # P = P_M(X_n) is ready (with the chi² sums of iteration it)
        torch.mul(dft.inverse(P), S_box, out=dft.box())  # S·y_n (P carries the 1/(HW))
        G = dft.forward()
        a, b = _outside_coefficients(alg, beta)
        # X_{n+1} = a E_n + b P_n + c G_n; E_{n+1}, P_M(X_{n+1}) and its sums (a spare last row)
        kernels.advance_project(E, P, G, (a, b * HW, 1.0 - b), *fourier_data, sums[it + 1].numpy())
        if progress is not None and (it + 1 == len(steps) or steps[it + 1] != steps[it]):
            progress(it + 1, len(steps))

    obj = torch.zeros((B, H, W), dtype=torch.complex64)
    obj[:, dft.r0 : dft.r1, dft.c0 : dft.c1] = dft.box()  # inside S, x_T = y_{T-1}
    return obj, S


def _shrinkwrap_due(it: int, config: RefineConfig) -> bool:
    """Whether shrink-wrap updates the support before iteration ``it`` (0-based)."""
    start = config.shrinkwrap_start
    return it >= start and (it - start) % config.shrinkwrap_every == 0


def _shrinkwrap(x, blur, threshold, support2, previous, kernels=None):
    """Marchesini shrink-wrap: blurred |x| above ``threshold``·max, inside Support 2.

    Frames whose new support would be empty keep their previous support. ``kernels``:
    the CPU kernels for |x| (torch's complex abs is slow there), or None.
    """
    B, H, W = x.shape
    amp = _abs2(x).sqrt_() if kernels is None else kernels.modulus(x)
    smooth = torch.fft.irfft2(torch.fft.rfft2(amp) * blur, s=(H, W))
    peak = smooth.amax((-2, -1), keepdim=True)
    new = (smooth > threshold * peak) & support2
    # (a uint8 max: bool any() over two axes costs as much as the blur's multiply)
    empty = new.view(torch.uint8).view(B, -1).amax(1) == 0
    if not empty.any():
        return new
    return torch.where(empty[:, None, None], previous, new)
