"""The same refinement on CUDA as on the CPU, compiled as eager (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdi_beamline.config import ReconstructorConfig, RefineConfig
from cdi_beamline.devices import ApsRockingSource
from cdi_beamline.phasing import refine
from cdi_beamline.physics import simulate_batch
from cdi_beamline.pipeline import Reconstructor


@pytest.mark.gpu
def test_cuda_matches_cpu():
    frame = ApsRockingSource().frame(99)  # the shipped APS frame, flat-field corrected
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
@pytest.mark.parametrize("cuda_graphs", [True, False], ids=["graphs", "no-graphs"])
def test_cuda_compiled_matches_eager(masked, cuda_graphs):
    # The compiled iteration (inductor, CUDA graphs or not) against the eager one on CUDA: 60
    # iterations crossing shrink-wraps and HIO -> ER (see tests/test_phasing_fused.py for the
    # schedule's choice), batches of 4 and of 1 (the latency case).
    moduli = simulate_batch(4, seed=3, device="cpu").modulus.cuda()
    mask = None
    if masked:
        mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(1)) > 0.1
        mask[29:35, 29:35] = False
        mask = mask.cuda()
    cfg = RefineConfig(schedule="HIO(0.5)**10 * ER**50", shrinkwrap_start=10, shrinkwrap_every=25)
    eager_cfg = cfg.model_copy(update={"backend": "torch"})
    compiled_cfg = cfg.model_copy(update={"backend": "compiled", "cuda_graphs": cuda_graphs})
    assert refine(moduli[:1], config=cfg).backend == "torch"  # auto on CUDA
    for batch in (moduli, moduli[:1]):
        eager = refine(batch, mask=mask, config=eager_cfg, seed=2)
        compiled = refine(batch, mask=mask, config=compiled_cfg, seed=2)
        again = refine(batch, mask=mask, config=compiled_cfg, seed=2)  # graphs replayed
        assert compiled.backend == again.backend == "compiled"
        assert torch.equal(compiled.support, eager.support)
        assert (compiled.object - eager.object).abs().max() <= 5e-3 * eager.object.abs().max()
        assert torch.allclose(compiled.chi2_history, eager.chi2_history, rtol=1e-3, atol=2e-4)
        # the second run only replays the recorded graphs: same inputs, same results
        assert torch.allclose(again.object, compiled.object, rtol=1e-5, atol=1e-7)
        assert torch.allclose(again.chi2_history, compiled.chi2_history, rtol=1e-5, atol=1e-7)
