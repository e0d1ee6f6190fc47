"""The torch backend: the refinement loop on any device, one iteration a pure function.

:func:`iteration` (modulus projection, chi² of the iterate, update) is what the compiled
backend (:mod:`._compiled`) hands to torch.compile; :func:`loop` runs the schedule with
shrink-wrap around any such step, and serves the numba backend's positivity path too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._common import EPS, Problem, abs2, chi2_closed_form, coefficients, outside_coefficients, step_beta


def _times_real_(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``z·r`` for complex z and real r of the same shape; in place on z in eager."""
    if torch.compiler.is_compiling():
        return torch.view_as_complex(torch.view_as_real(z) * r.unsqueeze(-1))
    return z.mul_(r.to(z.dtype))


def update(x, y, ca, cb, er: bool, outside=None):
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


def iteration(x, ca, cb, Mm, Mr, measured, unmeasured_r, smm, er: bool, outside=None):
    """One iteration: modulus projection, chi² of x, update. No argument is modified.

    In eager the element-wise work stays on complex-by-complex or contiguous real tensors:
    on the CPU, torch's complex abs, strided real/imag arithmetic and broadcasting over
    view_as_real's last axis each cost as much as an FFT.

    Parameters
    ----------
    x : (B, H, W) complex64, the iterate in FFT order
    ca, cb : (B, H, W) maps (a, b) of the update (:func:`._common.coefficients`),
        float32 or complex64 with zero imaginary part (faster in eager on the CPU)
    Mm, Mr, measured, unmeasured_r, smm : as in :class:`._common.Problem`
    er : ER's update (``b·y``; x is not read)
    outside : None, or with positivity the (2,) float32 (a, b) outside the support (see :func:`update`)

    Returns
    -------
    x_next : (B, H, W) complex64
    chi2 : (B,) float32, chi² of x (eq. 5)
    """
    F = torch.fft.fft2(x, norm="backward")  # unscaled: sqrt(HW) x the unitary transform
    amp2 = abs2(F)
    amp = amp2.sqrt()
    # chi² from the |F| the projection needs anyway: two reductions.
    spm = (amp * Mm).sum((-2, -1))
    spp = (amp2 if measured is None else amp2 * measured).sum((-2, -1))
    # Modulus projection: F *= M/|F| on measured pixels, 1 elsewhere; the 1/(HW) of the
    # unscaled inverse FFT is folded into the ratio (one pass instead of three).
    amp.add_(EPS)
    ratio = Mr / amp if unmeasured_r is None else torch.addcmul(Mr, unmeasured_r, amp).div_(amp)
    y = torch.fft.ifft2(_times_real_(F, ratio), norm="forward")  # unscaled
    return update(x, y, ca, cb, er, outside), chi2_closed_form(spm, spp, smm)


#: step(it, x, ca, cb, er, outside) -> x_next, recording the chi² of x itself
Step = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, bool, torch.Tensor | None], torch.Tensor]


def loop(p: Problem, step: Step, complex_maps: bool, modulus: Callable | None = None):
    """Run the schedule: shrink-wrap when due, the update maps when (alg, beta, S) change, ``step``.

    complex_maps : pass the maps (a, b) as complex64 (the fastest in eager on the CPU)
    modulus : |x| for shrink-wrap (:func:`._common.shrinkwrap`)

    Returns
    -------
    (x_T·S, S) in FFT order
    """
    x, S = p.x, p.S
    key = None
    for it, (alg, beta) in enumerate(p.steps):
        beta = step_beta(beta, p.config)
        if p.shrinkwrap_due(it):
            S = p.new_support(x, S, p.support2, modulus)
            key = None
        if key != (alg, beta):
            ca, cb = coefficients(alg, beta, S.to(torch.float32))
            if complex_maps:
                ca, cb = ca.to(torch.complex64), cb.to(torch.complex64)
            outside = torch.tensor(outside_coefficients(alg, beta), device=x.device) if p.config.positivity else None
            key = (alg, beta)
        x = step(it, x, ca, cb, alg == "ER", outside)
        p.report(it)
    return x * S, S


def run(p: Problem):
    """The eager torch backend. Returns (x_T·S, S, chi² history (T, B) float32), FFT order."""
    history = torch.empty((len(p.steps), p.x.shape[0]), dtype=torch.float32, device=p.x.device)

    def step(it, x, ca, cb, er, outside):
        x, history[it] = iteration(x, ca, cb, p.Mm, p.Mr, p.measured, p.unmeasured_r, p.smm, er, outside)
        return x

    obj, S = loop(p, step, complex_maps=True)
    return obj, S, history
