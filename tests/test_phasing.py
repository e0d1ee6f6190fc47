"""Physics properties of the phasing engine: convergence, masks, shrink-wrap, alignment,
NNS, schedules, chi², bad inputs."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from cdi_beamline.config import ConfigError, RefineConfig
from cdi_beamline.errors import CDIValueError
from cdi_beamline.fourier import to_detector
from cdi_beamline.phasing import (
    ER,
    HIO,
    InitialEstimate,
    NearestNeighbourIndex,
    align,
    chi2,
    invert,
    parse_schedule,
    random_initial_object,
    refine,
    square_support,
    twin,
    unwrap,
)

N = 64


def _blob(n=N, shift=(0, 0), phase_strength=0.8):
    """A compact complex object (ellipse with a smooth + stepped phase), (n, n) complex64."""
    yy, xx = torch.meshgrid(torch.arange(n) - n // 2 - shift[0], torch.arange(n) - n // 2 - shift[1], indexing="ij")
    yy, xx = yy.float(), xx.float()
    support = ((yy / 9) ** 2 + (xx / 12) ** 2) <= 1
    phase = phase_strength * (torch.sin(xx / 5) + 0.4 * yy / 9 + 0.6 * (xx > 2).float())
    amp = 1.0 + 0.3 * torch.cos(yy / 4)
    return (support * torch.polar(amp, phase)).to(torch.complex64), support


@pytest.fixture(scope="module")
def blob():
    obj, support = _blob()
    return obj, support, to_detector(obj).abs()


def test_er_hio_with_true_support_converges(blob):
    obj, support, modulus = blob
    cfg = RefineConfig(shrinkwrap=False, schedule="(HIO**80 * ER**20)**2")
    res = refine(modulus[None] * 37.0, init=InitialEstimate(support=support[None]), config=cfg, seed=1)
    # measured (2-core x86-64 CPU, 2026-12-02): chi² 3.1e-6, first chi² 0.92, rel 1.8e-3,
    # aligned chi² amplitude 3.2e-4, phase 2.3e-4
    assert res.chi2.item() < 1e-5
    assert res.chi2_history.shape == (1, 200)
    assert res.chi2_history[0, 0] > 0.3  # started far away
    # The object is on the data's scale: |FFT(object)| matches the data without refitting.
    rel = (to_detector(res.object).abs() - modulus * 37.0).norm() / (modulus * 37.0).norm()
    assert rel.item() < 5e-3
    # ... and it is the true object up to the ambiguities.
    pair = align(res.object[0], obj)
    assert pair.chi2_amplitude < 9e-4 and pair.chi2_phase < 6.8e-4


def test_masked_pixels_keep_their_estimate_and_measured_ones_converge(blob):
    obj, support, modulus = blob
    g = torch.Generator().manual_seed(3)
    mask = torch.rand((N, N), generator=g) > 0.1  # 10 % unmeasured
    corrupted = modulus.clone()
    corrupted[~mask] = 1e3  # garbage where nothing was measured: must be ignored
    cfg = RefineConfig(shrinkwrap=False, schedule="(HIO**80 * ER**20)**2")
    res = refine(corrupted[None], mask=mask, init=InitialEstimate(support=support[None]), config=cfg, seed=1)
    # measured: 1.1e-6 both; without the mask 0.77
    assert res.chi2.item() < 3.3e-6
    assert chi2(to_detector(res.object).abs(), modulus[None], mask).item() < 3.3e-6
    # Without the mask the garbage pixels ruin the fit.
    bad = refine(corrupted[None], init=InitialEstimate(support=support[None]), config=cfg, seed=1)
    assert bad.chi2.item() > 0.25


def test_shrinkwrap_tightens_a_loose_support(blob):
    obj, support, modulus = blob
    loose = torch.zeros_like(support)
    loose[N // 2 - 16 : N // 2 + 16, N // 2 - 16 : N // 2 + 16] = True
    cfg = RefineConfig(schedule="(HIO**80 * ER**20)**3", shrinkwrap_start=50, support2_size=0.5)
    res = refine(
        modulus[None].expand(4, N, N), init=InitialEstimate(support=loose[None].expand(4, N, N)), config=cfg, seed=2
    )
    best = min(range(4), key=lambda i: res.chi2[i].item())
    # measured: best chi² 9.3e-5; areas 0.43-0.47 of the loose support, 1.34 of the true
    # one for the best frame, which it covers entirely
    assert res.chi2[best] < 2.8e-4
    areas = res.support.sum((-2, -1)).float()
    assert (areas < 0.55 * loose.sum()).all(), areas
    # Up to translation and twin, the support sits on the object, a little wider (blur).
    true_area = support.sum().item()
    assert 1.0 * true_area < areas[best] < 1.6 * true_area, (areas, true_area)
    pair = align(res.object[best], obj)
    s = res.support[best].numpy()
    s = np.roll(invert(s) if pair.twin else s, pair.shift, axis=(0, 1))
    assert (s & support.numpy()).sum() >= 0.95 * true_area


def test_chi2_is_scale_invariant_and_zero_for_the_truth(blob):
    _, _, modulus = blob
    m = modulus[None]
    # measured: 3.3e-16 and 4.4e-16 (float64 rounding); 0.147 with 5 % noise
    assert chi2(m * 5.0, m).item() < 1.3e-15
    assert chi2(m * 1e-6, m * 1e-7).item() < 5e-15  # tiny values, no clamp bites: measured 1.6e-15
    assert chi2(m * 5.0, m).dtype == torch.float32
    assert chi2(m, m * 1e4).item() < 1.3e-15
    noisy = m + 0.05 * m.max() * torch.rand(m.shape, generator=torch.Generator().manual_seed(0))
    c = chi2(noisy, m).item()
    assert 0.05 < c < 0.44
    with pytest.raises(CDIValueError, match="shape"):
        chi2(m[:, :10], m)


def test_align_recovers_shift_twin_and_global_phase(blob):
    obj, support, _ = blob
    for n in (64, 63):
        o, s = _blob(n)
        # The twin has the same Fourier modulus with the centred convention.
        assert torch.allclose(to_detector(o).abs(), to_detector(torch.from_numpy(twin(o.numpy()))).abs(), atol=1e-5)
        moved = np.roll(twin(o.numpy()), (5, -7), axis=(0, 1)) * np.exp(1j * 2.0) * 3.0
        pair = align(moved, o.numpy())
        # twin(moved) = 3 e^{-2i} o rolled by (-5, 7): undone by rolling (5, -7), phase +2.
        assert pair.twin and pair.shift == (5, -7)
        assert math.isclose(pair.global_phase, 2.0, abs_tol=1e-6)
        assert pair.chi2_amplitude < 1e-10 and pair.chi2_phase < 1e-10
    # Not a twin: a plain shift + phase is recovered without twinning.
    moved = np.roll(obj.numpy(), (3, 4), axis=(0, 1)) * np.exp(-1j)
    pair = align(moved, obj.numpy())
    assert not pair.twin and pair.shift == (-3, -4)
    assert math.isclose(pair.global_phase, 1.0, abs_tol=1e-6)
    # Different objects give clearly larger errors.
    other, _ = _blob(shift=(0, 0), phase_strength=2.5)
    assert align(other, obj).chi2_phase > 100 * max(pair.chi2_phase, 1e-8)


def test_inversion_is_about_the_centre_pixel():
    for n in (6, 7):
        x = np.zeros((n, n))
        x[n // 2, n // 2] = 1
        assert invert(x)[n // 2, n // 2] == 1
        x = np.zeros((n, n))
        x[n // 2 + 1, n // 2 - 2] = 1
        assert invert(x)[n // 2 - 1, n // 2 + 2] == 1


def test_unwrap_removes_2pi_jumps():
    yy, xx = np.mgrid[:48, :48]
    true = 0.4 * xx + 0.1 * yy
    mask = (yy - 24) ** 2 + (xx - 24) ** 2 < 20**2
    out = unwrap(np.angle(np.exp(1j * true)), mask)
    diff = (out - true)[mask]
    assert np.ptp(diff) < 1e-6  # equal up to a constant 2πk
    assert (out[~mask] == 0).all()
    with pytest.raises(ValueError, match="mask shape"):
        unwrap(true, mask[:10])


def test_nns_returns_the_exact_item_of_a_query_from_its_index():
    g = torch.Generator().manual_seed(0)
    n = 3000
    # Smooth-ish random patterns so that PCA is meaningful, plus near-duplicates.
    base = torch.rand(n, 8, 8, generator=g)
    mod = torch.nn.functional.interpolate(base[:, None], size=(64, 64), mode="bilinear")[:, 0] ** 2
    mod[1] = mod[0] * (1 + 0.05 * mod[2])  # a close neighbour of item 0
    amp = torch.rand(n, 32, 32, generator=g)
    phase = torch.rand(n, 32, 32, generator=g)
    index = NearestNeighbourIndex(mod, amp, phase, amp > 0.5, rank=16, candidates=8, chunk=1000)
    queries = [0, 1, 5, 1234, 2999]
    match = index.query(mod[queries] * 7.5)  # scale must not matter
    assert match.index.tolist() == queries
    assert (match.chi2 < 1e-5).all()
    assert torch.equal(match.amplitude[3], amp[1234])
    with pytest.raises(ValueError, match="does not match the index"):
        index.query(torch.rand(2, 32, 32))


def test_schedule_prints_as_it_reads_and_round_trips():
    s = (ER**20 * HIO**180) ** 3 * ER**20
    assert str(s) == "(ER**20 * HIO**180)**3 * ER**20"
    assert len(s) == 620
    assert parse_schedule(str(s)) == s
    t = parse_schedule(" ( HIO(0.7)**10*RAAR**5 )**2 * ER ")
    assert str(t) == "(HIO(0.7)**10 * RAAR**5)**2 * ER" and parse_schedule(str(t)) == t
    assert [a for a, _ in t][:11] == ["HIO"] * 10 + ["RAAR"]
    assert len(parse_schedule(RefineConfig().schedule)) == 600  # the paper's 600 iterations
    assert len(s.resized(300)) == 300 and len(s.resized(7)) == 7
    assert list(s)[-1] == ("ER", None)  # time order: left to right


@pytest.mark.parametrize(
    "text, message",
    [
        ("ER**0", "positive integer"),
        ("ER**2.5", "positive integer"),
        ("FOO**3", "unknown algorithm 'FOO'"),
        ("(ER**3", r"expected '\)'"),
        ("HIO(1.5)", r"beta of HIO must be in \(0, 1\]"),
        ("ER * * HIO", "expected an algorithm"),
    ],
)
def test_bad_schedules_are_refused(text, message):
    with pytest.raises(CDIValueError, match=message):
        parse_schedule(text)
    with pytest.raises(ConfigError, match="RefineConfig.schedule"):
        RefineConfig.build(schedule=text)


def test_refine_refuses_bad_inputs(blob):
    _, _, modulus = blob
    m = modulus[None]
    bad = [
        (modulus, r"^modulus must be \(B, H, W\), got shape \(64, 64\)$"),
        (m.to(torch.complex64), r"^modulus must be a real floating tensor, got torch.complex64$"),
        (m.to(torch.int32), r"^modulus must be a real floating tensor, got torch.int32$"),
        (torch.where(m > m.max() / 2, float("nan"), m), r"^modulus contains NaN or inf$"),
        (-m, r"^modulus contains negative values \(pass sqrt\(intensity\)\)$"),
    ]
    for frames, message in bad:
        with pytest.raises(CDIValueError, match=message):
            refine(frames)
    with pytest.raises(CDIValueError, match=r"^mask shape \(32, 32\) does not match the frames: expected"):
        refine(m, mask=torch.ones(32, 32, dtype=torch.bool))
    with pytest.raises(CDIValueError, match=r"^mask must be bool \(True = measured\), got torch.float32$"):
        refine(m, mask=torch.ones(N, N))
    with pytest.raises(CDIValueError, match=r"^initial support shape \(1, 32, 32\) != frames \(1, 64, 64\)$"):
        refine(m, init=InitialEstimate(support=torch.ones(1, 32, 32, dtype=torch.bool)))
    with pytest.raises(CDIValueError, match=r"^initial object shape \(2, 64, 64\) != frames"):
        refine(m, init=InitialEstimate(object=torch.ones(2, N, N, dtype=torch.complex64)))
    # zeros are data (a dark detector pixel), and a per-frame mask is accepted
    zeros = m.clone()
    zeros[..., :4, :] = 0
    res = refine(zeros, mask=torch.ones(1, N, N, dtype=torch.bool), config=RefineConfig(schedule="ER**2"))
    assert res.chi2.shape == (1,) and res.object.shape == (1, N, N)


def test_random_start_has_uniform_phases_in_the_support():
    support = torch.zeros(4, 64, 64, dtype=torch.bool)
    support[:, 8:56, 8:56] = True
    obj = random_initial_object(support, torch.Generator().manual_seed(0))
    assert obj.dtype == torch.complex64 and (obj[~support] == 0).all()
    inside = obj[support]
    assert torch.allclose(inside.abs(), torch.ones(()))
    # uniform on [0, 2 pi): mean of e^{i phi} ~ 0 (std 0.005 over 9216 samples), all quadrants
    assert inside.mean().abs() < 0.03
    phase = inside.angle()
    assert phase.min() < -3.1 and phase.max() > 3.1
    again = random_initial_object(support, torch.Generator().manual_seed(0))
    assert torch.equal(obj, again)


def test_square_support_is_centred():
    s = square_support((8, 8), 0.25)
    assert s.nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]  # side 2, its centre pixel (4, 4)
    assert square_support((8, 8), 0.01).nonzero().tolist() == [[4, 4]]  # at least one pixel
    assert square_support((8, 10), 1.0).sum() == 64 and square_support((6, 6), 1.0).all()
    assert square_support((7, 9), 3 / 7).nonzero()[:, 0].unique().tolist() == [2, 3, 4]


def test_raar_and_seeds(blob):
    obj, support, modulus = blob
    cfg = RefineConfig(shrinkwrap=False, schedule="RAAR(0.8)**150 * ER**50")
    m = modulus[None].expand(2, N, N)
    a = refine(m, init=InitialEstimate(support=support[None].expand(2, N, N)), config=cfg, seed=5)
    b = refine(m, init=InitialEstimate(support=support[None].expand(2, N, N)), config=cfg, seed=5)
    assert torch.equal(a.object, b.object)  # seeded: reproducible
    assert not torch.equal(a.object[0], a.object[1])  # different random starts per frame
    assert (a.chi2 < 1e-4).all()  # measured 3.3e-5, 1.1e-5


@pytest.mark.parametrize(
    "backend",
    [
        "numba",
        "torch",
        pytest.param(
            "compiled",
            marks=pytest.mark.skipif(
                shutil.which("g++") is None and shutil.which("c++") is None,
                reason="torch.compile on the CPU needs a C++ compiler",
            ),
        ),
    ],
)
def test_keep_best_returns_the_lowest_chi2_of_the_history(backend):
    # Every object is a candidate here (the support is given, no shrink-wrap): the returned
    # chi² is the minimum over the history and the last object, frame by frame. HIO after ER
    # raises chi², so the best is not the last on some frames.
    from cdi_beamline.physics import simulate_batch

    batch = simulate_batch(6, seed=3, device="cpu")
    support = torch.ones_like(batch.modulus, dtype=torch.bool) & square_support((N, N), 0.45)
    init = InitialEstimate(support=support)
    config = RefineConfig(schedule="ER**20 * HIO**20 * ER**5 * HIO**15", shrinkwrap=False, backend=backend)
    res = {
        keep: refine(batch.modulus, init=init, config=config.model_copy(update={"keep": keep}), seed=1)
        for keep in ("best", "last")
    }
    best, last = res["best"], res["last"]
    assert torch.equal(best.chi2_history, last.chi2_history)
    every = torch.cat([last.chi2_history, last.chi2[:, None]], 1)
    torch.testing.assert_close(best.chi2, every.min(1).values, rtol=1e-3, atol=1e-7)
    assert (best.chi2 <= last.chi2 + 1e-7).all()
    n = best.best_iteration
    assert (n < 60).any() and (last.best_iteration == 60).all()
    # the returned object is the one of that iteration: its chi² is the history's there
    inside = n < 60
    torch.testing.assert_close(best.chi2[inside], every[inside, n[inside]], rtol=1e-3, atol=1e-7)
    assert torch.equal(best.support, support)
    assert (best.object[~support] == 0).all()


def test_start_figures_are_drawn(tmp_path):
    # Fig. 5f and Fig. 6 of benchmarks/starts.py: curves with bands, images per start and count
    from cdi_beamline.plotting import plot_start_curves, plot_start_images

    g = np.random.default_rng(0)
    curves = {"CNN": 10 ** -g.uniform(3, 5, (8, 31)), "random": 10 ** -g.uniform(1, 4, (16, 31))}
    out = plot_start_curves(curves, tmp_path / "curves.png", title="t")
    obj = np.exp(1j * g.uniform(-3, 3, (32, 32))) * (g.uniform(0, 1, (32, 32)) > 0.5)
    images = plot_start_images({"CNN": [obj, obj], "random": [obj * 0, obj]}, (0, 20), tmp_path / "images.png")
    assert out.stat().st_size > 10_000 and images.stat().st_size > 10_000
