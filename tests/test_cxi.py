"""CXI 1.6 in and out: round trips, the spec's paths and attributes in plain h5py, CXI input to
``reconstruct``, ``reconstruct --out x.cxi``, and ``export`` of a derived run from a real Tiled."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from cdi_beamline.cli import main
from cdi_beamline.cxi import (
    CXI_VERSION,
    PIXEL_HAS_SIGNAL,
    PIXEL_INSIDE_SUPPORT,
    PIXEL_IS_INVALID,
    measured_pixels,
    read_cxi,
    write_cxi,
)
from cdi_beamline.errors import CDIValueError
from cdi_beamline.fourier import FFT_CONVENTION_3D, to_detector
from cdi_beamline.io import read_mask
from cdi_beamline.phasing import chi2 as chi2_of

ELECTRON_VOLT = 1.602176634e-19
GEOMETRY = {"energy_kev": 9.0, "distance_m": 1.5, "pixel_size_m": (55e-6, 75e-6), "delta_deg": 31.2, "gamma_deg": -2.5}


def _objects(shape, n=None, seed=0):
    rng = np.random.default_rng(seed)
    full = shape if n is None else (n, *shape)
    obj = (rng.random(full) * np.exp(1j * rng.uniform(-np.pi, np.pi, full))).astype(np.complex64)
    return obj, np.abs(obj) > 0.3


def test_round_trip_of_a_2d_stack_keeps_values_mask_polarity_and_geometry(tmp_path):
    obj, support = _objects((16, 24), n=3)
    data = np.random.default_rng(1).poisson(50, (3, 16, 24)).astype(np.uint32)
    mask = np.ones((16, 24), bool)
    mask[0, :5] = mask[7, 7] = False  # True = measured: 6 unmeasured pixels
    config = {"iterations": 50, "refine": {"schedule": "ER**50"}}
    path = tmp_path / "stack.cxi"
    write_cxi(
        path,
        data=data,
        mask=mask,
        object=obj,
        support=support,
        chi2=np.array([0.1, 0.2, 0.3]),
        frame_index=np.array([0, 2, 5]),
        geometry=GEOMETRY,
        process={"configuration": config, "command": "cdi-beamline reconstruct in.cxi --out stack.cxi"},
    )
    back = read_cxi(path)
    np.testing.assert_array_equal(back.object, obj)
    assert back.object.dtype == np.complex64 and back.ndim == 2
    np.testing.assert_array_equal(back.support, support)
    np.testing.assert_array_equal(back.data, data)
    assert back.data.dtype == np.uint32  # counts keep their type
    np.testing.assert_array_equal(back.mask, mask)
    assert back.chi2.tolist() == [0.1, 0.2, 0.3] and back.frame_index.tolist() == [0, 2, 5]
    assert back.geometry["energy_kev"] == pytest.approx(9.0, rel=1e-12)
    assert back.geometry["distance_m"] == 1.5 and back.geometry["pixel_size_m"] == (55e-6, 75e-6)
    assert back.geometry["delta_deg"] == 31.2 and back.geometry["gamma_deg"] == -2.5
    assert back.process["configuration"] == config and back.process["program"] == "cdi-beamline"
    assert back.process["command"].endswith("--out stack.cxi")

    # What a PyNX or bcdi user reads with plain h5py, at the spec's paths, in SI units.
    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == CXI_VERSION == 160
        link = f["entry_1/data_1"].get("data", getlink=True)
        assert isinstance(link, h5py.SoftLink) and link.path == "/entry_1/image_1/data"
        assert f["entry_1/data_2"].get("data", getlink=True).path == "/entry_1/instrument_1/detector_1/data"
        np.testing.assert_array_equal(f["entry_1/data_1/data"][()], obj)
        image = f["entry_1/image_1"]
        # complex numbers as the CXI compound of "r" and "i"
        assert [image["data"].id.get_type().get_member_name(i) for i in range(2)] == [b"r", b"i"]
        assert image["data"].attrs["axes"] == "frame_index:y:x" and image["dimensionality"][()] == 2
        assert image["is_fft_shifted"][()] == 0 and image["data_space"][()] == b"real"
        assert image["support"].dtype == np.uint8
        np.testing.assert_array_equal(image["mask"][()], np.where(support, PIXEL_INSIDE_SUPPORT, 0))
        assert image["process_1/program"][()] == b"cdi-beamline"
        detector = f["entry_1/instrument_1/detector_1"]
        bits = detector["mask"][()]
        assert bits.dtype == np.uint32 and bits.shape == (16, 24)
        assert set(np.unique(bits)) == {0, PIXEL_IS_INVALID} and int((bits != 0).sum()) == 6
        assert bits[7, 7] == PIXEL_IS_INVALID and bits[8, 8] == 0  # CXI: 0 = good pixel
        energy = f["entry_1/instrument_1/source_1/energy"]
        assert energy.attrs["units"] == "J" and energy[()] == pytest.approx(9000 * ELECTRON_VOLT, rel=1e-12)
        wavelength = f["entry_1/instrument_1/beam_1/incident_wavelength"]
        assert wavelength.attrs["units"] == "m" and wavelength[()] == pytest.approx(1.37760e-10, rel=1e-4)
        assert detector["distance"][()] == 1.5 and detector["distance"].attrs["units"] == "m"
        assert detector["y_pixel_size"][()] == 55e-6 and detector["x_pixel_size"][()] == 75e-6
        assert detector["delta"][()] == 31.2 and detector["delta"].attrs["units"] == "degree"
        # PyNX keeps the instrument under image_1 too
        assert f["entry_1/image_1/instrument_1/detector_1/distance"][()] == 1.5


def test_round_trip_of_a_3d_object(tmp_path):
    obj, support = _objects((12, 10, 8))
    path = tmp_path / "volume.cxi"
    write_cxi(path, object=obj, support=support, chi2=0.0123, ndim=3, geometry={"energy_kev": 10.0})
    back = read_cxi(path)
    assert back.ndim == 3 and back.object.shape == (12, 10, 8) and back.data is None and back.mask is None
    np.testing.assert_array_equal(back.object, obj)
    np.testing.assert_array_equal(back.support, support)
    assert back.chi2.shape == () and float(back.chi2) == 0.0123 and back.frame_index is None
    assert back.geometry == {"energy_kev": pytest.approx(10.0)}
    with h5py.File(path, "r") as f:
        assert f["entry_1/data_1/data"].shape == (12, 10, 8)  # where bcdi reads a reconstruction
        assert f["entry_1/image_1/data"].attrs["axes"] == "z:y:x" and f["entry_1/image_1/dimensionality"][()] == 3
        assert "data_2" not in f["entry_1"] and "detector_1/data" not in f["entry_1/instrument_1"]


def test_cxi_mask_bits_read_as_measured_only_when_no_defect_bit_is_set(tmp_path):
    bits = np.array([[0, PIXEL_HAS_SIGNAL, PIXEL_IS_INVALID, 0x2], [0x4, 0x8, 0x80, 0x200 | PIXEL_HAS_SIGNAL]])
    expected = np.array([[True, True, False, False], [False, False, False, False]])
    np.testing.assert_array_equal(measured_pixels(bits.astype(np.uint32)), expected)
    with h5py.File(tmp_path / "det.cxi", "w") as f:  # a detector mask file as facilities ship them
        f["entry_1/instrument_1/detector_1/mask"] = bits.astype(np.int32)
    np.testing.assert_array_equal(read_mask(tmp_path / "det.cxi"), expected)
    with pytest.raises(CDIValueError, match="integer bits"):
        measured_pixels(np.array([0.5, 0.0]))


def test_a_file_laid_out_as_pynx_writes_its_results_is_read(tmp_path):
    # PyNX: cxi_version 150, the instrument under image_1, the support as image_1/mask (0/1)
    # with image_1/support a soft link to it, no dimensionality
    obj, support = _objects((8, 8, 8))
    path = tmp_path / "pynx.cxi"
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 150
        image = f.create_group("entry_1/image_1")
        image["data"] = obj
        image["mask"] = support.astype(np.int8)
        image["support"] = h5py.SoftLink("/entry_1/image_1/mask")
        image["instrument_1/source_1/energy"] = 8000 * ELECTRON_VOLT
        image["instrument_1/source_1/energy"].attrs["units"] = "J"
        image["instrument_1/detector_1/distance"] = 0.9
        f["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/image_1/data")
    back = read_cxi(path)
    assert back.ndim == 3 and back.data is None
    np.testing.assert_array_equal(back.object, obj)
    np.testing.assert_array_equal(back.support, support)
    assert back.geometry == {"energy_kev": pytest.approx(8.0), "distance_m": 0.9}


def test_what_is_not_cxi_or_cannot_be_written_is_refused_clearly(tmp_path, capsys):
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["entry/data"] = np.zeros((4, 4))
    with pytest.raises(CDIValueError, match="not a CXI file: no cxi_version and no entry_1"):
        read_cxi(tmp_path / "plain.h5")
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.cxi").write_bytes((tmp_path / "array.npy").read_bytes())
    with pytest.raises(CDIValueError, match="not a CXI file: not HDF5"):
        read_cxi(tmp_path / "array.cxi")
    with pytest.raises(CDIValueError, match="no such file"):
        read_cxi(tmp_path / "missing.cxi")
    with h5py.File(tmp_path / "empty.cxi", "w") as f:
        f["cxi_version"] = 160
        f.create_group("entry_1/instrument_1")
    with pytest.raises(CDIValueError, match="without detector data"):
        read_cxi(tmp_path / "empty.cxi")
    (tmp_path / "plain.cxi").write_bytes((tmp_path / "plain.h5").read_bytes())
    assert main(["reconstruct", str(tmp_path / "plain.cxi"), "--out", str(tmp_path / "x.cxi")]) == 2
    assert "plain.cxi is not a CXI file: no cxi_version and no entry_1" in capsys.readouterr().err

    obj, support = _objects((8, 8))
    out = tmp_path / "out.cxi"
    cases = [
        ({"object": obj.real}, "must be complex"),
        ({"object": obj, "geometry": {"energy_ev": 9000}}, "unknown geometry field"),
        ({"object": obj, "support": support[:4]}, "support shape"),
        ({"data": np.ones((8, 8)), "mask": np.ones((4, 4), bool)}, "mask shape"),
        ({"object": obj, "chi2": [0.1, 0.2]}, "chi2 shape"),
        ({"object": obj, "ndim": 3}, "a 3D object is 3- or 4-dimensional"),
        ({}, "give data and/or object"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CDIValueError, match=message):
            write_cxi(out, **kwargs)


N = 64


@pytest.fixture(scope="module")
def cxi_input(tmp_path_factory):
    """A CXI file of two 64x64 intensity patterns whose mask hides pixels that hold garbage."""
    yy, xx = np.mgrid[:N, :N] - N // 2
    support = ((yy / 6) ** 2 + (xx / 9) ** 2) <= 1
    obj = support * np.exp(1j * 0.5 * np.sin(xx / 4))
    intensity = (to_detector(torch.from_numpy(obj)).abs() ** 2).numpy().astype(np.float32)
    data = np.stack([intensity, 20 * intensity])
    mask = np.ones((N, N), bool)
    mask[3:6, 30:40] = False
    data[:, ~mask] = 1e6  # unmeasured pixels: if they were phased, chi² would show it
    path = tmp_path_factory.mktemp("cxi") / "patterns.cxi"
    write_cxi(path, data=data, mask=mask, geometry=GEOMETRY)
    return path, data, mask


def test_reconstruct_reads_a_cxi_input_with_its_mask_and_writes_cxi(cxi_input, tmp_path, capsys):
    path, data, mask = cxi_input
    out = tmp_path / "result.cxi"
    rc = main(["reconstruct", str(path), "--out", str(out), "--init", "random", "--iterations", "60"])
    assert rc == 0, capsys.readouterr().err
    res = read_cxi(out)
    assert res.object.shape == (2, N, N) and res.ndim == 2 and res.frame_index.tolist() == [0, 1]
    np.testing.assert_array_equal(res.mask, mask)  # the input's mask travels with the data
    np.testing.assert_allclose(res.data, data, rtol=1e-6)  # the intensity that was phased
    assert res.geometry["pixel_size_m"] == GEOMETRY["pixel_size_m"] and res.geometry["delta_deg"] == 31.2
    assert res.process["configuration"]["config"]["iterations"] == 60
    # chi² (eq. 5 over measured pixels) recomputed from the file alone matches the stored one;
    # the 1e6 pixels were left out of the phasing, or it could not be small
    predicted = to_detector(torch.from_numpy(res.object)).abs()
    measured = torch.from_numpy(np.broadcast_to(res.mask, res.data.shape).copy())
    recomputed = chi2_of(predicted, torch.from_numpy(np.sqrt(res.data)), measured).numpy()
    np.testing.assert_allclose(recomputed, res.chi2, rtol=1e-3, atol=1e-7)
    # random start + 60 iterations: chi² 6.3e-4 and 6.6e-4 with the mask, 0.13 and 0.14 with the
    # same file stripped of its mask (2-core x86-64 CPU, 2026-12-03)
    assert (res.chi2 < 2e-3).all(), res.chi2
    assert np.isin(res.support.sum(axis=(1, 2)), range(40, 600)).all()


def test_reconstruct_preprocessed_cxi_input_scales_the_pixel_size_with_binning(cxi_input, tmp_path, capsys):
    path, data, mask = cxi_input
    out = tmp_path / "binned.cxi"
    rc = main(
        ["reconstruct", str(path), "--out", str(out), "--init", "random", "--iterations", "5", "--bin", "2"]
        + ["--min-peak", "0"]
    )
    assert rc == 0, capsys.readouterr().err
    res = read_cxi(out)
    assert res.object.shape == (2, N // 2, N // 2)
    assert res.geometry["pixel_size_m"] == pytest.approx((110e-6, 150e-6))
    # a binned pixel is measured only if its four pixels are
    np.testing.assert_array_equal(res.mask, mask.reshape(N // 2, 2, N // 2, 2).all(axis=(1, 3)))


@pytest.mark.system
def test_export_writes_the_derived_run_of_a_scan_from_tiled(tiled_server, run_engine, tmp_path, capsys):
    from bluesky.plans import count
    from helpers import ListSource, engine

    from cdi_beamline.callbacks import LiveReconstruction
    from cdi_beamline.config import LiveConfig
    from cdi_beamline.devices import ReplayDetector, SyntheticSource
    from cdi_beamline.tiled import derived_runs, load_results, make_writer, processed

    client = tiled_server.client()
    good = SyntheticSource(n=2, seed=5)
    nan = np.full((64, 64), np.nan, np.float32)
    frames = [good.frame(0), nan, good.frame(1)]  # the NaN frame is refused: status bad
    raw_writer = make_writer(client, tiled_server.spool_dir)
    writer = make_writer(processed(client), tiled_server.spool_dir)
    cb = LiveReconstruction(engine(3), writer, LiveConfig(data_dir=tiled_server.data_dir, max_wait_s=60))
    run_engine.subscribe(raw_writer)
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([ReplayDetector(ListSource(frames), name="det")], 3)).run_start_uids
    assert cb.flush(timeout=120) and raw_writer.flush(60)
    cb.close()

    out = tmp_path / "export.cxi"
    store = ["--uri", tiled_server.uri, "--api-key", tiled_server.api_key]
    assert main(["export", raw_uid[:8], "--format", "cxi", "--out", str(out), *store]) == 0
    printed = capsys.readouterr().out
    assert "2 frame(s) written, 1 without a reconstruction left out" in printed
    (derived,) = derived_runs(client, raw_uid)
    res = load_results(client, derived.metadata["start"]["uid"])
    cxi = read_cxi(out)
    assert cxi.ndim == 2 and cxi.frame_index.tolist() == [1, 3]  # the raw seq_num of each image
    stored = res["amplitude"][[0, 2]] * np.exp(1j * res["phase"][[0, 2]])
    np.testing.assert_allclose(cxi.object, stored, rtol=1e-5, atol=1e-6 * np.abs(stored).max())
    np.testing.assert_array_equal(cxi.support, res["support"][[0, 2]])
    np.testing.assert_allclose(cxi.chi2, res["chi2"][[0, 2]])
    assert cxi.process["configuration"] == derived.metadata["start"]["reconstructor"]

    assert main(["export", raw_uid, "--derived", "nosuchuid", "--out", str(out), *store]) == 2
    assert "has no derived run 'nosuchuid'" in capsys.readouterr().err


D3 = 24


@pytest.fixture(scope="module")
def volume():
    """A (24, 24, 24) 3D intensity pattern of a faceted crystal (~9 voxels across, a smooth phase)."""
    c = np.arange(D3) - D3 // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = 4.5
    inside = (np.abs(x) + np.abs(y) + np.abs(z) <= 1.5 * r) & (np.abs(x) <= r) & (np.abs(y) <= r)
    inside &= (np.abs(z) <= 0.8 * r) & (x + y <= r)
    obj = inside * np.exp(1j * (0.8 * np.sin(x / 5) * np.cos(y / 7) + 0.3 * z / r))
    return (np.abs(_detector_3d(obj)) ** 2 * 1e4).astype(np.float32), inside


def _detector_3d(obj: np.ndarray) -> np.ndarray:
    """The 3D FFT convention (FFT_CONVENTION_3D) in plain numpy."""
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(obj), norm="ortho"))


def _chi2(obj: np.ndarray, intensity: np.ndarray, measured: np.ndarray | None = None) -> float:
    """Eq. 5 over measured voxels, with the optimal scale."""
    pred, meas = np.abs(_detector_3d(obj)), np.sqrt(intensity)
    m = np.ones(pred.shape, bool) if measured is None else np.broadcast_to(measured, pred.shape)
    s = (pred[m] * meas[m]).sum() / (pred[m] ** 2).sum()
    return float(((s * pred[m] - meas[m]) ** 2).sum() / (meas[m] ** 2).sum())


THREE_D = ["--ndim", "3", "--iterations", "200", "--starts", "2", "--keep", "1", "--device", "cpu"]


def test_reconstruct_ndim3_phases_one_volume(volume, tmp_path, capsys):
    intensity, inside = volume
    np.save(tmp_path / "volume.npy", intensity)
    out = tmp_path / "volume.h5"
    assert main(["reconstruct", str(tmp_path / "volume.npy"), "--out", str(out), *THREE_D]) == 0
    assert "3D pattern 24x24x24 reconstructed" in capsys.readouterr().out
    with h5py.File(out) as f:
        obj, support, chi2 = f["object"][()], f["support"][()], f["chi2"][()]
        assert obj.shape == support.shape == (1, D3, D3, D3) and obj.dtype == np.complex64
        assert chi2.shape == (1,) and f["chi2_starts"].shape == (1, 2) and f["kept"].shape == (1, 1)
        assert f.attrs["fft_convention"] == FFT_CONVENTION_3D and f.attrs["ndim"] == 3
        assert f["chi2_starts"][0].min() == pytest.approx(chi2[0], rel=1e-3)  # keep 1: the best start itself
        np.testing.assert_allclose(f["modulus"][0], np.sqrt(intensity))
    # chi² recomputed from the file with the documented 3D convention matches the stored one
    assert _chi2(obj[0], intensity) == pytest.approx(chi2[0], rel=1e-3)
    # 200 iterations, best of 2 random starts: chi² 2.2e-4 (2-core x86-64 CPU, 2026-12-03)
    assert chi2[0] < 7e-4
    assert inside.sum() <= support.sum() <= 3 * inside.sum()


def test_reconstruct_ndim3_from_cxi_to_cxi_with_a_detector_mask(volume, tmp_path, capsys):
    intensity, _ = volume
    mask = np.ones((D3, D3), bool)
    mask[2:4, 15:20] = False  # one detector mask for every frame of the rocking scan
    garbage = intensity.copy()
    garbage[:, ~mask] = 1e9
    path = tmp_path / "scan.cxi"
    geometry = {"energy_kev": 9.0, "rocking_step_deg": 0.01, "rocking_axis": "y"}
    write_cxi(path, data=garbage, mask=mask, geometry=geometry)
    out = tmp_path / "crystal.cxi"
    assert main(["reconstruct", str(path), "--out", str(out), *THREE_D]) == 0, capsys.readouterr().err
    res = read_cxi(out)
    assert res.ndim == 3 and res.object.shape == res.support.shape == (D3, D3, D3) and res.chi2.shape == ()
    np.testing.assert_array_equal(res.mask, mask)
    assert res.geometry == {**geometry, "energy_kev": pytest.approx(9.0)}
    assert _chi2(res.object, res.data, res.mask) == pytest.approx(float(res.chi2), rel=1e-3)
    assert float(res.chi2) < 7e-4  # the 1e9 voxels were not phased
    with h5py.File(out) as f:
        assert f["entry_1/image_1/process_1/results/chi2_starts"].shape == (2,)
        assert json_config(f)["multistart"] == {"starts": 2, "keep": 1, "seed": 0}


def json_config(f: h5py.File) -> dict:
    import json

    return json.loads(f["entry_1/image_1/process_1/note_1/data"][()])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--ndim", "3", "--init", "cnn"], "--ndim 3 phases from random starts: --init cnn is for 2D"),
        (["--starts", "4"], "--starts and --keep belong with --ndim 3"),
        (["--ndim", "3", "--starts", "2", "--keep", "3"], "keep <= starts"),
        (["--ndim", "3", "--plot", "x.png"], "--ndim 3: --plot is for 2D"),
    ],
)
def test_ndim3_options_are_checked(volume, tmp_path, capsys, options, message):
    np.save(tmp_path / "volume.npy", volume[0])
    rc = main(
        ["reconstruct", str(tmp_path / "volume.npy"), "--out", str(tmp_path / "x.h5"), "--iterations", "2", *options]
    )
    assert rc == 2
    assert message in capsys.readouterr().err


def test_ndim3_refuses_a_2d_pattern(tmp_path, capsys):
    np.save(tmp_path / "pattern.npy", np.ones((32, 32), np.float32))
    assert main(["reconstruct", str(tmp_path / "pattern.npy"), "--out", str(tmp_path / "x.h5"), "--ndim", "3"]) == 2
    assert "--ndim 3 needs one 3D pattern (D, H, W)" in capsys.readouterr().err


def test_ndim3_refuses_nan_voxels_where_measured_and_ignores_them_where_masked(volume, tmp_path, capsys):
    intensity = volume[0].copy()
    mask = np.ones((D3, D3), bool)
    mask[0, 0] = False
    intensity[:, 0, 0] = np.nan  # unmeasured: phased around
    write_cxi(tmp_path / "masked.cxi", data=intensity, mask=mask)
    args = ["--out", str(tmp_path / "x.h5"), "--ndim", "3", "--iterations", "4", "--starts", "1", "--keep", "1"]
    assert main(["reconstruct", str(tmp_path / "masked.cxi"), *args]) == 0, capsys.readouterr().err
    intensity[3, 5, 5] = -1.0  # measured and negative
    write_cxi(tmp_path / "bad.cxi", data=intensity, mask=mask)
    assert main(["reconstruct", str(tmp_path / "bad.cxi"), *args]) == 2
    assert "--ndim 3: 1 measured voxel(s) of the pattern are NaN, inf or negative" in capsys.readouterr().err
