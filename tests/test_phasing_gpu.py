"""The same refinement on CUDA as on the CPU, fused as eager (skipped without CUDA)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from cdi_beamline.config import ReconstructorConfig, RefineConfig
from cdi_beamline.phasing import refine
from cdi_beamline.physics import simulate_batch
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


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True], ids=["all-measured", "masked"])
def test_cuda_fused_matches_eager(masked):
    # The compiled iteration (inductor + CUDA graphs) against the eager one on CUDA: 60
    # iterations crossing shrink-wraps and HIO -> ER (see tests/test_phasing_fused.py for the
    # schedule's choice), batches of 4 and of 1 (the latency case).
    R = importlib.import_module("cdi_beamline.phasing.refine")
    moduli = simulate_batch(4, seed=3, device="cpu").modulus.cuda()
    mask = None
    if masked:
        mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(1)) > 0.1
        mask[29:35, 29:35] = False
        mask = mask.cuda()
    cfg = RefineConfig(schedule="HIO(0.5)**10 * ER**50", shrinkwrap_start=10, shrinkwrap_every=25)
    for batch in (moduli, moduli[:1]):
        eager = refine(batch, mask=mask, config=cfg.model_copy(update={"fused": "off"}), seed=2)
        fused = refine(batch, mask=mask, config=cfg.model_copy(update={"fused": "auto"}), seed=2)
        again = refine(batch, mask=mask, config=cfg.model_copy(update={"fused": "on"}), seed=2)  # graphs replayed
        assert R._fused_failure is None
        assert torch.equal(fused.support, eager.support)
        assert (fused.object - eager.object).abs().max() <= 5e-3 * eager.object.abs().max()
        assert torch.allclose(fused.chi2_history, eager.chi2_history, rtol=1e-3, atol=2e-4)
        # the second run only replays the recorded graphs: same inputs, same results
        assert torch.allclose(again.object, fused.object, rtol=1e-5, atol=1e-7)
        assert torch.allclose(again.chi2_history, fused.chi2_history, rtol=1e-5, atol=1e-7)
