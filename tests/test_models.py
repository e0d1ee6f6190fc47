"""The CNN: network shapes, input normalisation, the losses of eq. 4, configs and recipes."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest
import torch

from cdi_beamline.config import ConfigError, ModelConfig, TrainConfig, cpu_recipe, gpu_recipe, paper_recipe, tiny_recipe
from cdi_beamline.models import CDINet, cdi_loss, twin_aware_loss
from cdi_beamline.models.loss import fixed_phase, inversion, pearson_loss, predicted_modulus
from cdi_beamline.models.symmetry import dihedral, undo_dihedral
from cdi_beamline.models.training import lr_factor
from cdi_beamline.physics import simulate_batch


@pytest.fixture(scope="module")
def batch():
    return simulate_batch(8, seed=123, device="cpu")


def test_network_shapes_and_param_count():
    for width in (8, 32):
        net = CDINet(ModelConfig(base_channels=width)).eval()
        amp, phase = net(torch.rand(3, 64, 64))
        assert amp.shape == phase.shape == (3, 32, 32)
        assert (amp >= 0).all()
    # Width scales the parameters ~quadratically: the paper-size net is ~16x the 8-wide one.
    assert CDINet(ModelConfig(base_channels=32)).num_params() > 10 * CDINet(ModelConfig(base_channels=8)).num_params()


def test_network_refuses_wrong_shape():
    net = CDINet(ModelConfig(base_channels=4))
    with pytest.raises(ValueError, match=r"shape \(B, 64, 64\), got \(2, 32, 32\)"):
        net(torch.rand(2, 32, 32))


def test_amplitude_head_not_born_dead():
    # Seeded: with this seed a zero final bias leaves 3 % of the pixels alive (a dead ReLU).
    torch.manual_seed(0)
    net = CDINet(ModelConfig(base_channels=4)).eval()
    amp, _ = net(torch.rand(2, 64, 64))
    assert (amp > 0).float().mean() > 0.9


def test_output_invariant_to_photon_scale(batch):
    net = CDINet(ModelConfig(base_channels=8)).eval()
    with torch.no_grad():
        a1, p1 = net(batch.modulus)
        a2, p2 = net(batch.modulus * 3.7e4)
    torch.testing.assert_close(a1, a2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-5)


def test_losses_zero_for_perfect_prediction(batch):
    a, p, m = batch.amplitude, batch.phase, batch.modulus
    assert float(cdi_loss(a, p, a, p, m)) < 1e-6
    # The twin-aware loss wants the training convention: mean phase rotated to 0.
    assert float(twin_aware_loss(a, fixed_phase(a, p), a, p, m)) < 1e-5


def test_loss_grows_with_error(batch):
    a, p, m = batch.amplitude, batch.phase, batch.modulus
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(a.shape, generator=g)
    losses = [float(cdi_loss(a + s * noise * (a > 0), p + s * noise, a, p, m)) for s in (0.01, 0.1, 0.5)]
    assert losses[0] < losses[1] < losses[2]


def test_pearson_term_invariant_to_scale(batch):
    m = batch.modulus
    pred = predicted_modulus(batch.amplitude, batch.phase * 0.5, m.shape[-2:])
    base = pearson_loss(pred, m)
    assert (base > 1e-3).all()  # a wrong phase is seen
    torch.testing.assert_close(pearson_loss(pred * 250.0, m), base, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pearson_loss(pred, m * 1e-3), base, rtol=1e-4, atol=1e-6)


def test_twin_has_the_same_modulus_and_the_same_twin_aware_loss(batch):
    a, p, m = batch.amplitude, batch.phase, batch.modulus
    ta, tp = inversion(a), -inversion(p)  # the twin conj(o(-r)) in amplitude and phase
    torch.testing.assert_close(predicted_modulus(ta, tp, (64, 64)), m, atol=2e-5, rtol=1e-4)
    # A prediction off by a little, and its twin: equal twin-aware losses; the paper's loss
    # punishes the (equally valid) twin heavily.
    pa, pp = a * 0.9, fixed_phase(a, p) + 0.2 * (a > 0)
    l_pred = twin_aware_loss(pa, pp, a, p, m, reduction="none")["total"]
    l_twin = twin_aware_loss(inversion(pa), -inversion(pp), a, p, m, reduction="none")["total"]
    torch.testing.assert_close(l_pred, l_twin, rtol=1e-4, atol=1e-6)
    assert float(cdi_loss(inversion(a), -inversion(p), a, p, m)) > 0.1


def test_twin_aware_loss_blind_to_phase_wrap_and_global_phase(batch):
    a, p, m = batch.amplitude, batch.phase, batch.modulus
    q = fixed_phase(a, p)
    base = twin_aware_loss(a * 0.95, q, a, p, m)
    torch.testing.assert_close(twin_aware_loss(a * 0.95, q + 2 * math.pi, a, p, m), base, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(twin_aware_loss(a * 0.95, q, a, p + 1.3, m), base, rtol=1e-3, atol=1e-5)
    assert float(cdi_loss(a, q + 2 * math.pi, a, q, m)) > 1.0  # eq. 4 sees the seam


def test_dihedral_pairs_are_exact(batch):
    a, p, m = batch.amplitude, batch.phase, batch.modulus
    for k in range(8):
        torch.testing.assert_close(
            predicted_modulus(dihedral(a, k), dihedral(p, k), (64, 64)), dihedral(m, k), atol=2e-5, rtol=1e-4
        )
    assert not torch.equal(dihedral(m, 1), m)
    images = {dihedral(m[0], k).flatten().tolist().__repr__() for k in range(8)}
    assert len(images) == 8  # eight distinct symmetries
    for k in range(8):
        assert torch.equal(undo_dihedral(dihedral(m, k), k), m)


def test_lr_schedules():
    oc = TrainConfig(schedule="onecycle", onecycle_pct_start=0.1)
    assert lr_factor(oc, 0.0, 0) == pytest.approx(1 / 25)
    assert lr_factor(oc, 0.1, 0) == pytest.approx(1.0)
    assert lr_factor(oc, 1.0, 0) == pytest.approx(1e-3)
    paper = paper_recipe()
    assert lr_factor(paper, 0.5, 9.9) == 1.0
    assert lr_factor(paper, 0.5, 25) == pytest.approx(0.95**2)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="TrainConfig.batch_size"):
        TrainConfig.build(batch_size=0)
    with pytest.raises(ConfigError, match="TrainConfig.optimizer"):
        TrainConfig.build(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="ModelConfig.base_channel"):
        ModelConfig.build(base_channel=16)
    with pytest.raises(ConfigError, match="divisible by 2\\*\\*depth"):
        ModelConfig.build(input_size=60)


def test_paper_recipe_is_the_paper():
    r = paper_recipe()
    assert (r.optimizer, r.lr, r.step_gamma, r.step_epochs, r.epochs) == ("sgd", 0.01, 0.95, 10, 200)
    assert (r.dataset_size, r.val_fraction, r.loss, r.loss_weights) == (150_000, 0.05, "paper", (1.0, 1.0, 4.0))


def test_recipe_files_match_the_code():
    folder = resources.files("cdi_beamline.models").joinpath("recipes")
    for name, fn in (("paper", paper_recipe), ("gpu", gpu_recipe), ("cpu", cpu_recipe), ("tiny", tiny_recipe)):
        on_disk = TrainConfig.build(**json.loads(folder.joinpath(f"{name}.json").read_text()))
        assert on_disk == fn(), name
