"""Bragg CDI post-processing: phase ramp and offset, twin rule, 3D unwrapping, lab axes, slices.

The orthogonalisation is checked against a forward model written here from the documented
convention alone (exact q of every pixel and frame, the analytic transform of a box), not
from the module's q basis.
"""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from cdi_beamline.config import BraggGeometry, ConfigError
from cdi_beamline.errors import CDIValueError
from cdi_beamline.phasing import (
    consistent_twin,
    crystal_centre,
    phase_ramp,
    postprocess,
    remove_phase_ramp,
    set_phase_offset,
    unwrap_phase_nd,
)
from cdi_beamline.phasing.postprocess import invert_nd, twin_nd
from cdi_beamline.physics import orthogonalise, q_space_basis, real_space_basis
from cdi_beamline.plotting import orthogonal_slices


def _grid(shape, centre=None):
    """Offsets from ``centre`` (default N//2) per axis, broadcastable."""
    centre = [n // 2 for n in shape] if centre is None else centre
    return np.meshgrid(*[np.arange(n) - c for n, c in zip(shape, centre)], indexing="ij", sparse=True)


def _ellipsoid(shape, radii, centre=None):
    d = _grid(shape, centre)
    return sum((di / r) ** 2 for di, r in zip(d, radii)) <= 1


def _wrap(p):
    return np.angle(np.exp(1j * p))


def _bowl(shape, support, depth):
    """An even phase field: ``depth`` at the support's edge, 0 at the centre voxel."""
    d = _grid(shape)
    r2 = sum(di.astype(float) ** 2 for di in d)
    return depth * r2 / r2[support].max()


def _skewed(shape):
    """An ellipsoid with a smaller lobe on one side: its |o|² is skewed."""
    main = _ellipsoid(shape, [n / 5 for n in shape])
    lobe = _ellipsoid(shape, [n / 10 for n in shape], centre=[n // 2 + n // 5 for n in shape])
    return main | lobe


# --- ramp and offset -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 36, 44), (64, 60)], ids=["3d", "2d"])
def test_ramp_removal_recovers_the_ramp_free_phase(shape):
    support = _ellipsoid(shape, [n / 4 for n in shape])
    truth = _bowl(shape, support, 4.0) + 0.7  # even, wraps: no mean gradient
    g = np.array([0.9, -1.3, 0.45][: len(shape)])  # rad/voxel: wraps many times over the crystal
    ramp = sum(gi * di for gi, di in zip(g, _grid(shape)))
    obj = (support * np.exp(1j * (truth + ramp))).astype(np.complex64)

    np.testing.assert_allclose(phase_ramp(obj, support), g, atol=1e-5)
    flat = remove_phase_ramp(obj, support)
    assert flat.dtype == np.complex64
    # the ramp is gone and nothing else changed: the phase is the truth, to float32 precision
    assert np.abs(_wrap(np.angle(flat) - truth))[support].max() < 1e-4


def test_ramp_estimate_survives_a_dislocation():
    # A screw dislocation along axis 0 (a phase vortex) defeats unwrapping-then-fitting;
    # the neighbour phase differences do not need unwrapping.
    shape = (32, 48, 48)
    support = _ellipsoid(shape, (12, 18, 18))
    _, y, x = _grid(shape)
    vortex = np.arctan2(y + 0.5, x + 0.5)  # core between voxels, centred
    g = np.array([0.2, 0.5, -0.8])
    ramp = sum(gi * di for gi, di in zip(g, _grid(shape)))
    obj = support * np.exp(1j * (vortex + ramp))
    np.testing.assert_allclose(phase_ramp(obj, support), g, atol=2e-2)


def test_phase_offset_at_the_centre_and_of_the_mean():
    shape = (36, 40, 32)
    support = _ellipsoid(shape, (9, 10, 8), centre=(20, 17, 15))
    rng = np.random.default_rng(3)
    obj = support * (1 + 0.2 * rng.random(shape)) * np.exp(1j * (2.5 + 0.3 * rng.standard_normal(shape)))
    centre = crystal_centre(obj, support)
    assert max(abs(c - t) for c, t in zip(centre, (20, 17, 15))) <= 1

    at_centre = set_phase_offset(obj, support, "centre")
    assert abs(np.angle(at_centre[centre])) < 1e-9
    np.testing.assert_allclose(np.abs(at_centre), np.abs(obj))
    at_mean = set_phase_offset(obj, support, "mean")
    assert abs(np.angle(at_mean[support].sum())) < 1e-9


def test_the_centre_of_a_hollow_crystal_is_in_it():
    shape = (48, 48)
    support = _ellipsoid(shape, (16, 16)) & ~_ellipsoid(shape, (9, 9))  # a ring: centre of mass in the hole
    obj = support * np.exp(0.3j)
    centre = crystal_centre(obj, support)
    assert support[centre]
    assert abs(np.hypot(centre[0] - 24, centre[1] - 24) - 12.5) < 4


# --- twin ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_kind", ["skewed", "centrosymmetric"])
def test_the_twin_rule_picks_one_twin_for_an_object_and_its_twin(shape_kind):
    shape = (32, 36, 40)
    if shape_kind == "skewed":
        support = _skewed(shape)
    else:  # a sphere: only the phase (a bowl, flipped in the twin) tells the twins apart
        support = _ellipsoid(shape, (8, 8, 8))
    ramp = sum(gi * di for gi, di in zip((0.3, -0.2, 0.5), _grid(shape)))
    obj = support * np.exp(1j * (_bowl(shape, support, 1.5) + ramp + 0.4))

    a, sa, ta = consistent_twin(obj, support)
    b, sb, tb = consistent_twin(twin_nd(obj), invert_nd(support))
    assert ta != tb
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(sa, sb)


def test_repeated_reconstructions_come_out_as_the_same_twin():
    # Two "reconstructions" of one crystal: shifted, with different global phases and noise,
    # one of them the twin. After the rule both correlate with the same one of the pair.
    shape = (32, 36, 40)
    support = _skewed(shape)
    rng = np.random.default_rng(0)
    truth = support * (1 + 0.1 * rng.random(shape)) * np.exp(1j * _bowl(shape, support, 1.2))

    def noisy(o, c):
        return o * np.exp(1j * c) + 0.02 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))

    runs = [
        noisy(np.roll(truth, (1, -2, 0), (0, 1, 2)), 0.5),
        noisy(twin_nd(np.roll(truth, (0, 2, 1), (0, 1, 2))), 2.0),
    ]

    def peak(a, b):
        return np.abs(np.fft.ifftn(np.fft.fftn(a) * np.conj(np.fft.fftn(b)))).max()

    for run in runs:
        sup = np.abs(run) > 0.5
        chosen, _, _ = consistent_twin(run, sup)
        assert peak(chosen, truth) > 1.1 * peak(chosen, twin_nd(truth))  # 1.14 when right, 0.88 when wrong
        # and with a reference instead of the rule
        by_ref, _, _ = consistent_twin(run, sup, reference=runs[0])
        assert peak(by_ref, truth) > 1.1 * peak(by_ref, twin_nd(truth))


# --- unwrapping ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 44, 36), (64, 56)], ids=["3d", "2d"])
def test_unwrapping_a_wrapped_smooth_field(shape):
    support = _ellipsoid(shape, [n / 3 for n in shape])
    d = _grid(shape)
    field = 9.0 * np.sin(0.09 * d[0]) + 0.05 * sum(di.astype(float) ** 2 for di in d[1:])  # ~25 rad range
    assert np.ptp(field[support]) > 6 * math.pi
    out = unwrap_phase_nd(_wrap(field), support)
    diff = (out - field)[support]
    assert np.abs(diff - diff[0]).max() < 1e-6  # equal up to one multiple of 2π
    assert abs(diff[0] / (2 * math.pi) - round(diff[0] / (2 * math.pi))) < 1e-6
    assert (out[~support] == 0).all()


# --- geometry and orthogonalisation ----------------------------------------------------------

_GEOMETRY = {"energy_kev": 9.0, "distance_m": 0.5, "delta_deg": 30.0, "gamma_deg": 12.0, "rocking_step_deg": 0.02}
_BOX_NM = {"z": 250.0, "y": 200.0, "x": 300.0}


def _box_seen_by_a_rocking_scan(geometry: BraggGeometry, shape):
    """The object a rocking scan of a lab-aligned box phases to, on the detector-conjugate grid.

    Every frame and pixel gets its exact q (the pixel's direction, the sample turned by the
    frame's angle), the box its analytic transform ∫ e^{−iq·r} dr = Π L sinc(q L / 2π); the
    object is the inverse centred DFT of that.
    """
    k = 2 * math.pi * geometry.energy_kev / 1.23984198
    d, g = math.radians(geometry.delta_deg), math.radians(geometry.gamma_deg)
    # (x, y, z): exit beam, row step (-y at rest) and column step (-x at rest), arm R_y(δ) R_x(−γ)
    exit_beam = np.array([math.cos(g) * math.sin(d), math.sin(g), math.cos(g) * math.cos(d)])
    row = -np.array([-math.sin(g) * math.sin(d), math.cos(g), -math.sin(g) * math.cos(d)])
    col = -np.array([math.cos(d), 0.0, -math.sin(d)])
    f, i, j = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    pix = (
        geometry.distance_m * exit_beam[:, None, None, None]
        + geometry.pixel_size_m[0] * i * row[:, None, None, None]
        + geometry.pixel_size_m[1] * j * col[:, None, None, None]
    )
    q = k * pix / np.linalg.norm(pix, axis=0) - k * np.array([0, 0, 1.0])[:, None, None, None]
    q0 = k * (exit_beam - np.array([0, 0, 1.0]))
    # the sample turned by +θ shows the detector its frame's q turned by −θ
    t = -np.radians(geometry.rocking_step_deg) * f
    c, s = np.cos(t), np.sin(t)
    if geometry.rocking_axis == "y":
        qx, qy, qz = c * q[0] + s * q[2], q[1], -s * q[0] + c * q[2]
    else:
        qx, qy, qz = q[0], c * q[1] - s * q[2], s * q[1] + c * q[2]
    field = np.ones(shape, dtype=complex)
    for qa, qa0, length in ((qx, q0[0], _BOX_NM["x"]), (qy, q0[1], _BOX_NM["y"]), (qz, q0[2], _BOX_NM["z"])):
        field *= length * np.sinc((qa - qa0) * length / (2 * math.pi))
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(field)))


def _box_moments(obj, voxel_nm):
    """Edge lengths (z, y, x) from the second moments of the half-maximum region, and the
    correlation of its coordinates (off-diagonal: 0 for a lab-aligned box)."""
    amp = np.abs(obj)
    idx = np.array(np.nonzero(amp > 0.5 * amp.max()), dtype=float) * voxel_nm
    cov = np.cov(idx)
    sd = np.sqrt(np.diag(cov))
    return math.sqrt(12) * sd, (cov / np.outer(sd, sd))[np.triu_indices(3, 1)]


@pytest.mark.parametrize("rocking_axis", ["y", "x"])
def test_a_sheared_box_comes_back_square(rocking_axis):
    geometry = BraggGeometry(**_GEOMETRY, rocking_axis=rocking_axis)
    shape = (64, 64, 64)
    obj = _box_seen_by_a_rocking_scan(geometry, shape)
    support = np.abs(obj) > 0.5 * np.abs(obj).max()
    _, sheared = _box_moments(obj, 1.0)
    assert np.abs(sheared).max() > 0.1  # on the detector-conjugate grid the box is sheared

    lab, voxel = orthogonalise(obj, geometry, support=support)
    assert voxel == pytest.approx(np.linalg.norm(real_space_basis(geometry, shape), axis=0).min())
    edges, corr = _box_moments(lab, voxel)
    assert np.abs(corr).max() < 0.02  # edges along z, y, x: square
    np.testing.assert_allclose(edges, [_BOX_NM[a] for a in "zyx"], atol=voxel)  # sizes within a voxel

    # the same data put on lab axes with the rocking turned the other way stay sheared
    wrong = geometry.model_copy(update={"rocking_step_deg": -geometry.rocking_step_deg})
    _, corr_wrong = _box_moments(orthogonalise(obj, wrong, support=support).array, voxel)
    assert np.abs(corr_wrong).max() > 0.1


def test_geometry_without_a_third_dimension_is_refused():
    with pytest.raises(ConfigError, match="direct beam"):
        BraggGeometry.build(**{**_GEOMETRY, "delta_deg": 0.0, "gamma_deg": 0.0})
    with pytest.raises(ConfigError, match="rocking_step_deg"):
        BraggGeometry.build(**{**_GEOMETRY, "rocking_step_deg": 0.0})
    # rocking about x with the detector in the horizontal plane moves q along the detector's rows
    flat = BraggGeometry(**{**_GEOMETRY, "gamma_deg": 0.0}, rocking_axis="x")
    with pytest.raises(CDIValueError, match="no third dimension"):
        q_space_basis(flat)


# --- the whole chain -------------------------------------------------------------------------


def test_postprocess_undoes_twin_ramp_offset_and_wraps_and_puts_the_crystal_on_lab_axes():
    shape = (48, 48, 48)
    support = _skewed(shape)
    truth = _bowl(shape, support, 9.0)  # wraps: 9 rad at the edge, 0 at the array's centre
    ramp = sum(gi * di for gi, di in zip((0.4, -0.25, 0.6), _grid(shape)))
    obj = support * np.exp(1j * (truth + ramp + 1.1))
    geometry = BraggGeometry(**_GEOMETRY)

    out = postprocess(twin_nd(obj), invert_nd(support), geometry=geometry)
    assert out.twinned
    np.testing.assert_array_equal(out.support, support)
    # on this lopsided crystal the bowl has a mean gradient of its own, removed with the ramp
    own = phase_ramp(support * np.exp(1j * truth), support)
    np.testing.assert_allclose(out.ramp, own + [0.4, -0.25, 0.6], atol=1e-6)
    truth = truth - sum(gi * di for gi, di in zip(own, _grid(shape)))
    expected = np.where(support, truth - truth[crystal_centre(obj, support)], 0.0)
    assert np.abs(out.phase - expected).max() < 1e-4
    assert out.phase[crystal_centre(obj, support)] == 0

    # lab axes: the crystal keeps its volume (|det A| per conjugate voxel) and its phase range
    basis = real_space_basis(geometry, shape)
    volume = support.sum() * abs(np.linalg.det(basis))
    assert out.lab_support is not None and out.lab_phase is not None and out.lab_voxel_nm is not None
    assert out.lab_support.sum() * out.lab_voxel_nm**3 == pytest.approx(volume, rel=0.1)
    assert out.lab_amplitude is not None and out.lab_amplitude.shape == out.lab_support.shape
    inner = out.lab_phase[out.lab_support]
    assert inner.min() >= expected[support].min() - 0.5 and inner.max() <= expected[support].max() + 0.5
    np.testing.assert_array_equal(out.voxel_vectors_nm, basis)
    displacement = out.lab_displacement_nm
    assert displacement is not None
    np.testing.assert_allclose(displacement * out.q_bragg_nm, -out.lab_phase, atol=1e-5)

    mean = postprocess(obj, support, offset="mean")
    assert not mean.twinned and mean.lab_phase is None
    assert abs(float((mean.amplitude * mean.phase)[support].sum())) < 1e-3 * support.sum()


def test_postprocess_refuses_bad_input_with_a_reason():
    obj = np.ones((8, 8, 8), dtype=complex)
    support = np.zeros((8, 8, 8), dtype=bool)
    with pytest.raises(CDIValueError, match="support holds no voxel"):
        postprocess(obj, support)
    support[3:5, 3:5, 3:5] = True
    with pytest.raises(CDIValueError, match="NaN or inf"):
        postprocess(np.where(support, np.nan, obj), support)
    with pytest.raises(CDIValueError, match="lab axes need a 3D object"):
        postprocess(obj[4], support[4], geometry=BraggGeometry(**_GEOMETRY))
    with pytest.raises(CDIValueError, match="complex"):
        postprocess(np.abs(obj), support)


# --- picture ---------------------------------------------------------------------------------


def test_orthogonal_slices_render(tmp_path):
    shape = (40, 44, 48)
    support = _skewed(shape)
    obj = support * np.exp(1j * _bowl(shape, support, 2.0))
    fig = orthogonal_slices(obj, support, title="crystal", axis_names=("z", "y", "x"), voxel_nm=12.5)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 6  # 2 rows x 3 slices (the colour bars hold no image)
    assert len(fig.axes) == 8
    # the slice across axis 0 at the centre of mass, zoomed on the support (3 voxels of margin)
    rows, cols = np.nonzero(support.any(axis=0))
    zoom = (
        min(rows.max() + 4, shape[1]) - max(rows.min() - 3, 0),
        min(cols.max() + 4, shape[2]) - max(cols.min() - 3, 0),
    )
    assert images[0].images[0].get_array().shape == zoom
    centre = crystal_centre(obj, support)
    shown_phase = images[3].images[0].get_array()
    assert np.ma.count(shown_phase) == support[centre[0]].sum()  # masked outside the support
    out = tmp_path / "slices.png"
    fig.savefig(out, dpi=60)
    png = matplotlib.image.imread(out)
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 300

    # into given axes
    host = Figure()
    axes = host.subplots(2, 3)
    assert orthogonal_slices(obj, axes=axes) is host
