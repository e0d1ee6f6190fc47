"""Training on the CPU: the loss falls, outputs are complete, resume continues exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cdi_beamline.cli import main as cli
from cdi_beamline.config import tiny_recipe
from cdi_beamline.errors import CDIValueError
from cdi_beamline.models import cdinet
from cdi_beamline.models.training import file_sha256, train


def _history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    cfg = tiny_recipe().model_copy(update={"log_every": 5, "num_threads": 1})
    meta = train(cfg, out, device="cpu", progress=lambda s: None)
    return cfg, out, meta


def test_tiny_model_loss_falls(tiny_run):
    _, out, _ = tiny_run
    losses = [h["loss"] for h in _history(out) if "loss" in h]
    assert len(losses) == 8
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.9 * first, losses


def test_training_outputs(tiny_run):
    cfg, out, meta = tiny_run
    for name in ("model.pt", "checkpoint.pt", "meta.json", "history.jsonl"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["sha256"] == file_sha256(out / "model.pt") == meta["sha256"]
    assert on_disk["steps"] == 40 and on_disk["samples_seen"] == 640
    assert on_disk["recipe"]["name"] == "tiny" and on_disk["generator"]["nz"] > 0
    assert {"total", "chi2_modulus", "amplitude", "object", "modulus"} <= set(on_disk["validation"])
    net = cdinet(out)  # a training folder loads like shipped weights (sha256-checked)
    assert not net.training and net.num_params() == on_disk["num_params"]


def test_resume_continues_exactly(tiny_run, tmp_path):
    cfg, out_full, _ = tiny_run
    out = tmp_path / "sliced"
    train(cfg, out, device="cpu", progress=lambda s: None, stop_at_step=17)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 17
    train(cfg, out, device="cpu", progress=lambda s: None, resume=out / "checkpoint.pt")
    a = torch.load(out_full / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_refuses_another_recipe(tiny_run, tmp_path):
    cfg, out, _ = tiny_run
    with pytest.raises(ValueError, match="different training config"):
        train(cfg.model_copy(update={"lr": 0.1}), tmp_path, device="cpu", resume=out / "checkpoint.pt")


class _Payload:
    """Unpickling this creates the file ``marker``: what a hostile checkpoint could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_refuses_a_pickle_payload_unread(tiny_run, tmp_path):
    cfg, out, _ = tiny_run
    marker = tmp_path / "ran"
    hostile = tmp_path / "checkpoint.pt"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "best": _Payload(marker)}, hostile)  # a real checkpoint, one object added
    with pytest.raises(CDIValueError, match="not a checkpoint written by"):
        train(cfg, tmp_path / "again", device="cpu", progress=lambda s: None, resume=hostile)
    assert not marker.exists()


def test_train_cli_refuses_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batch_size": -3, "optimiser": "adam"}))
    assert cli(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert "TrainConfig.batch_size" in err and "TrainConfig.optimiser" in err
    missing = ["train", "--recipe", "tiny", "--out", str(tmp_path / "o"), "--init-weights", "NOPE"]
    assert cli(missing) == 2
    assert "unknown weights 'NOPE'" in capsys.readouterr().err


def test_evaluate_cli_small(tiny_run, tmp_path, capsys):
    _, run_dir, _ = tiny_run
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--n",
        "24",
        "--seed",
        "3",
        "--out",
        str(out),
        "--weights",
        str(run_dir),
        "--nns-size",
        "64",
        "--refine-patterns",
        "2",
        "--repeats",
        "2",
        "--measured",
        str(tmp_path / "absent.npy"),
        "--device",
        "cpu",
    ]
    assert cli(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    for part in ("chi2_modulus", "chi2_amplitude", "chi2_phase"):
        s = m["cnn"][part]
        assert s["n"] == 24 and s["median"] <= s["p90"]
        # the Gamma fit describes the values it was fitted to
        assert 0.5 < s["gamma_mean"] / s["mean"] < 2, (part, s)
    # The reported CNN chi² is that of the evaluated weights on the documented patterns
    # (fresh simulation with --seed): recomputed independently here.
    from cdi_beamline.models import predict
    from cdi_beamline.models.loss import predicted_modulus
    from cdi_beamline.phasing import chi2
    from cdi_beamline.physics import simulate_batch

    data = simulate_batch(24, seed=3, device="cpu")
    per_pattern = chi2(predicted_modulus(*predict(cdinet(run_dir), data.modulus), (64, 64)), data.modulus).numpy()
    assert abs(m["cnn"]["chi2_modulus"]["mean"] - per_pattern.mean()) < 1e-5 * per_pattern.mean()
    nns = m["nns"]
    assert nns["index_size"] == 64 and nns["nns_chi2_modulus"]["n"] == 24
    assert abs(nns["ratio_modulus_nns_over_cnn"] - nns["nns_chi2_modulus"]["mean"] / per_pattern.mean()) < 1e-6
    starts = {k: v for k, v in m["refinement"].items() if isinstance(v, dict)}
    assert set(starts) == {"random + rectangle", "random + CNN support", "CNN phase + support", "NNS"}
    assert starts["random + rectangle"]["runs"] == 4 and starts["CNN phase + support"]["runs"] == 2
    # the CNN-seeded refinement starts at the CNN's own chi² (of the first 2 patterns) ...
    assert abs(starts["CNN phase + support"]["start_mean"] - per_pattern[:2].mean()) < 1e-3 * per_pattern[:2].mean()
    # ... and every refinement ends below where it started
    for name, v in starts.items():
        assert v["final_mean"] < v["start_mean"], (name, v)
    assert "not found" in m["measured"]["skipped"]
    for png in ("eval_fig3_chi2.png", "eval_nns.png", "eval_fig5f_refinement.png"):
        assert (out / png).stat().st_size > 10_000
    assert "skipped" in capsys.readouterr().out
    assert cli(["evaluate", "--n", "0", "--out", str(out)]) == 2
    assert cli(["evaluate", "--seed", str(10**9), "--out", str(out), "--weights", str(run_dir)]) == 2


def test_fine_tune_starts_from_given_weights(tiny_run, tmp_path):
    cfg, out, meta = tiny_run
    ft = cfg.model_copy(update={"init_weights": str(out), "seed": 1, "epochs": 0.25})
    first_val = []
    ft_meta = train(ft, tmp_path / "ft", device="cpu", progress=first_val.append)
    assert ft_meta["init_weights"] == {"id": str((out / "model.pt").resolve()), "sha256": meta["sha256"]}
    assert "starting from weights" in first_val[0]
    # 10 more steps from the trained weights validate near them, far below a random init
    scratch = train(
        cfg.model_copy(update={"epochs": 0.25}), tmp_path / "scratch", device="cpu", progress=lambda s: None
    )
    assert ft_meta["validation"]["total"] < scratch["validation"]["total"]


def test_fine_tune_refuses_another_architecture(tiny_run, tmp_path):
    cfg, out, _ = tiny_run
    wider = cfg.model.model_copy(update={"base_channels": 16})
    with pytest.raises(ValueError, match="same architecture"):
        train(cfg.model_copy(update={"init_weights": str(out), "model": wider}), tmp_path, device="cpu")
    with pytest.raises(CDIValueError, match="unknown weights"):
        train(cfg.model_copy(update={"init_weights": "NO_SUCH_WEIGHTS"}), tmp_path, device="cpu")


@pytest.mark.parametrize("name", ["paper", "gpu", "cpu", "cpu_finetune", "tiny"])
def test_recipe_files_match_the_recipes(name):
    """The JSON recipes users pass to `train --config` are the documented recipe functions."""
    from importlib import resources

    from cdi_beamline.config import TrainConfig, load_config
    from cdi_beamline.config import model as recipes

    with resources.as_file(resources.files("cdi_beamline.models").joinpath("recipes", f"{name}.json")) as path:
        assert load_config(TrainConfig, path) == getattr(recipes, f"{name}_recipe")()
