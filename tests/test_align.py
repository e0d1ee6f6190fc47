"""Alignment of solutions and phase unwrapping: exact values on constructed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from cdi_beamline.phasing import align, invert, twin, unwrap

N = 32


def _object(n=N, seed=0):
    """A compact complex object with an asymmetric amplitude and a smooth phase: (n, n)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] - n // 2
    amp = np.exp(-((yy - 2) ** 2 / 18.0 + (xx + 1) ** 2 / 8.0)) * (1 + 0.3 * rng.random((n, n)))
    amp[amp < 0.05] = 0
    return amp * np.exp(1j * (0.3 * yy - 0.2 * xx + 0.4 * rng.random((n, n))))


@pytest.mark.parametrize("shift", [(5, -7), (-9, 10), (11, 3), (-12, -13), (0, 0)])
def test_shift_is_reported_exactly(shift):
    ref = _object()
    moved = np.roll(ref, shift, axis=(0, 1))
    pair = align(moved, ref)
    assert not pair.twin and pair.shift == (-shift[0], -shift[1])
    assert pair.chi2_amplitude < 1e-12 and pair.chi2_phase < 1e-12


def test_half_frame_shift_is_reported_positive():
    # a roll by N/2 is its own inverse: the convention reports +N/2
    ref = _object()
    pair = align(np.roll(ref, (N // 2, N // 2), axis=(0, 1)), ref)
    assert pair.shift == (N // 2, N // 2)
    assert pair.chi2_amplitude < 1e-12 and pair.chi2_phase < 1e-12


def test_errors_have_their_exact_values():
    ref = _object() * 1e-3  # small values: a wrong floor in a denominator would show
    r = np.abs(ref)
    support = r > 0.1 * r.max()
    # amplitude: recon = |ref| + a bump on one pixel; phase: a constant error 0.3 rad on the support
    bump = np.zeros_like(r)
    bump[N // 2, N // 2] = 2e-4
    recon = (r + bump) * np.exp(1j * (np.angle(ref) + 0.3 * support))
    pair = align(recon, ref, support=support)
    a = np.abs(pair.recon).astype(np.float64)
    s = (a * r).sum() / (a * a).sum()
    assert math.isclose(pair.chi2_amplitude, ((s * a - r) ** 2).sum() / (r * r).sum(), rel_tol=1e-4)
    assert 0 < pair.chi2_amplitude < 1e-2
    # the global phase takes out the mean error; what is left is the spread over the support
    dphi = np.angle(pair.recon * np.conj(ref))[support]
    assert math.isclose(pair.chi2_phase, float(np.mean((dphi / np.pi) ** 2)), rel_tol=1e-4)
    assert pair.chi2_phase < (0.3 / np.pi) ** 2  # at most what was put in
    assert pair.recon.dtype == np.complex64 and pair.reference.dtype == np.complex64
    np.testing.assert_allclose(pair.reference, ref.astype(np.complex64))


def test_phase_error_is_the_mean_square_over_pi():
    ref = np.ones((N, N), complex)
    support = np.zeros((N, N), bool)
    support[:, : N // 2] = True
    recon = np.where(support, np.exp(0.5j), np.exp(-0.5j))  # ±0.5 rad on two halves; global phase 0
    pair = align(recon, ref, support=support)
    # the correlation peak is at zero shift; the global phase is the mean 0 rad
    assert pair.shift == (0, 0) and abs(pair.global_phase) < 1e-9
    assert math.isclose(pair.chi2_phase, (0.5 / np.pi) ** 2, rel_tol=1e-6)


def test_default_support_is_above_a_tenth_of_the_peak():
    ref = _object()
    ref *= 9.0 / np.abs(ref).max()
    ref[N // 2, N // 2] = 10.0  # the peak, exactly 10
    assert ref[2, 2] == 0
    ref[2, 2] = 1.0  # exactly a tenth of the peak: outside the default support
    recon = ref.copy()
    recon[2, 2] = -1.0  # a phase error of π, only on that pixel
    assert align(recon, ref).chi2_phase < 1e-12
    explicit = np.abs(ref) > 0
    assert align(recon, ref, support=explicit).chi2_phase > 0.005


def test_empty_support_gives_nan_without_warning():
    ref = _object()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pair = align(ref, ref, support=np.zeros((N, N), bool))
    assert math.isnan(pair.chi2_phase)


def test_a_centrosymmetric_real_object_is_not_twinned():
    yy, xx = np.mgrid[:N, :N] - N // 2
    ref = np.exp(-(yy**2 + xx**2) / 20.0).astype(complex)  # its own twin
    np.testing.assert_allclose(twin(ref), ref)
    pair = align(ref, ref)
    assert not pair.twin and pair.shift == (0, 0)


def test_torch_inputs_are_accepted():
    ref = _object()
    pair = align(torch.from_numpy(np.roll(ref, (2, 3), axis=(0, 1))), torch.from_numpy(ref))
    assert pair.shift == (-2, -3) and pair.chi2_amplitude < 1e-12
    np.testing.assert_allclose(unwrap(torch.zeros(8, 8)), np.zeros((8, 8)))


def test_bad_inputs_are_refused_with_their_reason():
    ref = _object()
    with pytest.raises(ValueError, match=r"align needs two \(H, W\) arrays of one shape"):
        align(ref[None], ref[None])
    with pytest.raises(ValueError, match=r"align needs two \(H, W\) arrays of one shape"):
        align(ref[:, :-1], ref)
    nan = ref.copy()
    nan[0, 0] = np.nan
    for a, b in ((nan, ref), (ref, nan)):
        with pytest.raises(ValueError, match=r"^align: inputs contain NaN or inf$"):
            align(a, b)
    with pytest.raises(ValueError, match=r"align: support shape \(4, 4\) != \(32, 32\)"):
        align(ref, ref, support=np.ones((4, 4), bool))


def test_invert_works_on_stacks_along_the_last_two_axes():
    rng = np.random.default_rng(1)
    for n in (6, 7):
        stack = rng.random((3, n, n))
        np.testing.assert_array_equal(invert(stack), np.stack([invert(f) for f in stack]))
        np.testing.assert_array_equal(invert(invert(stack)), stack)


def test_unwrap_without_mask_and_its_output():
    yy, xx = np.mgrid[:40, :40]
    true = (0.35 * xx + 0.15 * yy).astype(np.float32)
    out = unwrap(np.angle(np.exp(1j * true)).astype(np.float32))
    assert out.dtype == np.float64 and out.shape == (40, 40)
    assert np.ptp(out - true) < 1e-5
    assert (unwrap(true, np.zeros((40, 40), bool)) == 0).all() and unwrap(true, np.zeros((40, 40), bool)).shape == (
        40,
        40,
    )
    with pytest.raises(ValueError, match=r"unwrap needs a 2-D phase, got shape \(2, 40, 40\)"):
        unwrap(np.stack([true, true]))
