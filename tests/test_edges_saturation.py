"""Saturation is checked by default: an integer detector's dtype maximum marks saturated
pixels; a declared level overrides it, None turns it off; the setting is recorded."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from cdi_beamline import cli
from cdi_beamline.config import ReconstructorConfig
from cdi_beamline.frames import saturation_level, validate_frame

N = 64


def _counts(peak: float) -> np.ndarray:
    """A disc's diffraction pattern scaled to ``peak`` counts at its centre, (N, N) float64."""
    yy, xx = np.mgrid[:N, :N] - N // 2
    disc = (((yy / 8) ** 2 + (xx / 8) ** 2) <= 1).astype(np.complex128)
    intensity = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(disc)))) ** 2
    return intensity * (peak / intensity.max())


@pytest.mark.parametrize(
    "dtype, level", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.int32, 2**31 - 1), (np.uint32, 2**32 - 1)]
)
def test_dtype_level_is_the_integer_maximum(dtype, level):
    assert saturation_level(dtype, "dtype") == level
    assert saturation_level(dtype, 1000) == 1000.0 and saturation_level(dtype, None) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_floating_point_frames_have_no_dtype_level(dtype):
    assert saturation_level(dtype, "dtype") is None


def test_default_refuses_a_frame_at_its_dtype_maximum_only():
    default = ReconstructorConfig().saturation
    assert default == "dtype"
    frame = np.minimum(_counts(70_000), 65535).astype(np.uint16)  # the centre clipped, as the detector does
    assert validate_frame(frame, saturation=default) == (
        f"frame has {int((frame == 65535).sum())} pixel(s) at or above the saturation level 65535 (the uint16 maximum)"
    )
    assert validate_frame(_counts(60_000).astype(np.uint16), saturation=default) is None
    assert validate_frame(frame.astype(np.float32), saturation=default) is None  # floats: declare a level
    assert validate_frame(frame.astype(np.float32), saturation=65535.0) is not None
    assert validate_frame(frame, saturation=None) is None  # off


def test_simulated_and_shipped_demo_frames_pass_the_default():
    """The demo's sources (float frames) are not flagged by the default setting."""
    from cdi_beamline.devices import make_source

    default = ReconstructorConfig().saturation
    for source in (make_source("synthetic", n=8, seed=0), make_source("aps34idc")):
        flagged = [i for i, frame in enumerate(source) if validate_frame(frame, saturation=default)]
        assert flagged == [], (source, flagged)


def test_saturation_setting_is_validated_and_recorded():
    from cdi_beamline.config import ConfigError
    from cdi_beamline.pipeline import Reconstructor

    for bad in (0, -1.0, "auto"):
        with pytest.raises(ConfigError, match="saturation"):
            ReconstructorConfig.build(saturation=bad)
    for value in ("dtype", 1e5, None):
        config = ReconstructorConfig.build(saturation=value, init="random", iterations=10)
        recorded = Reconstructor(config, device="cpu").provenance()["config"]
        assert json.loads(json.dumps(recorded))["saturation"] == value


def test_reconstruct_skips_the_saturated_frame_of_a_uint16_stack(tmp_path, capsys):
    stack = np.stack([_counts(40_000), _counts(90_000), _counts(50_000)])
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.minimum(np.round(stack), 65535).astype(np.uint16)
    out = tmp_path / "o.h5"
    common = ["reconstruct", f"{path}:/data", "--out", str(out), "--device", "cpu", "--init", "random"]
    assert cli.main([*common, "--iterations", "20"]) == 0
    assert "frame 1: skipped: frame has" in capsys.readouterr().err
    with h5py.File(out) as f:
        assert f["frame_index"][()].tolist() == [0, 2]
        assert json.loads(f.attrs["config"])["saturation"] == "dtype"
        assert "65535 (the uint16 maximum)" in json.loads(f.attrs["skipped"])["1"]
    config = tmp_path / "off.json"
    config.write_text(json.dumps({"saturation": None}))
    assert cli.main([*common, "--iterations", "20", "--config", str(config)]) == 0
    with h5py.File(out) as f:
        assert f["frame_index"][()].tolist() == [0, 1, 2]
