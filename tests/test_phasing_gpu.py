"""The same refinement on CUDA as on the CPU (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

from cdi_beamline.config import ReconstructorConfig
from cdi_beamline.pipeline import Reconstructor


@pytest.mark.gpu
def test_cuda_matches_cpu(shared_data):
    frame = np.load(shared_data / "aps34idc_S0054" / "aps34idc_S0054_frame099_crop64_wfcorr.npy")
    frames = np.stack([frame] * 4)
    cfg = ReconstructorConfig.build(iterations=200)
    cpu = Reconstructor(cfg, device="cpu").reconstruct(frames, seed=1)
    gpu = Reconstructor(cfg, device="cuda").reconstruct(frames, seed=1)
    assert gpu.status == ["ok"] * 4
    # Same seeds, same start: the chi² histories agree until round-off grows (chaotic HIO).
    np.testing.assert_allclose(gpu.chi2_history[:, :20], cpu.chi2_history[:, :20], rtol=1e-3, atol=1e-5)
    assert np.median(gpu.chi2) < 0.01
