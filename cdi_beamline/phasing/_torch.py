"""The torch backend: the refinement loop on any device, one iteration a pure function.

:func:`iteration` (modulus projection, update, chi² of the object ``x·S``) is what the compiled
backend (:mod:`._compiled`) hands to torch.compile; :func:`loop` runs the schedule with
shrink-wrap around any such step, and serves the numba backend's positivity path too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._common import (
    CHI2_RESOLUTION,
    EPS,
    Problem,
    abs2,
    chi2_closed_form,
    coefficients,
    outside_coefficients,
    per_frame,
    spatial_dims,
    step_beta,
)


def _times_real_(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``z·r`` for complex z and real r of the same shape; in place on z in eager."""
    if torch.compiler.is_compiling():
        return torch.view_as_complex(torch.view_as_real(z) * r.unsqueeze(-1))
    return z.mul_(r.to(z.dtype))


def update(x, y, ca, cb, er: bool, outside=None):
    """The update ``a·x + b·y`` (ER: ``b·y``, x unused) for real maps a = ca, b = cb.

    x, y : (B, *spatial) complex64 (y is overwritten in eager); ca, cb : (B, *spatial), float32 or
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


def masked(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x·s`` for complex x and the support map s (float32, or complex64 with zero
    imaginary part), out of place."""
    if torch.compiler.is_compiling():
        return torch.view_as_complex(torch.view_as_real(x) * s.real.unsqueeze(-1))
    return x * s


def object_chi2(obj: torch.Tensor, Mm, measured, smm) -> torch.Tensor:
    """chi² (eq. 5) of an object in FFT order (B, *spatial) complex64 against ``Mm``: (B,) float64."""
    dims = spatial_dims(obj.ndim - 1)
    amp2 = abs2(torch.fft.fftn(obj, dim=dims, norm="backward"))  # unscaled: chi² is scale invariant
    amp = amp2.sqrt()
    # float64 sums: at chi² ~ 1e-3 the cancellation in 1 - c² costs three digits
    spm = (amp * Mm).sum(dims, dtype=torch.float64)
    spp = (amp2 if measured is None else amp2 * measured).sum(dims, dtype=torch.float64)
    return chi2_closed_form(spm, spp, smm)


def iteration(x, ca, cb, s, Mm, Mr, measured, unmeasured_r, smm, er: bool, outside=None):
    """One iteration: modulus projection, update, the object ``x_next·S`` and its chi².

    No argument is modified. In eager the element-wise work stays on complex-by-complex or
    contiguous real tensors: on the CPU, torch's complex abs, strided real/imag arithmetic
    and broadcasting over view_as_real's last axis each cost as much as an FFT.

    Parameters
    ----------
    x : (B, *spatial) complex64, the iterate in FFT order, spatial (H, W) or (D, H, W)
    ca, cb : (B, *spatial) maps (a, b) of the update (:func:`._common.coefficients`),
        float32 or complex64 with zero imaginary part (faster in eager on the CPU)
    s : (B, *spatial) the support S as a map of the same dtype
    Mm, Mr, measured, unmeasured_r, smm : as in :class:`._common.Problem`
    er : ER's update (``b·y``; x is not read)
    outside : None, or with positivity the (2,) float32 (a, b) outside the support (see :func:`update`)

    Returns
    -------
    x_next : (B, *spatial) complex64
    obj : (B, *spatial) complex64, ``x_next·S``, the object after this iteration
    chi2 : (B,) float32, chi² of obj (eq. 5)
    """
    dims = spatial_dims(x.ndim - 1)
    F = torch.fft.fftn(x, dim=dims, norm="backward")  # unscaled: sqrt(N) x the unitary transform
    amp = abs2(F).sqrt_()
    # Modulus projection: F *= M/|F| on measured pixels, 1 elsewhere; the 1/N of the
    # unscaled inverse FFT is folded into the ratio (one pass instead of three).
    amp.add_(EPS)
    ratio = Mr / amp if unmeasured_r is None else torch.addcmul(Mr, unmeasured_r, amp).div_(amp)
    y = torch.fft.ifftn(_times_real_(F, ratio), dim=dims, norm="forward")  # unscaled
    x_next = update(x, y, ca, cb, er, outside)
    obj = masked(x_next, s)
    return x_next, obj, object_chi2(obj, Mm, measured, smm)


#: step(it, x, ca, cb, s, er, outside) -> (x_next, x_next·S, its chi²)
Step = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool, torch.Tensor | None],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor],
]


class Best:
    """Per frame, the object of lowest chi² seen so far (a later one within
    :data:`._common.CHI2_RESOLUTION` of it replaces it), its support and iteration count."""

    def __init__(self, obj: torch.Tensor, S: torch.Tensor, chi2: torch.Tensor, candidate: bool):
        self.obj, self.S = obj, S
        self.chi2 = torch.nan_to_num(chi2, nan=math.inf) if candidate else torch.full_like(chi2, math.inf)
        self.iteration = torch.zeros(chi2.shape, dtype=torch.int64, device=chi2.device)

    def consider(self, n: int, obj: torch.Tensor, S: torch.Tensor, chi2: torch.Tensor) -> None:
        """Keep ``obj`` (the object after ``n`` iterations) for frames whose chi² is lower."""
        better = chi2 <= self.chi2 + CHI2_RESOLUTION  # NaN: never
        b3 = per_frame(better, obj.ndim - 1)
        self.obj = torch.where(b3, obj, self.obj)
        self.S = torch.where(b3, S, self.S)
        self.chi2 = torch.where(better, torch.minimum(chi2, self.chi2), self.chi2)
        self.iteration = torch.where(better, n, self.iteration)


def loop(p: Problem, step: Step, complex_maps: bool, modulus: Callable | None = None):
    """Run the schedule: shrink-wrap when due, the update maps when (alg, beta, S) change, ``step``.

    complex_maps : pass the maps (a, b, S) as complex64 (the fastest in eager on the CPU)
    modulus : |x| for shrink-wrap (:func:`._common.shrinkwrap`)

    Returns
    -------
    (object, S, chi² history (T, B) float32, iterations behind the object (B,) int64), FFT
    order: the object is ``x_T·S`` (``keep="last"``) or the best of ``x_n·S`` (``"best"``).
    """
    x, S = p.x, p.S
    T, B = len(p.steps), x.shape[0]
    history = torch.empty((T, B), dtype=torch.float32, device=x.device)
    start = x * S
    c = object_chi2(start, p.Mm, p.measured, p.smm)
    best = Best(start, S.expand_as(x), c, p.candidates[0]) if p.config.keep == "best" else None
    key = None
    for it, (alg, beta) in enumerate(p.steps):
        history[it] = c
        beta = step_beta(beta, p.config)
        if p.shrinkwrap_due(it):
            S = p.new_support(x, S, p.support2, modulus)
            key = None
        if key != (alg, beta):
            s = S.to(torch.float32)
            ca, cb = coefficients(alg, beta, s)
            if complex_maps:
                ca, cb, s = ca.to(torch.complex64), cb.to(torch.complex64), s.to(torch.complex64)
            outside = torch.tensor(outside_coefficients(alg, beta), device=x.device) if p.config.positivity else None
            key = (alg, beta)
        x, obj, c = step(it, x, ca, cb, s, alg == "ER", outside)
        if best is not None and p.candidates[it + 1]:
            best.consider(it + 1, obj, S, c)
        p.report(it)
    if best is not None:
        return best.obj, best.S, history, best.iteration
    return x * S, S, history, torch.full((B,), T, dtype=torch.int64, device=x.device)


def run(p: Problem):
    """The eager torch backend: :func:`loop` over :func:`iteration`."""

    def step(it, x, ca, cb, s, er, outside):
        return iteration(x, ca, cb, s, p.Mm, p.Mr, p.measured, p.unmeasured_r, p.smm, er, outside)

    return loop(p, step, complex_maps=True)
