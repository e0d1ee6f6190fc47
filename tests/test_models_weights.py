"""Shipped weights (registry, sha256, card), predict, initial_estimate and the CNN-seeded Reconstructor."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest
import torch

from cdi_beamline.errors import CDIRuntimeError, CDIValueError
from cdi_beamline.fourier import crop_centre, fourier_modulus
from cdi_beamline.models import SUPPORT_THRESHOLD, CDINetWeights, cdinet, initial_estimate, predict
from cdi_beamline.models.card import CARD_PATH, render_card
from cdi_beamline.models.loss import predicted_modulus
from cdi_beamline.models.weights import Weights, load_state_dict
from cdi_beamline.phasing import InitialEstimate, chi2
from cdi_beamline.physics import simulate_batch


@pytest.fixture(scope="module")
def net():
    return cdinet("DEFAULT")


@pytest.fixture(scope="module")
def batch():
    return simulate_batch(16, seed=4242, device="cpu")


def test_shipped_weights_match_their_card(net):
    w = CDINetWeights.DEFAULT
    meta = w.meta
    data = resources.files("cdi_beamline.models").joinpath("weights", meta["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == w.sha256 == meta["sha256"]
    assert len(data) == meta["file_bytes"] <= 16_000_000
    assert net.num_params() == meta["num_params"]
    assert not net.training
    assert net.weights_id == "CDINetWeights.CPU_FINETUNE_V2" and net.weights_sha256 == w.sha256
    for key in ("recipe", "generator", "training", "validation", "test_metrics", "input_normalisation", "notes"):
        assert meta[key], key
    assert meta["training"]["machine"]["device"]


def test_model_card_markdown_is_up_to_date():
    """MODEL_CARD.md is generated from the registry's meta, not edited by hand."""
    assert CARD_PATH.read_text() == render_card(CDINetWeights.DEFAULT)


def test_card_numbers_match_a_fresh_evaluation():
    """The card's CNN chi² (modulus; amplitude and phase after alignment) against a fresh
    evaluation on 128 patterns of the card's test seed: Gamma-fit means and medians within
    20 % (measured ratios 0.93-0.97, 2-core x86-64 CPU, 2026-12-02). A model 4x worse, or a
    card whose numbers came from another model, fails."""
    from cdi_beamline.models.evaluation import gamma_summary
    from cdi_beamline.phasing import align

    net = cdinet("DEFAULT")
    card = CDINetWeights.DEFAULT.meta["test_metrics"]
    data = simulate_batch(128, seed=card["seed"], device="cpu")
    amp, phase = predict(net, data.modulus)
    pred, truth = torch.polar(amp, phase).numpy(), torch.polar(data.amplitude, data.phase).numpy()
    pairs = [align(o, t, support=np.abs(t) > 0) for o, t in zip(pred, truth)]
    fresh = {
        "modulus": chi2(predicted_modulus(amp, phase, (64, 64)), data.modulus).numpy(),
        "amplitude": np.array([p.chi2_amplitude for p in pairs]),
        "phase": np.array([p.chi2_phase for p in pairs]),
    }
    for name, values in fresh.items():
        summary = gamma_summary(values)
        for stat, key in (("gamma_mean", f"cnn_chi2_{name}"), ("median", f"cnn_chi2_{name}_median")):
            ratio = summary[stat] / card[key]
            assert 0.8 < ratio < 1.2, (name, stat, summary[stat], card[key])


def test_tampered_or_missing_weights_are_refused():
    meta = CDINetWeights.DEFAULT.meta
    data = bytearray(resources.files("cdi_beamline.models").joinpath("weights", meta["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(CDIValueError, match="failed the integrity check"):
        load_state_dict(bytes(data), meta["sha256"], "tampered.pt")
    with pytest.raises(CDIRuntimeError, match="missing from cdi_beamline/models/weights"):
        Weights(file="nope.pt", card=CDINetWeights.DEFAULT.value.card, sha256="0" * 64).state_dict()
    with pytest.raises(CDIValueError, match="unknown weights 'NOPE'"):
        cdinet("NOPE")


def test_predict_shapes_and_conventions(net, batch):
    amp, phase = predict(net, batch.modulus)
    assert amp.shape == phase.shape == (16, 32, 32) and amp.dtype == phase.dtype == torch.float32
    assert (amp >= 0).all() and (phase >= -np.pi).all() and (phase < np.pi).all()
    # the training convention (fourier.fix_global_phase): amplitude-weighted mean phase ~ 0
    mean_phase = torch.angle(torch.polar(amp, phase).sum((-2, -1)))
    assert float(mean_phase.abs().max()) < 0.5, mean_phase  # measured max 0.18 (2-core x86-64 CPU, 2026-12-02)


def test_predict_checks_the_call_not_the_frames(net, batch):
    """Shape and dtype are the call's contract; whether a frame is usable is
    pipeline.validate_frame's decision (the Reconstructor flags it before the CNN)."""
    with pytest.raises(CDIValueError, match="shape"):
        predict(net, batch.modulus[0])
    with pytest.raises(CDIValueError, match="must be real"):
        predict(net, batch.modulus[:2].to(torch.complex64))


def test_initial_estimate(net, batch):
    m = batch.modulus[:4] * 1e3
    est = initial_estimate(net, m)
    assert isinstance(est, InitialEstimate)
    assert est.object.shape == est.support.shape == (4, 64, 64)
    assert est.object.dtype == torch.complex64 and est.support.dtype == torch.bool
    amp, phase = predict(net, m)
    expected = amp >= SUPPORT_THRESHOLD * amp.amax(dim=(-2, -1), keepdim=True)
    assert torch.equal(crop_centre(est.support, (32, 32)), expected)
    assert not est.support[:, :16].any() and not est.object[:, :, :16].abs().any()  # outside the 32×32 centre
    # Parseval: the object has the data's scale, the phase is the prediction's.
    torch.testing.assert_close(est.object.abs().square().sum((-2, -1)), m.square().sum((-2, -1)), rtol=1e-3, atol=0)
    inner = crop_centre(est.object, (32, 32))
    ang = torch.angle(inner * torch.exp(-1j * phase))[amp > 0.05]
    assert float(ang.abs().max()) < 1e-3
    tight = initial_estimate(net, m, threshold=0.5)
    assert tight.support.sum() < est.support.sum()
    with pytest.raises(ValueError, match="threshold must be in"):
        initial_estimate(net, m, threshold=1.5)
    with pytest.raises(ValueError, match=r"shape \(B, 64, 64\)"):
        initial_estimate(net, torch.rand(2, 128, 128))


def test_reconstructor_with_cnn_init(batch):
    from cdi_beamline.config import ReconstructorConfig
    from cdi_beamline.pipeline import Reconstructor

    frames = batch.modulus[:3].numpy() ** 2
    frames[1, 0, 0] = np.nan
    rec = Reconstructor(ReconstructorConfig.build(init="cnn", quantity="intensity", iterations=20), device="cpu")
    out = rec.reconstruct(frames, seed=0)
    assert out.status == ["ok", "bad", "ok"] and "NaN" in out.reason[1]
    # The refinement started from the CNN's object: its first chi² is the seed's (in its support).
    est = initial_estimate(cdinet("DEFAULT"), batch.modulus[[0, 2]])
    seed_chi2 = chi2(fourier_modulus(est.object * est.support), batch.modulus[[0, 2]])
    np.testing.assert_allclose(out.chi2_history[[0, 2], 0], seed_chi2.numpy(), rtol=1e-3, atol=1e-6)
    assert np.isfinite(out.chi2[[0, 2]]).all() and np.isnan(out.chi2[1])
    assert rec.provenance()["weights"]["sha256"] == CDINetWeights.DEFAULT.sha256


def test_reconstruct_cli_init_cnn(batch, tmp_path):
    import h5py

    from cdi_beamline.cli import main as cli

    frames = tmp_path / "frames.npy"
    np.save(frames, batch.modulus[:2].numpy() ** 2)
    out = tmp_path / "out.h5"
    assert (
        cli(["reconstruct", str(frames), "--out", str(out), "--init", "cnn", "--iterations", "60", "--device", "cpu"])
        == 0
    )
    with h5py.File(out) as f:
        assert "cnn" in f.attrs["init"]
        obj, hist, c = f["object"][()], f["chi2_history"][()], f["chi2"][()]
        assert CDINetWeights.DEFAULT.sha256 in f.attrs["provenance"]
    assert obj.shape == (2, 64, 64) and np.isfinite(c).all()
    assert (c <= hist[:, 0] + 1e-6).all()  # refinement did not make the CNN's seed worse
    recomputed = chi2(fourier_modulus(torch.from_numpy(obj)), batch.modulus[:2])
    np.testing.assert_allclose(recomputed.numpy(), c, rtol=0.05, atol=1e-4)


def test_cnn_seeded_refinement_of_the_shipped_aps_frame(tmp_path):
    """Fig. 7 on the frame shipped in the package (no ../shared needed): the CNN-seeded
    refinement reaches the issue's chi² <= 0.003, and the CNN alone is far worse."""
    from cdi_beamline.devices import make_source
    from cdi_beamline.models.evaluation import measured_frame

    res = measured_frame(cdinet(), make_source("aps34idc").frame(99), 1, tmp_path, "cpu")
    assert res["cnn_seeded_chi2"] <= 0.003 < res["cnn_chi2_modulus"]
    assert "shipped" in res["file"]


def test_predict_under_the_squares_symmetries(net, batch):
    from cdi_beamline.models.symmetry import dihedral, undo_dihedral

    m = batch.modulus
    plain = chi2(predicted_modulus(*predict(net, m), (64, 64)), m)
    # each symmetry's prediction, mapped back, is a fair estimate of the same object
    for k in range(1, 8):
        with torch.inference_mode():
            a, p = (undo_dihedral(t, k) for t in net(dihedral(m, k)))
        assert float(chi2(predicted_modulus(a, p, (64, 64)), m).mean()) < 1.5 * float(plain.mean()), k
    best = chi2(predicted_modulus(*predict(net, m, symmetries=8), (64, 64)), m)
    assert (best <= plain + 1e-6).all() and float(best.mean()) < 0.95 * float(plain.mean())
    est = initial_estimate(net, m[:2], symmetries=8)
    assert est.object.shape == (2, 64, 64)
    with pytest.raises(ValueError, match="symmetries must be 1 or 8"):
        predict(net, m, symmetries=4)
