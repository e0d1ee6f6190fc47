"""Phasing in 3-D: the same refine, align and multistart on (D, H, W) volumes.

The volume backends against the numpy oracle (tests/oracle.py) iteration by iteration; ER/HIO
with shrink-wrap recovering a simulated faceted crystal from a random start; multistart's
selection and averaging; 3-D alignment; bad input.
"""

from __future__ import annotations

import math

import numpy as np
import oracle
import pytest
import torch

from cdi_beamline.config import RefineConfig
from cdi_beamline.errors import CDIValueError
from cdi_beamline.phasing import InitialEstimate, align, chi2, invert, multistart, refine, square_support, twin

DIMS = (-3, -2, -1)


def crystal(n: int = 32, r: float = 6.0) -> torch.Tensor:
    """(n, n, n) complex64: a faceted crystal (a cuboctahedron cut flat in z and at one corner,
    ~2r across, so oversampled ≥ 2.5 per axis) of unit amplitude and a smooth phase field (a
    strain-like field, a ramp, a bowl), centred; not its own twin."""
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    inside = ((x.abs() + y.abs() + z.abs()) <= 1.5 * r) & (x.abs() <= r) & (y.abs() <= r) & (z.abs() <= 0.8 * r)
    inside &= x + y <= r
    phase = 0.8 * torch.sin(x / 5) * torch.cos(y / 7) + 0.3 * z / r + 0.4 * (y / r) ** 2
    return torch.polar(inside.float(), phase)


def detector_modulus(obj: torch.Tensor) -> torch.Tensor:
    """|centred unitary 3-D FFT| of (..., D, H, W)."""
    f = torch.fft.fftn(torch.fft.ifftshift(obj, dim=DIMS), dim=DIMS, norm="ortho")
    return torch.fft.fftshift(f, dim=DIMS).abs()


@pytest.fixture(scope="module")
def truth():
    obj = crystal()
    return obj, detector_modulus(obj)


# shrink-wrap before iterations 2 and 5 (0-based), as in tests/test_oracle.py
SW = dict(shrinkwrap_start=2, shrinkwrap_every=3, shrinkwrap_sigma=1.5, shrinkwrap_threshold=0.15, support2_size=0.6)


@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 16, 18)], ids=["cube", "odd-non-cubic"])
@pytest.mark.parametrize("masked", [False, True], ids=["all-measured", "masked"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_volume_backends_match_the_oracle(backend, masked, shape):
    g = torch.Generator().manual_seed(5)
    obj = torch.zeros(2, *shape, dtype=torch.complex64)
    obj[:, 5:11, 6:11, 5:12] = torch.polar(
        torch.rand(2, 6, 5, 7, generator=g) + 0.5, torch.rand(2, 6, 5, 7, generator=g)
    )
    modulus = detector_modulus(obj) * 30.0
    x0 = obj * (1 + 0.3 * torch.randn(obj.shape, dtype=torch.complex64, generator=g))
    S0 = torch.zeros(obj.shape, dtype=torch.bool)
    S0[:, 4:12, 4:12, 4:13] = True
    mask = None
    if masked:
        mask = torch.rand(shape, generator=g) > 0.15
        mask[tuple(slice(n // 2 - 1, n // 2 + 2) for n in shape)] = False  # a beamstop
    config = RefineConfig(schedule="HIO(0.7)**3 * RAAR(0.8)**3 * ER**2", beta=0.6, keep="last", backend=backend, **SW)
    res = refine(modulus, mask=mask, init=InitialEstimate(object=x0, support=S0), config=config)
    assert res.backend == backend and res.object.shape == obj.shape and res.support.shape == obj.shape
    for b in range(2):
        ref, S, history, final, _ = oracle.run(
            modulus[b].numpy(),
            None if mask is None else mask.numpy(),
            x0[b].numpy(),
            S0[b].numpy(),
            oracle.expand(config.schedule, config.beta),
            shrinkwrap_start=2,
            shrinkwrap_every=3,
            sigma=1.5,
            threshold=0.15,
            support2_size=0.6,
        )
        # measured (2-core x86-64 CPU, 2026-12-03): supports equal, object within 6e-7 of its
        # maximum, chi² within 2e-4 (history: float32 sums) and 3e-6 (final) relative
        np.testing.assert_array_equal(res.support[b].numpy(), S)
        assert not np.array_equal(S, S0[b].numpy())  # shrink-wrap did change S
        err = np.abs(res.object[b].numpy() - ref).max() / np.abs(ref).max()
        assert err < 1e-5, err
        np.testing.assert_allclose(res.chi2_history[b].numpy(), history, rtol=6e-4, atol=0)
        np.testing.assert_allclose(res.chi2[b].item(), final, rtol=1e-4, atol=0)


def test_er_hio_recovers_a_faceted_crystal_from_a_random_start(truth):
    obj, modulus = truth
    config = RefineConfig(schedule="(HIO**80 * ER**20)**3")
    res = refine(modulus.expand(2, *modulus.shape), config=config, seed=1)
    assert res.backend == "numba"  # "auto" on the CPU, volumes too
    assert res.object.shape == (2, 32, 32, 32) and res.object.dtype == torch.complex64
    # measured over seeds 1-3 (2-core x86-64 CPU, 2026-12-03): chi² 3.3e-4 - 5.4e-4; aligned
    # amplitude 0.063 - 0.117; phase 0.0011 - 0.0065 (mean (Δφ/π)² in the crystal); support
    # fraction 0.05
    assert (res.chi2 < 1.5e-3).all(), res.chi2
    recomputed = chi2(detector_modulus(res.object), modulus.expand(2, *modulus.shape), ndim=3)
    torch.testing.assert_close(recomputed, res.chi2, rtol=1e-3, atol=1e-7)
    for b in range(2):
        pair = align(res.object[b], obj, support=obj.abs() > 0)
        assert len(pair.shift) == 3
        assert pair.chi2_amplitude < 0.3 and pair.chi2_phase < 0.015, (pair.chi2_amplitude, pair.chi2_phase)
        # the support found by shrink-wrap holds the crystal and is not the whole search box
        support = pair.move(res.support[b].numpy())
        assert support[obj.abs().numpy() > 0].mean() > 0.99 and support.mean() < 0.1


def test_multistart_keeps_the_lowest_chi2_and_averages_the_aligned_starts(truth):
    obj, modulus = truth
    config = RefineConfig(schedule="(HIO**80 * ER**20)**3")
    res = multistart(modulus, config=config, starts=4, keep=2, seed=3)
    # one batch: the same starts as refine over the batch with that seed
    batch = refine(modulus.expand(4, *modulus.shape), config=config, seed=3)
    torch.testing.assert_close(res.chi2_starts, batch.chi2)
    assert res.kept.dtype == torch.int64 and res.kept.shape == (2,)
    order = torch.argsort(batch.chi2)
    assert res.kept.tolist() == order[:2].tolist()
    assert res.chi2_starts[res.kept].max() <= res.chi2_starts[order[2:]].min()
    assert res.object.shape == obj.shape and res.object.dtype == torch.complex64
    assert res.support.shape == obj.shape and res.support.dtype == torch.bool
    assert (res.object[~res.support] == 0).all()
    assert abs(torch.angle(res.object.sum()).item()) < 1e-4  # global phase fixed
    assert res.chi2 == pytest.approx(chi2(detector_modulus(res.object), modulus, ndim=3).item(), rel=1e-3)
    # the average is the crystal: measured chi² 0.0054 - 0.0061, spreads 0.14 - 0.15
    # (amplitude), 0.11 - 0.12 rad; aligned onto the truth: amplitude 0.052 - 0.057, phase
    # 0.0010 - 0.0011 (better than either start alone)
    assert res.chi2 < 0.018
    assert 0 < res.spread_amplitude < 0.4 and 0 < res.spread_phase < 0.3
    pair = align(res.object, obj, support=obj.abs() > 0)
    assert pair.chi2_amplitude < 0.15 and pair.chi2_phase < 0.003
    assert res.schedule == batch.schedule and res.backend == "numba"


def test_multistart_of_one_kept_start_is_that_start():
    # a 2-D pattern with a beamstop: the average of one start is that start
    g = torch.Generator().manual_seed(2)
    obj = torch.zeros(32, 32, dtype=torch.complex64)
    obj[12:20, 11:21] = torch.polar(torch.rand(8, 10, generator=g) + 0.5, torch.rand(8, 10, generator=g))
    modulus = detector_modulus(obj[None]).squeeze(0)  # (the transform over the 3 axes of (1, H, W): a 2-D one)
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[15:18, 15:18] = False
    config = RefineConfig(schedule="HIO**40 * ER**10")
    res = multistart(modulus, mask=mask, config=config, starts=3, keep=1, seed=7)
    best = refine(modulus.expand(3, 32, 32), mask=mask, config=config, seed=7)
    k = int(best.chi2.argmin())
    assert res.kept.tolist() == [k]
    c = best.object[k].sum()
    torch.testing.assert_close(res.object, best.object[k] * (c.abs() / c))  # only the global phase fixed
    assert torch.equal(res.support, best.support[k])
    assert res.spread_amplitude == 0 and res.spread_phase == 0
    # chi² over the measured pixels only: that of the start refine returned
    assert res.chi2 == pytest.approx(best.chi2[k].item(), rel=1e-4)
    assert res.chi2 != pytest.approx(chi2(detector_modulus(res.object[None])[0], modulus).item(), rel=1e-4)


def test_align_undoes_a_known_shift_twin_and_phase_in_3d(truth):
    obj = truth[0].numpy()
    moved = np.roll(twin(obj, 3), (2, -3, 1), axis=(0, 1, 2)) * np.exp(0.7j)
    pair = align(moved, obj)
    # twin(moved) = obj rolled by (-2, 3, -1) times e^{-0.7i}
    assert pair.twin and pair.shift == (2, -3, 1)
    assert pair.global_phase == pytest.approx(0.7, abs=1e-6)
    assert pair.chi2_amplitude < 1e-12 and pair.chi2_phase < 1e-12
    np.testing.assert_allclose(pair.recon, obj, atol=1e-5)
    support = np.abs(moved) > 0
    np.testing.assert_array_equal(pair.move(support), np.abs(obj) > 0)
    # inversion about the centre voxel, on the last ndim axes only
    np.testing.assert_array_equal(invert(invert(obj, 3), 3), obj)
    np.testing.assert_array_equal(invert(obj, 3)[16, 16, 16], obj[16, 16, 16])
    np.testing.assert_array_equal(invert(obj, 2), np.stack([invert(s) for s in obj]))


def test_bad_3d_input_is_refused(truth):
    obj, modulus = truth
    m = modulus[None]
    with pytest.raises(CDIValueError, match=r"^modulus must be \(B, H, W\) or \(B, D, H, W\), got shape \(1, 1, 32"):
        refine(m[None])
    with pytest.raises(
        CDIValueError, match=r"^mask shape \(32, 32\) does not match the frames: expected \(32, 32, 32\)"
    ):
        refine(m, mask=torch.ones(32, 32, dtype=torch.bool))
    with pytest.raises(CDIValueError, match=r"^initial support shape \(1, 16, 16, 16\) != frames \(1, 32, 32, 32\)$"):
        refine(m, init=InitialEstimate(support=torch.ones(1, 16, 16, 16, dtype=torch.bool)))
    with pytest.raises(CDIValueError, match=r"^multistart: modulus must be one pattern \(H, W\) or \(D, H, W\)"):
        multistart(m)
    with pytest.raises(CDIValueError, match=r"^multistart: mask shape \(1, 32, 32, 32\) does not match"):
        multistart(modulus, mask=torch.ones(1, 32, 32, 32, dtype=torch.bool))
    with pytest.raises(CDIValueError, match=r"^multistart: need 1 <= keep <= starts, got starts=2, keep=3$"):
        multistart(modulus, starts=2, keep=3)
    with pytest.raises(CDIValueError, match=r"^modulus contains NaN or inf$"):
        multistart(torch.where(modulus > modulus.max() / 2, math.nan, modulus))
    with pytest.raises(ValueError, match=r"align needs two \(H, W\) arrays of one shape, or two \(D, H, W\)"):
        align(obj, obj[0])
    assert square_support((8, 8, 8), 0.25).nonzero().tolist() == [
        [i, j, k] for i in (3, 4) for j in (3, 4) for k in (3, 4)
    ]


@pytest.mark.gpu
def test_multistart_on_cuda_matches_the_cpu(truth):
    # the same code on the pattern's device: same seeds, same starts; the chi² histories agree
    # until round-off grows (chaotic HIO); the result stays on CUDA
    obj, modulus = truth
    config = RefineConfig(schedule="(HIO**80 * ER**20)**3")
    gpu = multistart(modulus.cuda(), config=config, starts=4, keep=2, seed=3)
    assert gpu.object.device.type == "cuda" and gpu.support.device.type == "cuda" and gpu.backend == "torch"
    cpu = refine(modulus.expand(4, *modulus.shape), config=config.model_copy(update={"backend": "torch"}), seed=3)
    on_cuda = refine(modulus.cuda().expand(4, *modulus.shape), config=config, seed=3)
    np.testing.assert_allclose(on_cuda.chi2_history[:, :20].cpu(), cpu.chi2_history[:, :20], rtol=1e-3, atol=1e-5)
    assert gpu.chi2 < 0.018 and align(gpu.object.cpu(), obj, support=obj.abs() > 0).chi2_phase < 0.003
