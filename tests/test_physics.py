"""Physics of the pattern simulator (cdi_beamline.physics): Fourier slice, Parseval,
Friedel symmetry, the sphere's form factor, eq. 2-3 geometry, detector effects, configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cdi_beamline.config import DEFAULT_MASK, ConfigError, SimulationConfig
from cdi_beamline.fourier import embed_centre, to_detector
from cdi_beamline.physics import bounding_radius, simulate_batch

CPU = "cpu"


def flip(x: torch.Tensor) -> torch.Tensor:
    """x(-q) on the centred grid: pixel i <-> (H - i) % H, so the centre H//2 stays put."""
    h, w = x.shape[-2:]
    rows = (h - torch.arange(h)) % h
    cols = (w - torch.arange(w)) % w
    return x[..., rows, :][..., :, cols]


def test_central_slice_of_3d_fft_equals_2d_fft_of_projection():
    cfg = SimulationConfig(nz=16, support_threshold=0.0)
    b = simulate_batch(2, cfg, seed=5, device=CPU, keep_field=True)
    field = embed_centre(b.field, (64, 64))  # (2, nz, 64, 64), axes (z, y, x)
    dims = (-3, -2, -1)
    # The full centred 3D transform; its q_z = 0 plane sits at index nz // 2.
    f3 = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(field, dim=dims), dim=dims, norm="ortho"), dim=dims)
    central = f3[:, cfg.nz // 2] * math.sqrt(cfg.nz)  # ortho norm of the extra axis
    projected = to_detector(field.sum(1))
    scale = projected.abs().amax()
    assert (central - projected).abs().amax() / scale < 1e-5
    # ... and the simulator's modulus is that slice's modulus (up to the normalisation).
    central_mod = central.abs()
    k = (b.modulus * central_mod).sum((1, 2)) / (central_mod**2).sum((1, 2))
    err = (b.modulus - k.view(-1, 1, 1) * central_mod).abs().amax((1, 2)) / b.modulus.amax((1, 2))
    assert err.max() < 1e-5
    # The stored targets are the projection, normalised, with the global phase fixed.
    proj = b.field.sum(1)
    torch.testing.assert_close(b.amplitude, proj.abs() / proj.abs().amax((1, 2), keepdim=True), atol=1e-5, rtol=0)


def test_modulus_is_the_fourier_modulus_of_the_targets_and_parseval_holds():
    b = simulate_batch(6, seed=1, device=CPU)
    obj = torch.polar(b.amplitude, b.phase)
    torch.testing.assert_close(b.modulus, to_detector(embed_centre(obj, (64, 64))).abs(), rtol=0, atol=1e-6)
    torch.testing.assert_close((b.modulus**2).sum((1, 2)), (b.amplitude**2).sum((1, 2)), rtol=1e-5, atol=0)
    assert b.modulus.shape == (6, 64, 64) and b.modulus.dtype == torch.float32
    assert b.amplitude.shape == b.phase.shape == b.support.shape == (6, 32, 32)
    assert b.support.dtype == torch.bool and b.mask is None
    # Targets: amplitude max 1, zero (and phase zero) outside the support, phase in (-pi, pi].
    torch.testing.assert_close(b.amplitude.amax((1, 2)), torch.ones(6))
    assert not b.amplitude[~b.support].any() and not b.phase[~b.support].any()
    assert b.phase.abs().max() <= math.pi
    # Global phase convention: the object's sum is real and positive.
    total = obj.sum((1, 2))
    assert (total.real > 0).all() and (total.imag.abs() < 1e-4 * total.abs()).all()


def test_zero_phase_gives_centrosymmetric_pattern_and_strong_phase_breaks_it():
    weak = simulate_batch(4, SimulationConfig(phase_span=(0.0, 0.0)), seed=2, device=CPU)
    assert not weak.phase.any()
    rel = (weak.modulus - flip(weak.modulus)).abs().amax((1, 2)) / weak.modulus.amax((1, 2))
    assert rel.max() < 1e-5
    strong = simulate_batch(4, SimulationConfig(), seed=2, device=CPU)
    asym = (strong.modulus - flip(strong.modulus)).abs().sum((1, 2)) / strong.modulus.sum((1, 2))
    assert asym.min() > 0.05


def test_sphere_follows_the_spherical_form_factor():
    radius = 10.0
    cfg = SimulationConfig(
        a=(radius, radius), b=(radius, radius), c=(radius, radius), e=(1.0, 1.0), n=(1.0, 1.0),
        phase_span=(0.0, 0.0), edge_sigma=0.0, support_threshold=0.0, max_radius=14.0,
    )  # fmt: skip
    m = simulate_batch(1, cfg, seed=0, device=CPU).modulus[0].double()
    idx = torch.arange(64, dtype=torch.float64) - 32
    qpix = (idx.view(-1, 1) ** 2 + idx.view(1, -1) ** 2).sqrt()
    keep = qpix <= 16  # the first ~3 fringes
    q = 2 * math.pi * qpix[keep] / 64  # rad / voxel
    data = m[keep]

    def misfit(r):
        x = (q * r).clamp_min(1e-3)  # the formula cancels catastrophically near 0; its limit is 1
        model = torch.where(x > 1e-3, 3 * (torch.sin(x) - x * torch.cos(x)) / x**3, 1.0).abs()
        k = (model * data).sum() / (model**2).sum()
        return float(((data - k * model) ** 2).sum() / (data**2).sum())

    radii = np.arange(8.0, 12.0, 0.01)
    fits = [misfit(r) for r in radii]
    best = radii[int(np.argmin(fits))]
    assert abs(best - radius) < 0.15
    assert min(fits) < 1e-3
    assert misfit(radius * 1.1) > 10 * min(fits)  # the fit is sharp: a 10% wrong radius fails


def test_seeds_reproduce_and_differ():
    cfg = SimulationConfig(chunk_size=3)  # several chunks
    one = simulate_batch(5, cfg, seed=11, device=CPU)
    two = simulate_batch(5, cfg, seed=11, device=CPU)
    other = simulate_batch(5, cfg, seed=12, device=CPU)
    for name in ("modulus", "amplitude", "phase", "support"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    for k in one.params:
        assert torch.equal(one.params[k], two.params[k]), k
    assert not torch.allclose(one.modulus, other.modulus)
    assert not torch.allclose(one.modulus[:3], one.modulus[3:5].repeat(2, 1, 1)[:3])  # chunks differ
    # A data set's first patterns do not depend on how many follow (up to float rounding:
    # the last chunk is computed with another batch size).
    longer = simulate_batch(8, cfg, seed=11, device=CPU)
    for name in ("modulus", "amplitude"):
        torch.testing.assert_close(getattr(longer, name)[:5], getattr(one, name), rtol=1e-5, atol=1e-6)
    for k in one.params:
        torch.testing.assert_close(longer.params[k][:5], one.params[k], rtol=1e-6, atol=1e-6)


def test_particles_fit_the_central_grid_and_rotations_are_proper():
    # Big, cube-like bounds force the fit-to-grid scaling.
    cfg = SimulationConfig(a=(10.0, 16.0), b=(10.0, 16.0), c=(10.0, 16.0), e=(0.3, 0.5), n=(0.3, 0.5))
    b = simulate_batch(16, cfg, seed=3, device=CPU, keep_field=True)
    assert (b.params["fit_scale"] < 1).all()
    radius = bounding_radius(*(b.params[k] for k in "abcen"))
    torch.testing.assert_close(radius, torch.full_like(radius, cfg.max_radius))
    edge = torch.cat([b.amplitude[:, 0], b.amplitude[:, -1], b.amplitude[:, :, 0], b.amplitude[:, :, -1]], 1)
    assert not edge.any()
    # Voxels inside the particle lie within the bounding radius (+ half a voxel diagonal).
    inside = b.field.abs() > 0.5
    z, y, x = torch.meshgrid(*(torch.arange(32.0) - 16,) * 3, indexing="ij")
    assert (x**2 + y**2 + z**2).sqrt()[inside.any(0)].max() <= cfg.max_radius + 0.9
    rot = b.params["rotation"]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(16), atol=1e-5, rtol=0)


def test_rod_points_along_its_rotated_axis():
    cfg = SimulationConfig(a=(2.0, 2.0), b=(2.0, 2.0), c=(12.0, 12.0), e=(1.0, 1.0), n=(1.0, 1.0))
    b = simulate_batch(4, cfg, seed=8, device=CPU, keep_field=True)
    s = b.field.abs()  # (4, z, y, x)
    z, y, x = torch.meshgrid(*(torch.arange(32.0) - 16,) * 3, indexing="ij")
    xyz = torch.stack([x, y, z]).view(3, -1)
    for i in range(4):
        w = s[i].flatten()
        centred = xyz - (xyz * w).sum(1, keepdim=True) / w.sum()
        cov = (centred * w) @ centred.T
        axis = torch.linalg.eigh(cov).eigenvectors[:, -1]
        # The particle's z axis in lab (x, y, z) coordinates is the rotation's third column.
        assert abs(float(axis @ b.params["rotation"][i, :, 2])) > 0.99


def test_phase_follows_eq3_correlation_lengths_and_span():
    span = 2.0
    cfg = SimulationConfig(
        Lx=(8.0, 8.0), Ly=(2.0, 2.0), Lz=(4.0, 4.0), rotate=False, phase_span=(span, span),
        a=(12.0, 12.0), b=(12.0, 12.0), c=(12.0, 12.0), e=(1.0, 1.0), n=(1.0, 1.0),
    )  # fmt: skip
    b = simulate_batch(4, cfg, seed=4, device=CPU, keep_field=True)
    inside = b.field.abs() > 0.5
    phi = torch.where(inside, b.field.angle(), torch.nan)
    lo = phi.nan_to_num(math.inf).amin((1, 2, 3))
    hi = phi.nan_to_num(-math.inf).amax((1, 2, 3))
    torch.testing.assert_close(hi - lo, torch.full((4,), span), atol=1e-4, rtol=0)
    # Mean |step| of the phase: smooth along x (L = 8), rough along y (L = 2).
    step_x = (phi[..., 1:] - phi[..., :-1]).abs().nanmean()
    step_y = (phi[..., 1:, :] - phi[..., :-1, :]).abs().nanmean()
    step_z = (phi[:, 1:] - phi[:, :-1]).abs().nanmean()
    assert step_x < step_z < step_y
    assert step_y > 2.5 * step_x


def test_phase_field_covariance_is_eq3_rotated():
    """White noise * Gaussian(L) has covariance exp(-D^T (R diag(L^2) R^T)^-1 D / 4) at lab lag D."""
    from cdi_beamline.physics._simulate import _Grid, _phase_field, random_rotations

    L = torch.tensor([2.0, 3.0, 5.0])
    grid = _Grid(SimulationConfig(Lx=(2.0, 2.0), Ly=(3.0, 3.0), Lz=(5.0, 5.0)), torch.device(CPU))
    n = 32
    rot = random_rotations(1, torch.Generator().manual_seed(1), CPU).expand(n, 3, 3)
    params = {
        "a": torch.ones(n),
        "rotation": rot,
        **{k: torch.full((n,), float(v)) for k, v in zip(("Lx", "Ly", "Lz"), L)},
    }
    f = _phase_field(params, grid, torch.Generator().manual_seed(2), n)
    f = f - f.mean((1, 2, 3), keepdim=True)
    power = torch.fft.rfftn(f, dim=(1, 2, 3)).abs() ** 2
    acf = torch.fft.irfftn(power, s=f.shape[1:], dim=(1, 2, 3)).mean(0)
    acf = acf / acf[0, 0, 0]
    precision = rot[0] @ torch.diag(1 / L**2) @ rot[0].T
    for lag in [(1, 0, 0), (3, 0, 0), (0, 2, 0), (0, 0, 3), (1, 1, 1), (2, -1, 0), (0, 3, 3)]:
        d = torch.tensor(lag, dtype=torch.float32)
        expected = math.exp(-0.25 * float(d @ precision @ d))
        assert abs(float(acf[lag[2], lag[1], lag[0]]) - expected) < 0.06, lag


def test_photon_noise_saturation_and_mask():
    photons = 1e5
    cfg = SimulationConfig(detector={"photons": photons})
    b = simulate_batch(8, cfg, seed=6, device=CPU)
    counts = b.modulus.double() ** 2
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-3)
    assert ((counts.sum((1, 2)) - photons).abs() < 5 * math.sqrt(photons)).all()
    exact = simulate_batch(8, SimulationConfig(), seed=6, device=CPU)
    torch.testing.assert_close(b.amplitude, exact.amplitude)  # noise touches only the pattern

    sat = simulate_batch(4, SimulationConfig(detector={"photons": photons, "saturation": 50.0}), seed=6, device=CPU)
    assert (sat.modulus**2).max() <= 50.0 + 1e-3

    masked = simulate_batch(3, SimulationConfig(detector=DEFAULT_MASK), seed=6, device=CPU)
    assert masked.mask.shape == (3, 64, 64) and masked.mask.dtype == torch.bool
    assert not masked.mask[:, 32, 32].any() and not masked.mask[:, 44, :].any() and not masked.mask[:, :, 21].any()
    assert masked.mask[:, 10, 10].all()
    assert not masked.modulus[~masked.mask].any()
    unmasked = simulate_batch(3, SimulationConfig(), seed=6, device=CPU)
    torch.testing.assert_close(masked.modulus[masked.mask], unmasked.modulus[masked.mask])


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"a": (-2.0, 5.0)}, "SimulationConfig.a"),
        ({"c": (8.0, 4.0)}, "SimulationConfig.c"),
        ({"e": (0.0, 1.0)}, "SimulationConfig.e"),
        ({"n": (1.0, -1.0)}, "SimulationConfig.n"),
        ({"phase_span": (0.0, 7.0)}, "SimulationConfig.phase_span"),
        ({"max_radius": 15.0}, "SimulationConfig.max_radius"),
        ({"nz": 2}, "SimulationConfig.nz"),
        ({"colour": "red"}, "SimulationConfig.colour"),
        ({"detector": {"photons": -1.0}}, "SimulationConfig.detector.photons"),
        ({"detector": {"saturation": 10.0}}, "SimulationConfig.detector.saturation"),
        ({"detector": {"gap_rows": (70,)}}, "SimulationConfig.detector.gap_rows"),
    ],
)
def test_invalid_config_is_refused_naming_the_field(values, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        SimulationConfig.build(**values)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_invalid_pattern_count_is_refused(n):
    with pytest.raises(ValueError, match="n: the number of patterns"):
        simulate_batch(n, device=CPU)


def test_bad_seed_and_config_type_are_refused():
    with pytest.raises(ValueError, match="seed"):
        simulate_batch(1, seed=-1, device=CPU)
    with pytest.raises(TypeError, match="SimulationConfig"):
        simulate_batch(1, {"a": (3.0, 4.0)}, device=CPU)


@pytest.mark.gpu
def test_cuda_matches_contract_and_reproduces():
    one = simulate_batch(64, seed=1, device="cuda")
    two = simulate_batch(64, seed=1, device="cuda")
    assert one.modulus.is_cuda and torch.equal(one.modulus, two.modulus)
    obj = torch.polar(one.amplitude, one.phase)
    torch.testing.assert_close(one.modulus, to_detector(embed_centre(obj, (64, 64))).abs(), rtol=0, atol=1e-5)
