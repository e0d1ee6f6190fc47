"""The paper's literal chi² forms and Figs. 3a and 4 of `cdi-beamline evaluate`."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from cdi_beamline.cli import main as cli
from cdi_beamline.config import tiny_recipe
from cdi_beamline.errors import CDIValueError
from cdi_beamline.models import cdinet, predict
from cdi_beamline.models.evaluation import chi2_eq5, chi2_phase_unit, phase_unit
from cdi_beamline.models.loss import predicted_modulus
from cdi_beamline.models.training import train
from cdi_beamline.phasing import align, chi2
from cdi_beamline.physics import simulate_batch
from cdi_beamline.plotting import plot_loss_curves, plot_predictions


def test_eq5_literal_is_the_printed_formula():
    p = np.array([[1.0, 2.0], [3.0, 4.0]])
    m = np.array([[1.0, 1.0], [2.0, 5.0]])
    # Σ(p − m)² = 0 + 1 + 1 + 1 = 3, Σ m² = 1 + 1 + 4 + 25 = 31
    assert chi2_eq5(p, m) == pytest.approx(3 / 31, rel=1e-15)
    batch = chi2_eq5(torch.tensor(np.stack([p, m])), torch.tensor(np.stack([m, m])))
    assert batch.shape == (2,) and batch == pytest.approx([3 / 31, 0.0])
    with pytest.raises(CDIValueError, match="shape"):
        chi2_eq5(p, m[:1])


def test_scale_invariant_chi2_ignores_scale_and_eq5_does_not():
    data = simulate_batch(4, seed=5, device="cpu")
    m = data.modulus.double()
    noisy = m * (1 + 0.05 * torch.randn(m.shape, generator=torch.Generator().manual_seed(0)))
    ours = chi2(noisy, m).numpy()
    for s in (0.1, 2.0, 7.0):
        assert chi2(s * noisy, m).numpy() == pytest.approx(ours, rel=1e-9)
    literal = chi2_eq5(noisy, m)
    assert np.all(literal >= ours - 1e-12)  # the optimal scale can only lower it
    assert chi2_eq5(2.0 * m, m) == pytest.approx(np.ones(4))  # Σ(2m − m)² / Σ m² = 1
    assert np.all(chi2_eq5(2.0 * noisy, m) > 10 * literal)


def test_phase_on_unit_interval_for_a_known_shift():
    rng = np.random.default_rng(0)
    support = np.zeros((8, 8), bool)
    support[2:6, 1:7] = True
    true = np.where(support, rng.uniform(-np.pi / 2, np.pi / 2, (8, 8)), 0.0)
    shift = 0.3
    pred = np.where(support, true + shift, rng.uniform(-np.pi, np.pi, (8, 8)))  # outside: ignored
    g = (true[support] + np.pi) / (2 * np.pi)
    expected = support.sum() * (shift / (2 * np.pi)) ** 2 / np.sum(g**2)
    assert chi2_phase_unit(pred, true, support) == pytest.approx(expected, rel=1e-12)
    assert phase_unit(true, support)[~support].max() == 0.0
    assert chi2_phase_unit(true, true, support) == 0.0
    # across the ±π seam the (0, 1) targets differ by almost a unit; the wrapped metric sees 0.02π
    near = np.where(support, 0.99 * np.pi, 0.0)
    far = np.where(support, -0.99 * np.pi, 0.0)
    assert chi2_phase_unit(far, near, support) == pytest.approx(0.99**2 / 0.995**2)
    wrapped = align(np.where(support, np.exp(1j * far), 0), np.where(support, np.exp(1j * near), 0), support)
    assert wrapped.chi2_phase < 1e-12  # the global phase absorbs it


def test_figure_functions_write_pngs(tmp_path):
    epochs = np.linspace(0.1, 3, 30)
    png = plot_loss_curves((epochs, 1 / epochs), (np.arange(1, 4.0), np.array([0.5, 0.4, 0.35])), tmp_path / "a.png")
    assert png.stat().st_size > 10_000
    d = simulate_batch(3, seed=2, device="cpu")
    png = plot_predictions(
        d.modulus.numpy() ** 2,
        d.amplitude.numpy(),
        0.9 * d.amplitude.numpy(),
        d.phase.numpy(),
        d.phase.numpy(),
        tmp_path / "b.png",
        chi2=np.array([0.1, 0.2, 0.3]),
    )
    assert png.stat().st_size > 10_000


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_eval")
    cfg = tiny_recipe().model_copy(update={"log_every": 5, "eval_every": 10, "num_threads": 1})
    train(cfg, out, device="cpu", progress=lambda s: None)
    return out


def _evaluate(weights, out, *extra):
    args = ["evaluate", "--n", "12", "--seed", "4", "--out", str(out), "--weights", str(weights)]
    args += ["--nns-size", "16", "--refine-patterns", "1", "--repeats", "1", "--measured", str(out / "absent.npy")]
    return cli([*args, "--device", "cpu", *extra])


def test_evaluate_draws_fig3a_fig4_and_reports_the_paper_forms(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _evaluate(tiny_run, out, "--examples", "4") == 0
    m = json.loads((out / "metrics.json").read_text())
    for png in ("eval_fig3a_loss.png", "eval_fig4_predictions.png"):
        assert (out / png).stat().st_size > 10_000
    history = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines()]
    val = [h["val"]["total"] for h in history if "val" in h]
    assert len(val) >= 2 and m["loss_curves"]["best_validation_loss"] == pytest.approx(min(val))
    assert m["predictions"]["patterns"] == 4
    # eq. 5 as printed, recomputed here on the same fresh patterns
    data = simulate_batch(12, seed=4, device="cpu")
    pm = predicted_modulus(*predict(cdinet(tiny_run), data.modulus), (64, 64))
    literal, ours = chi2_eq5(pm, data.modulus), chi2(pm, data.modulus).numpy()
    forms = m["cnn"]["paper_forms"]
    assert forms["chi2_modulus"]["mean"] == pytest.approx(literal.mean(), rel=1e-5)
    assert m["cnn"]["chi2_modulus"]["mean"] == pytest.approx(ours.mean(), rel=1e-5)
    assert np.all(literal >= ours - 1e-12)
    for part in ("chi2_amplitude", "chi2_phase"):
        assert forms[part]["n"] == 12 and math.isfinite(forms[part]["mean"])
    assert "paper's forms" in capsys.readouterr().out


def test_evaluate_without_history_says_so(tiny_run, tmp_path, capsys):
    weights = tmp_path / "weights_only"
    weights.mkdir()
    for name in ("model.pt", "meta.json"):
        shutil.copy(tiny_run / name, weights / name)
    out = tmp_path / "eval"
    assert _evaluate(weights, out, "--examples", "2") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "skipped" in m["loss_curves"] and not (out / "eval_fig3a_loss.png").exists()
    assert "Fig. 3a skipped" in capsys.readouterr().out
    assert _evaluate(weights, out, "--history", str(tmp_path / "none.jsonl")) == 2
    assert _evaluate(weights, out, "--examples", "0") == 2


def test_measured_frame_reports_eq5_as_printed_on_the_data_scale(tiny_run, tmp_path):
    from cdi_beamline.models.evaluation import measured_frame

    intensity = 1e4 * simulate_batch(1, seed=9, device="cpu").modulus[0].numpy() ** 2  # a photon scale
    res = measured_frame(cdinet(tiny_run), intensity, 2, tmp_path, "cpu")
    literal, ours = res["paper_forms"]["cnn_seeded_chi2"], res["cnn_seeded_chi2"]
    # refined objects carry the data's scale: the printed form is close to the scale-fitted one, never below
    assert ours - 1e-6 <= literal < 1.5 * ours + 1e-4
    assert res["paper_forms"]["random_chi2_median"] >= res["random_chi2_median"] - 1e-6
    assert (tmp_path / "eval_fig7_aps.png").stat().st_size > 10_000


def test_shipping_keeps_the_training_history_for_fig3a(tiny_run, tmp_path, monkeypatch):
    """``card.ship`` copies history.jsonl beside the weights, where ``Weights.history`` finds it."""
    from cdi_beamline.models import card
    from cdi_beamline.models.weights import HISTORY_SUFFIX, Weights

    package = tmp_path / "models"
    package.mkdir()
    monkeypatch.setattr(card, "PACKAGE_DIR", package)
    shipped = card.ship(tiny_run, "cdinet_tiny_test")
    weights_dir = package / "weights"
    history = weights_dir / f"cdinet_tiny_test{HISTORY_SUFFIX}"
    assert history.read_bytes() == (tiny_run / "history.jsonl").read_bytes()
    monkeypatch.setattr(Weights, "_resource", lambda self, name: weights_dir / name)
    found = Weights(file=shipped["file"], card="cdinet_tiny_test.json", sha256=shipped["sha256"]).history()
    assert found == history
    assert Weights(file="absent.pt", card="absent.json", sha256="0").history() is None
