"""The paper's evaluation of the CNN (Figs. 3, 4, 5f, 7 and the NNS comparison) on fresh patterns.

Every part returns a JSON-able dict and writes one PNG; :func:`evaluate` runs them all
and writes ``metrics.json``. chi² definitions are the phasing engine's: modulus chi² is
eq. 5 under the optimal scale (:func:`cdi_beamline.phasing.chi2`); amplitude and phase
chi² are measured after :func:`cdi_beamline.phasing.align` (translation, global phase,
twin) — amplitude ``Σ(s|o|−|o_g|)²/Σ|o_g|²``, phase ``mean over the true support of
(Δφ/π)²``. Beside them, the paper's literal forms (:data:`PAPER_FORMS`): eq. 5 without a
scale (:func:`chi2_eq5`), the amplitude without a scale, and the phase scaled to (0, 1)
as the paper's training targets (:func:`chi2_phase_unit`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CDIValueError
from ..fourier import embed_centre, fourier_modulus
from ..plotting import (
    plot_chi2_histograms,
    plot_loss_curves,
    plot_measured_frame,
    plot_nns_comparison,
    plot_predictions,
    plot_refinement_curves,
)
from .inference import SUPPORT_THRESHOLD, initial_estimate, predict
from .loss import predicted_modulus
from .network import CDINet

__all__ = [
    "evaluate",
    "cnn_accuracy",
    "nns_comparison",
    "refinement_curves",
    "measured_frame",
    "gamma_summary",
    "chi2_eq5",
    "phase_unit",
    "chi2_phase_unit",
    "loss_curves",
    "prediction_examples",
    "PAPER",
    "PAPER_FORMS",
]

log = logging.getLogger(__name__)

PAPER = {
    "cnn_chi2_modulus": 0.019,
    "cnn_chi2_amplitude": 0.005,
    "cnn_chi2_phase": 0.029,
    "nns_chi2_modulus": 0.08,
    "cnn_chi2_modulus_vs_nns": 0.02,
    "aps_refined_chi2": 0.002,
    "aps_cnn_chi2": 0.7,
    "cnn_ms_per_pattern": 0.5,
}
"""Numbers of Wu et al. (2021) that the evaluation is compared with."""

PAPER_FORMS = {
    "chi2_modulus": "eq. 5 as printed: Σ(|FFT o_p| − √I)² / Σ I, no scale",
    "chi2_amplitude": "Σ(|o_p| − |o_g|)² / Σ|o_g|² after alignment (translation, twin, global phase), no scale",
    "chi2_phase": "Σ(φ'_p − φ'_g)² / Σ φ'_g² with φ' = (φ + π)/2π on the true support, 0 outside "
    "(the paper's targets 'shifted and scaled to (0, 1)'), after alignment",
}
"""The paper's literal chi² forms, as :func:`cnn_accuracy` measures them (``paper_forms``)."""


def chi2_eq5(pred_modulus, modulus) -> np.ndarray:
    """Eq. 5 as printed, ``Σ(√I_p − √I_g)² / Σ I_g`` per frame: no scale fitted.

    Parameters
    ----------
    pred_modulus, modulus : (B, H, W) or (H, W) real, numpy or torch (√I_p and √I_g)

    Returns
    -------
    (B,) float64 (a 0-d array for 2-D input). Unlike :func:`cdi_beamline.phasing.chi2`
    it changes with the scale of either argument: the prediction must carry the
    pattern's own scale (simulated patterns do; a CNN's output on measured photons does not).
    """
    p, m = _float64(pred_modulus), _float64(modulus)
    if p.shape != m.shape:
        raise CDIValueError(f"chi2_eq5: model modulus shape {p.shape} != data shape {m.shape}")
    return ((p - m) ** 2).sum((-2, -1)) / np.maximum((m * m).sum((-2, -1)), 1e-300)


def phase_unit(phase, support) -> np.ndarray:
    """The paper's phase targets: ``(φ + π) / 2π`` in [0, 1) on ``support``, 0 outside.

    phase : (..., h, w) radians in (−π, π]; support : (..., h, w) bool
    """
    return np.where(_float64(support) > 0, (_float64(phase) + np.pi) / (2 * np.pi), 0.0)


def chi2_phase_unit(phase, true_phase, support) -> np.ndarray:
    """Eq. 5's form on the (0, 1) phase: ``Σ(φ'_p − φ'_g)² / Σ φ'_g²`` per object.

    phase, true_phase : (..., h, w) radians wrapped to (−π, π], the prediction aligned onto
    the truth; support : (..., h, w) bool, the true support. Returns (...) float64. A
    phase that wraps (−π ↔ π) counts as a full unit of error, as it would for the paper's
    (0, 1) targets; :func:`cdi_beamline.phasing.align`'s phase chi² wraps the difference.
    """
    p, g = phase_unit(phase, support), phase_unit(true_phase, support)
    return ((p - g) ** 2).sum((-2, -1)) / np.maximum((g * g).sum((-2, -1)), 1e-300)


def _float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def gamma_summary(values: np.ndarray) -> dict[str, float]:
    """Mean of a Gamma fit (location 0, as the paper's Fig. 3) and plain statistics."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    shape, _, scale = stats.gamma.fit(np.clip(v, 1e-12, None), floc=0.0)
    return {
        "gamma_shape": float(shape),
        "gamma_scale": float(scale),
        "gamma_mean": float(shape * scale),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p90": float(np.quantile(v, 0.9)),
        "n": int(v.size),
    }


def _aligned_chi2(objects: np.ndarray, truths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amplitude and phase chi² (B,) after alignment, and the aligned objects (B, h, w) complex.

    objects, truths : (B, h, w) complex
    """
    from ..phasing import align

    amp, ph = np.empty(len(objects)), np.empty(len(objects))
    aligned = np.empty(objects.shape, dtype=np.complex64)
    for i, (o, t) in enumerate(zip(objects, truths)):
        pair = align(o, t, support=np.abs(t) > 0)
        amp[i], ph[i], aligned[i] = pair.chi2_amplitude, pair.chi2_phase, pair.recon
    return amp, ph, aligned


def _paper_forms(pred_modulus, modulus, aligned: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """The chi² of :data:`PAPER_FORMS`, (B,) each; ``aligned``, ``truth`` (B, h, w) complex."""
    true_amp = np.abs(truth).astype(np.float64)
    amp = ((np.abs(aligned) - true_amp) ** 2).sum((-2, -1)) / np.maximum((true_amp**2).sum((-2, -1)), 1e-300)
    return {
        "chi2_modulus": chi2_eq5(pred_modulus, modulus),
        "chi2_amplitude": amp,
        "chi2_phase": chi2_phase_unit(np.angle(aligned), np.angle(truth), true_amp > 0),
    }


@torch.no_grad()
def _run_cnn(net: CDINet, modulus: torch.Tensor, batch: int = 256, symmetries: int = 1):
    """Amplitude, phase (B, 32, 32) and seconds per pattern (after one warm-up batch)."""
    predict(net, modulus[: min(batch, len(modulus))], symmetries)
    t0 = time.perf_counter()
    parts = [predict(net, modulus[i : i + batch], symmetries) for i in range(0, len(modulus), batch)]
    dt = (time.perf_counter() - t0) / len(modulus)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), dt


def cnn_accuracy(net: CDINet, data, out: Path) -> dict[str, Any]:
    """Fig. 3: chi² histograms (modulus, amplitude, phase) of the CNN alone with Gamma fits."""
    from scipy import stats

    from ..phasing import chi2

    dev = next(net.parameters()).device
    m = data.modulus.to(dev)
    amp, phase, dt = _run_cnn(net, m)
    pred_modulus = predicted_modulus(amp, phase, m.shape[-2:])
    c_mod = chi2(pred_modulus, m).cpu().numpy()
    pred = torch.polar(amp, phase).cpu().numpy()
    truth = torch.polar(data.amplitude, data.phase).cpu().numpy()
    c_amp, c_ph, aligned = _aligned_chi2(pred, truth)
    literal = _paper_forms(pred_modulus, m, aligned, truth)
    res = {
        "chi2_modulus": gamma_summary(c_mod),
        "chi2_amplitude": gamma_summary(c_amp),
        "chi2_phase": gamma_summary(c_ph),
        "paper_forms": {name: gamma_summary(v) for name, v in literal.items()},
        "seconds_per_pattern": dt,
        "device": str(dev),
    }
    # test-time augmentation: the best fit of the 8 symmetries of the square (predict(symmetries=8))
    amp8, phase8, dt8 = _run_cnn(net, m, symmetries=8)
    c_amp8, c_ph8, _ = _aligned_chi2(torch.polar(amp8, phase8).cpu().numpy(), truth)
    res["symmetries8"] = {
        "chi2_modulus": gamma_summary(chi2(predicted_modulus(amp8, phase8, m.shape[-2:]), m).cpu().numpy()),
        "chi2_amplitude": gamma_summary(c_amp8),
        "chi2_phase": gamma_summary(c_ph8),
        "seconds_per_pattern": dt8,
    }
    values = {"modulus": c_mod, "amplitude": c_amp, "phase": c_ph}
    fits, labels = {}, {}
    for name, v in values.items():
        summary = res[f"chi2_{name}"]
        x = np.linspace(np.quantile(v, 0.99) / 400, np.quantile(v, 0.99), 300)
        fits[name] = (x, stats.gamma.pdf(x, summary["gamma_shape"], scale=summary["gamma_scale"]))
        labels[name] = f"Gamma fit, mean {summary['gamma_mean']:.4f}"
    plot_chi2_histograms(
        values,
        fits,
        labels,
        {name: PAPER[f"cnn_chi2_{name}"] for name in values},
        out / "eval_fig3_chi2.png",
        title="CNN alone on fresh simulated patterns (cf. Wu et al. 2021, Fig. 3b–d)",
    )
    res["_aligned"], res["_chi2_modulus"] = aligned, c_mod
    return res


def prediction_examples(data, cnn: dict, k: int, out: Path) -> dict[str, Any]:
    """Fig. 4: the first ``k`` test patterns, true and predicted amplitude and phase.

    ``cnn`` is :func:`cnn_accuracy`'s result (its aligned predictions and modulus chi²).
    """
    aligned, c_mod = cnn["_aligned"][:k], cnn["_chi2_modulus"][:k]
    plot_predictions(
        data.modulus[:k].numpy() ** 2,
        data.amplitude[:k].numpy(),
        np.abs(aligned),
        data.phase[:k].numpy(),
        np.angle(aligned),
        out / "eval_fig4_predictions.png",
        chi2=c_mod,
        title="CNN prediction vs truth on fresh simulated patterns, aligned (cf. Wu et al. 2021, Fig. 4)",
    )
    return {"patterns": int(len(aligned)), "chi2_modulus": [float(c) for c in c_mod]}


def loss_curves(history: str | Path, out: Path) -> dict[str, Any]:
    """Fig. 3a: training and validation loss against epoch from a training run's ``history.jsonl``.

    The log lines carry ``step``, ``epoch`` and ``loss``; the validation lines ``step`` and
    ``val`` (whose ``total`` is the loss), placed at the epoch of their step.
    """
    rows = [json.loads(line) for line in Path(history).read_text().splitlines() if line.strip()]
    logs = [r for r in rows if "loss" in r and "epoch" in r]
    vals = [r for r in rows if "val" in r]
    if not logs or not vals:
        raise CDIValueError(f"{history}: no training loss or no validation lines to draw")
    epochs_per_step = logs[-1]["epoch"] / logs[-1]["step"]
    train_x, train_y = np.array([r["epoch"] for r in logs]), np.array([r["loss"] for r in logs])
    val_x = np.array([r["step"] * epochs_per_step for r in vals])
    val_y = np.array([r["val"]["total"] for r in vals])
    plot_loss_curves(
        (train_x, train_y),
        (val_x, val_y),
        out / "eval_fig3a_loss.png",
        title=f"Training and validation loss (cf. Wu et al. 2021, Fig. 3a): {Path(history).parent.name}",
    )
    return {
        "history": str(history),
        "epochs": float(train_x[-1]),
        "final_train_loss": float(train_y[-1]),
        "best_validation_loss": float(val_y.min()),
        "final_validation_loss": float(val_y[-1]),
    }


def _nns_index(nns_index: str | Path | None, size: int, seed: int, device):
    from ..phasing import NearestNeighbourIndex
    from ..physics import simulate_batch

    if nns_index is not None:
        return NearestNeighbourIndex.from_h5(nns_index, device=device), f"{nns_index}"
    ref = simulate_batch(size, seed=seed, device="cpu")
    idx = NearestNeighbourIndex(ref.modulus, ref.amplitude, ref.phase, ref.support, device=device)
    return idx, f"{size} simulated training-like patterns (seed {seed})"


def nns_comparison(cnn: dict, data, index, index_name: str, out: Path) -> dict[str, Any]:
    """CNN against nearest-neighbour search over a training-like set: chi² and time per pattern."""
    q = data.modulus
    index.query(q[:8])
    t0 = time.perf_counter()
    match = index.query(q)
    dt = (time.perf_counter() - t0) / len(q)
    truth = torch.polar(data.amplitude, data.phase).numpy()
    obj = (torch.polar(match.amplitude, match.phase) * match.support).numpy()
    n_amp, n_ph, _ = _aligned_chi2(obj, truth)
    nns_mod = match.chi2.numpy()
    res = {
        "index": index_name,
        "index_size": len(index),
        "nns_chi2_modulus": gamma_summary(nns_mod),
        "nns_chi2_amplitude": gamma_summary(n_amp),
        "nns_chi2_phase": gamma_summary(n_ph),
        "nns_seconds_per_pattern": dt,
        "cnn_seconds_per_pattern": cnn["seconds_per_pattern"],
        "ratio_modulus_nns_over_cnn": gamma_summary(nns_mod)["mean"] / cnn["chi2_modulus"]["mean"],
    }
    plot_nns_comparison(cnn["_chi2_modulus"], nns_mod, len(index), out / "eval_nns.png")
    res["_match"] = match
    return res


def refinement_curves(net: CDINet, data, match, k: int, repeats: int, seed: int, out: Path, device) -> dict[str, Any]:
    """Fig. 5(f): chi² against iteration for four initialisations, over ``k`` patterns.

    (i) random phase + rectangular support and (ii) random phase + CNN support are run
    ``repeats`` times per pattern with different seeds; (iii) CNN object + support and
    (iv) the NNS match's object + support once. Mean ± sd over patterns and repeats.
    """
    from ..phasing import InitialEstimate, refine

    m = data.modulus[:k].to(device)
    H, W = m.shape[-2:]
    cnn = initial_estimate(net, m)
    nns_obj = embed_centre(torch.polar(match.amplitude[:k], match.phase[:k]) * match.support[:k], (H, W)).to(device)
    nns_sup = embed_centre(match.support[:k], (H, W)).to(device)
    rep = lambda t: t.repeat(repeats, *([1] * (t.ndim - 1)))  # noqa: E731
    runs = {
        "random + rectangle": (rep(m), None),
        "random + CNN support": (rep(m), InitialEstimate(object=None, support=rep(cnn.support))),
        "CNN phase + support": (m, cnn),
        "NNS": (m, InitialEstimate(object=nns_obj, support=nns_sup)),
    }
    res: dict[str, Any] = {"patterns": k, "repeats": repeats}
    histories = {}
    for name, (mod, init) in runs.items():
        r = refine(mod, init=init, seed=seed)
        hist = torch.cat([r.chi2_history, r.chi2[:, None]], 1).double().cpu().numpy()
        final = r.chi2.double().cpu().numpy()
        res[name] = {
            "start_mean": float(hist[:, 0].mean()),
            "final_mean": float(final.mean()),
            "final_median": float(np.median(final)),
            "final_worst_decile": float(np.quantile(final, 0.9)),
            "runs": int(len(final)),
        }
        histories[name] = hist
    plot_refinement_curves(
        histories,
        out / "eval_fig5f_refinement.png",
        title=f"ER/HIO + shrink-wrap from four starts ({k} patterns, {repeats} random repeats)",
    )
    return res


def measured_frame(net: CDINet, path: Path | np.ndarray, seeds: int, out: Path, device) -> dict[str, Any]:
    """Fig. 7: the measured APS 34-ID-C frame (a .npy path or the (64, 64) intensity itself)
    — CNN alone, then CNN-seeded refinement (deterministic), beside ``seeds`` random-start
    refinements for comparison."""
    from ..phasing import chi2, refine, unwrap

    intensity = (np.asarray(path) if isinstance(path, np.ndarray) else np.load(path)).astype(np.float32)
    source = (
        "APS 34-ID-C frame 99, flat-field corrected (shipped with cdi_beamline.devices)"
        if isinstance(path, np.ndarray)
        else str(path)
    )
    m = torch.from_numpy(np.sqrt(np.clip(intensity, 0, None)))[None].to(device)
    amp, phase = predict(net, m)
    c_cnn = float(chi2(predicted_modulus(amp, phase, m.shape[-2:]), m)[0])
    est = initial_estimate(net, m)
    seeded = refine(m, init=est, seed=0)  # deterministic: the CNN's object and support
    random = refine(m.repeat(seeds, 1, 1), seed=0)  # random phases + rectangle, ``seeds`` restarts
    # eq. 5 as printed needs the photon scale: refined objects carry it, the CNN's (max ~1) does not
    eq5_seeded = chi2_eq5(fourier_modulus(seeded.object), m)
    eq5_random = chi2_eq5(fourier_modulus(random.object), m.expand(seeds, -1, -1))
    res = {
        "file": source,
        "cnn_chi2_modulus": c_cnn,
        "cnn_seeded_chi2": float(seeded.chi2[0]),
        "random_chi2": random.chi2.double().cpu().tolist(),
        "random_chi2_median": float(random.chi2.double().median()),
        "paper_forms": {"cnn_seeded_chi2": float(eq5_seeded[0]), "random_chi2_median": float(np.median(eq5_random))},
    }
    obj = seeded.object[0].cpu().numpy()
    sup = seeded.support[0].cpu().numpy()
    plot_measured_frame(
        intensity,
        amp[0].cpu().numpy(),
        phase[0].cpu().numpy(),
        (amp[0] >= SUPPORT_THRESHOLD * amp[0].max()).cpu().numpy(),
        est.support[0].cpu().numpy(),
        np.abs(obj),
        unwrap(np.angle(obj), sup),
        sup,
        c_cnn,
        float(seeded.chi2[0]),
        out / "eval_fig7_aps.png",
        title="APS 34-ID-C, Au crystal, frame 99 flat-field corrected (cf. Wu et al. 2021, Fig. 7)",
    )
    return res


def evaluate(
    net: CDINet,
    *,
    n: int,
    seed: int,
    out: str | Path,
    nns_index: str | Path | None,
    nns_size: int,
    refine_patterns: int,
    repeats: int,
    measured: str | Path | np.ndarray | None,
    device: Any,
    examples: int,
    history: str | Path | None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (a) Figs. 3b–d and 4, (b) CNN vs NNS, (c) Fig. 5f, (d) Fig. 7, and Fig. 3a when a
    training history is given; write PNGs + ``metrics.json``.

    Parameters
    ----------
    net : CDINet in eval mode, on ``device``
    n : fresh test patterns (seed ``seed``; never a training seed). The defaults of the
        arguments are ``cdi-beamline evaluate``'s options (their one owner).
    nns_index : HDF5 from ``cdi-beamline simulate`` to search; default ``nns_size``
        patterns simulated with seed ``seed + 1``
    refine_patterns, repeats : patterns and random restarts of part (c)
    measured : the APS frame, as (64, 64) intensities or a .npy path; None or a missing
        file -> part (d) skipped
    examples : patterns shown in Fig. 4
    history : the weights' training ``history.jsonl`` for Fig. 3a; None -> skipped (the
        registry's weights were shipped without theirs)
    """
    from ..physics import simulate_batch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if seed >= 10**9:
        raise CDIValueError(f"seed {seed} is in the training range (>= 1e9); pick a smaller one")
    say(f"simulating {n} fresh test patterns (seed {seed})")
    data = simulate_batch(n, seed=seed, device="cpu")
    metrics: dict[str, Any] = {"n": n, "seed": seed, "paper": PAPER, "paper_forms": PAPER_FORMS}
    say("(a) CNN alone: chi² of modulus, amplitude, phase")
    cnn = cnn_accuracy(net, data, out)
    say(
        f"    gamma means: modulus {cnn['chi2_modulus']['gamma_mean']:.4f}, amplitude "
        f"{cnn['chi2_amplitude']['gamma_mean']:.4f}, phase {cnn['chi2_phase']['gamma_mean']:.4f}"
    )
    literal = cnn["paper_forms"]
    say(
        f"    the paper's forms (eq. 5 unscaled, phase on (0, 1)): modulus {literal['chi2_modulus']['gamma_mean']:.4f}"
        f", amplitude {literal['chi2_amplitude']['gamma_mean']:.4f}, phase {literal['chi2_phase']['gamma_mean']:.4f}"
        f" (paper {PAPER['cnn_chi2_modulus']}, {PAPER['cnn_chi2_amplitude']}, {PAPER['cnn_chi2_phase']})"
    )
    metrics["predictions"] = prediction_examples(data, cnn, min(examples, n), out)
    if history is not None:
        metrics["loss_curves"] = loss_curves(history, out)
        say(f"    Fig. 3a from {history}: best validation loss {metrics['loss_curves']['best_validation_loss']:.4f}")
    else:
        metrics["loss_curves"] = {"skipped": "no training history given (--history)"}
        say("    Fig. 3a skipped: no training history for these weights")
    say("(b) CNN vs nearest-neighbour search")
    index, index_name = _nns_index(nns_index, nns_size, seed + 1, "cpu")
    nns = nns_comparison(cnn, data, index, index_name, out)
    say(f"    mean chi² modulus: NNS {nns['nns_chi2_modulus']['mean']:.4f} vs CNN {cnn['chi2_modulus']['mean']:.4f}")
    say(f"(c) refinement from four starts ({refine_patterns} patterns, {repeats} repeats)")
    curves = refinement_curves(net, data, nns.pop("_match"), min(refine_patterns, n), repeats, seed, out, device)
    for k, v in curves.items():
        if isinstance(v, dict):
            say(f"    {k}: final mean {v['final_mean']:.4f}, worst decile {v['final_worst_decile']:.4f}")
    for k in ("_aligned", "_chi2_modulus"):
        cnn.pop(k)
    metrics.update(cnn=cnn, nns=nns, refinement=curves)
    if isinstance(measured, np.ndarray) or (measured is not None and Path(measured).is_file()):
        say("(d) measured frame")
        frame = measured if isinstance(measured, np.ndarray) else Path(measured)
        metrics["measured"] = measured_frame(net, frame, 8, out, device)
        say(
            f"    CNN chi² {metrics['measured']['cnn_chi2_modulus']:.3f}; CNN-seeded refinement "
            f"{metrics['measured']['cnn_seeded_chi2']:.4f}; random starts median "
            f"{metrics['measured']['random_chi2_median']:.4f}; eq. 5 as printed (no scale): CNN-seeded "
            f"{metrics['measured']['paper_forms']['cnn_seeded_chi2']:.4f}, random starts median "
            f"{metrics['measured']['paper_forms']['random_chi2_median']:.4f}"
        )
    else:
        say(f"(d) skipped: measured frame {measured} not found")
        metrics["measured"] = {"skipped": f"{measured} not found"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
