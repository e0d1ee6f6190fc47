"""Plain numpy reference of the phasing maths, written from the equations, not from the code.

Slow (one frame, 2-D or 3-D, float64, no tricks) and meant to be obviously right:

- the transform is the package's convention (:mod:`cdi_beamline.fourier`): centred, unitary;
- the modulus projection P_M replaces |F| by the measured modulus on measured pixels
  (mask True) and keeps F on unmeasured ones;
- ER, HIO (Fienup 1982; Wu et al. 2021, Appendix B) and RAAR (Luke 2005, written with the
  reflections R = 2P - I) with the support projection P_S (zero outside S);
  with positivity, a pixel also violates the constraint where Re P_M x <= 0, and the
  projected value is real (Fienup's HIO for a real, non-negative object);
- shrink-wrap (Marchesini et al. 2003): the periodic Gaussian blur of |x| (transfer
  function exp(-2 pi^2 sigma^2 |f|^2)), thresholded at a fraction of its maximum, inside
  the fixed square Support 2; an empty result keeps the previous support;
- chi² of eq. 5, ``sum_m (s |F| - M)^2 / sum_m M^2`` with the optimal scale ``s`` over
  measured pixels m (the closed-form minimiser of that sum), of the object x_n·S after
  each iteration; the result is the last object or the one of lowest chi².

The start is put on the data's scale with the same optimal ``s``; refine's own per-frame
normalisation does not change the result (every step is homogeneous of degree one).
"""

from __future__ import annotations

import re

import numpy as np


def fft(o):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(o), norm="ortho"))


def ifft(F):
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F), norm="ortho"))


def optimal_scale(pred, data, mask):
    return np.sum(mask * pred * data) / np.sum(mask * pred**2)


def chi2(pred, data, mask):
    """Eq. 5 with the optimal scale, over measured pixels."""
    s = optimal_scale(pred, data, mask)
    return np.sum(mask * (s * pred - data) ** 2) / np.sum(mask * data**2)


def project_modulus(x, data, mask):
    F = fft(x)
    amp = np.abs(F)
    phase = np.where(amp > 0, F / np.where(amp > 0, amp, 1.0), 1.0)
    return ifft(np.where(mask, data * phase, F))


def step(x, S, alg, beta, data, mask, positivity=False):
    """One iteration x_n -> x_{n+1}."""
    y = project_modulus(x, data, mask)
    if positivity:
        y = y.real.astype(complex)
        ok = S & (y.real > 0)
    else:
        ok = S
    if alg == "ER":  # P_S P_M x
        return np.where(ok, y, 0)
    if alg == "HIO":  # Fienup: P_M x where the constraints hold, x - beta P_M x elsewhere
        return np.where(ok, y, x - beta * y)
    if alg == "RAAR":  # [beta/2 (R_S R_M + I) + (1 - beta) P_M] x
        r_m = 2 * y - x
        r_s_r_m = 2 * np.where(ok, r_m, 0) - r_m
        return beta / 2 * (r_s_r_m + x) + (1 - beta) * y
    raise ValueError(alg)


def square(shape, size):
    """Centred square (cube in 3-D) of side round(size * min(shape)), its centre pixel at N//2 per axis."""
    side = max(1, int(round(size * min(shape))))
    out = np.zeros(shape, bool)
    out[tuple(slice(max(n // 2 - side // 2, 0), n // 2 - side // 2 + side) for n in shape)] = True
    return out


def blur(a, sigma):
    f2 = sum(f**2 for f in np.meshgrid(*(np.fft.fftfreq(n) for n in a.shape), indexing="ij"))
    return np.fft.ifftn(np.fft.fftn(a) * np.exp(-2 * np.pi**2 * sigma**2 * f2)).real


def shrinkwrap(x, previous, sigma, threshold, support2):
    smooth = blur(np.abs(x), sigma)
    new = (smooth > threshold * smooth.max()) & support2
    return new if new.any() else previous


def expand(schedule, default_beta):
    """A flat schedule "HIO(0.7)**3 * ER**2 * RAAR" -> [(alg, beta), ...]."""
    steps = []
    for term in schedule.split(" * "):
        alg, beta, n = re.fullmatch(r"(ER|HIO|RAAR)(?:\(([\d.]+)\))?(?:\*\*(\d+))?", term.strip()).groups()
        steps += [(alg, default_beta if beta is None else float(beta))] * int(n or 1)
    return steps


def run(data, mask, x0, S0, steps, *, positivity=False, shrinkwrap_start=None, shrinkwrap_every=1,
        sigma=1.0, threshold=0.1, support2_size=0.5, keep="last", support_given=True):  # fmt: skip
    """Iterate one frame.

    The object after n iterations is x_n·S (S: the support x_n was made with; S0 for n = 0).
    It is a candidate for keep "best" if n = T, or if S is S0 given as an estimate
    (``support_given``) or was shrink-wrapped from the iterate of an ER step (zero outside
    the support), not from an HIO or RAAR iterate; with positivity, also only if made by
    an ER step (a real object).
    Returns (the object after T iterations (keep "last") or the candidate of lowest chi²
    (keep "best"; ties within 1e-7 go to the later), its support, [chi² of the object after n = 0 … T-1], its chi²,
    [candidate or not, n = 0 … T]).
    """
    data = np.asarray(data, float)
    mask = np.ones(data.shape, bool) if mask is None else np.asarray(mask, bool)
    x = np.asarray(x0, complex)
    x = x * optimal_scale(np.abs(fft(x)), data, mask)
    S = np.asarray(S0, bool)
    support2 = square(data.shape, support2_size)
    objects = [(x * S, S)]
    candidate = [support_given and not positivity]
    estimate = support_given
    for n, (alg, beta) in enumerate(steps):
        if shrinkwrap_start is not None and n >= shrinkwrap_start and (n - shrinkwrap_start) % shrinkwrap_every == 0:
            S = shrinkwrap(x, S, sigma, threshold, support2)
            estimate = support_given if n == 0 else steps[n - 1][0] == "ER"
        x = step(x, S, alg, beta, data, mask, positivity)
        objects.append((x * S, S))
        candidate.append(n == len(steps) - 1 or (estimate and (alg == "ER" or not positivity)))
    chi = np.array([chi2(np.abs(fft(o)), data, mask) for o, _ in objects])
    n = len(steps)
    if keep == "best":  # the lowest; a later one within 1e-7 (float32 noise in refine) replaces it
        lowest = np.inf
        for k in np.flatnonzero(candidate):
            if chi[k] <= lowest + 1e-7:
                n, lowest = k, min(lowest, chi[k])
    return objects[n][0], objects[n][1], chi[:-1], chi[n], np.array(candidate)
