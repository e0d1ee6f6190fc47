"""`cdi-beamline simulate` and the HDF5 layout (write_h5 / read_h5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cdi_beamline import __version__
from cdi_beamline.cli import main
from cdi_beamline.config import SimulationConfig
from cdi_beamline.errors import CDIValueError
from cdi_beamline.fourier import FFT_CONVENTION, embed_centre, fourier_modulus
from cdi_beamline.physics import read_h5, read_h5_metadata, simulate_batch, write_h5

PARAMS = {"a", "b", "c", "e", "n", "Lx", "Ly", "Lz", "phase_span", "fit_scale", "rotation"}


def simulate(tmp_path: Path, *extra: str, n: int = 5, seed: int = 3) -> Path:
    out = tmp_path / "sim.h5"
    assert main(["simulate", "--n", str(n), "--seed", str(seed), "--out", str(out), "--device", "cpu", *extra]) == 0
    return out


def test_simulate_writes_the_documented_layout(tmp_path, capsys):
    out = simulate(tmp_path, "--quiet")
    assert "wrote 5 patterns" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        expected = {
            "modulus": ((5, 64, 64), np.float32),
            "amplitude": ((5, 32, 32), np.float32),
            "phase": ((5, 32, 32), np.float32),
            "support": ((5, 32, 32), np.bool_),
        }
        for name, (shape, dtype) in expected.items():
            assert f[name].shape == shape and f[name].dtype == dtype, name
        assert "mask" not in f
        assert set(f["params"]) == PARAMS
        assert f["params/rotation"].shape == (5, 3, 3) and f["params/a"].shape == (5,)
        assert f.attrs["version"] == __version__
        assert f.attrs["fft_convention"] == FFT_CONVENTION
        assert f.attrs["seed"] == 3
        config = SimulationConfig.build(**json.loads(f.attrs["config"]))
    data = read_h5(out)
    # The modulus is exactly |FFT| of amplitude * exp(i phase) centred in 64 x 64.
    obj = torch.polar(torch.from_numpy(data["amplitude"]), torch.from_numpy(data["phase"]))
    np.testing.assert_allclose(data["modulus"], fourier_modulus(embed_centre(obj, (64, 64))).numpy(), rtol=0, atol=1e-6)
    # The file's attributes reproduce it.
    again = simulate_batch(5, config, seed=3, device="cpu").to_numpy()
    for name, arr in again.items():
        np.testing.assert_array_equal(data[name], arr, err_msg=name)
    assert read_h5_metadata(out)["config"] == config.model_dump(mode="json")
    # Partial reads.
    part = read_h5(out, start=2, stop=4, params=False)
    np.testing.assert_array_equal(part["phase"], data["phase"][2:4])
    assert not any(k.startswith("params/") for k in part)


def test_simulate_with_photons_and_mask(tmp_path):
    out = simulate(tmp_path, "--photons", "1e4", "--mask", "--quiet")
    data = read_h5(out)
    assert data["mask"].shape == (5, 64, 64) and data["mask"].dtype == np.bool_
    assert not data["mask"][:, 32, 32].any() and data["mask"].mean() > 0.9
    assert not data["modulus"][~data["mask"]].any()
    counts = data["modulus"].astype(np.float64) ** 2
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    assert read_h5_metadata(out)["config"]["detector"]["photons"] == 1e4


def test_simulate_records_the_chunk_size_that_ran(tmp_path):
    """The chunk size is part of the random stream: the file records the one used, and
    that recorded config reproduces the patterns."""
    out = simulate(tmp_path, "--photons", "1e6", "--mask", n=3)
    config = SimulationConfig.build(**read_h5_metadata(out)["config"])
    assert config.chunk_size == 32 and config.detector.photons == 1e6 and config.detector.beamstop_radius == 3.0
    np.testing.assert_array_equal(
        read_h5(out)["modulus"], simulate_batch(3, config, seed=3, device="cpu").to_numpy()["modulus"]
    )


def test_simulate_reads_a_config_file(tmp_path):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("a: [4.0, 5.0]\nphase_span: [0.0, 0.0]\nchunk_size: 2\n")
    out = simulate(tmp_path, "--config", str(cfg), "--quiet")
    data = read_h5(out)
    assert not data["phase"].any()
    assert read_h5_metadata(out)["config"]["chunk_size"] == 2
    # a is drawn in [4, 5] and only ever shrunk to fit the grid.
    assert (data["params/a"] <= 5.0 + 1e-6).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "--n: the number of patterns must be >= 1"),
        (["--n", "2", "--seed", "-1"], "--seed must be >= 0"),
        (["--n", "2", "--photons", "-5"], "SimulationConfig.detector.photons"),
        (["--n", "2", "--device", "tpu"], "unknown device"),
        (["--n", "2", "--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_simulate_refuses_bad_arguments(tmp_path, capsys, args, message):
    out = tmp_path / "x.h5"
    assert main(["simulate", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_console_script_refuses_invalid_config_naming_the_field(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"e": [0.0, 1.0], "roundness": 3}))
    exe = Path(sys.executable).with_name("cdi-beamline")
    proc = subprocess.run(
        [str(exe), "simulate", "--n", "2", "--out", str(tmp_path / "x.h5"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "SimulationConfig.e.0" in proc.stderr and "SimulationConfig.roundness" in proc.stderr


def test_write_h5_round_trip_and_shape_errors(tmp_path):
    batch = simulate_batch(3, seed=9, device="cpu")
    path = write_h5(tmp_path / "b.h5", batch, SimulationConfig(), seed=9)
    data = read_h5(path)
    for name, arr in batch.to_numpy().items():
        np.testing.assert_array_equal(data[name], arr, err_msg=name)
    arrays = batch.to_numpy()
    arrays["phase"] = arrays["phase"][:, :16]
    with pytest.raises(ValueError, match=r"phase: expected shape \(3, 32, 32\)"):
        write_h5(tmp_path / "bad.h5", arrays, None)
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(CDIValueError, match="no such simulated data set"):
        read_h5(tmp_path / "missing.h5")


def test_gallery_writes_a_png(tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "img" / "gallery.png"
    assert main(["gallery", "--out", str(out), "--seed", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    img = matplotlib.image.imread(out)
    # 8 shapes in columns, 4 rows: a wide RGBA image that is not blank.
    assert img.shape[1] > 1.5 * img.shape[0] and img.shape[2] == 4
    assert img[..., :3].std() > 0.05
