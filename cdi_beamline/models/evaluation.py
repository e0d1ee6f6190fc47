"""The paper's evaluation of the CNN (Figs. 3, 5f, 7 and the NNS comparison) on fresh patterns.

Every part returns a JSON-able dict and writes one PNG; :func:`evaluate` runs them all
and writes ``metrics.json``. chi² definitions are the phasing engine's: modulus chi² is
eq. 5 under the optimal scale (:func:`cdi_beamline.phasing.chi2`); amplitude and phase
chi² are measured after :func:`cdi_beamline.phasing.align` (translation, global phase,
twin) — amplitude ``Σ(s|o|−|o_g|)²/Σ|o_g|²``, phase ``mean over the true support of
(Δφ/π)²``.
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
from ..fourier import embed_centre
from ..plotting import (
    plot_chi2_histograms,
    plot_measured_frame,
    plot_nns_comparison,
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
    "PAPER",
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


def _aligned_chi2(objects: np.ndarray, truths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and phase chi² (B,) after alignment, objects (B, h, w) complex."""
    from ..phasing import align

    amp, ph = np.empty(len(objects)), np.empty(len(objects))
    for i, (o, t) in enumerate(zip(objects, truths)):
        pair = align(o, t, support=np.abs(t) > 0)
        amp[i], ph[i] = pair.chi2_amplitude, pair.chi2_phase
    return amp, ph


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
    c_mod = chi2(predicted_modulus(amp, phase, m.shape[-2:]), m).cpu().numpy()
    pred = torch.polar(amp, phase).cpu().numpy()
    truth = torch.polar(data.amplitude, data.phase).cpu().numpy()
    c_amp, c_ph = _aligned_chi2(pred, truth)
    res = {
        "chi2_modulus": gamma_summary(c_mod),
        "chi2_amplitude": gamma_summary(c_amp),
        "chi2_phase": gamma_summary(c_ph),
        "seconds_per_pattern": dt,
        "device": str(dev),
    }
    # test-time augmentation: the best fit of the 8 symmetries of the square (predict(symmetries=8))
    amp8, phase8, dt8 = _run_cnn(net, m, symmetries=8)
    c_amp8, c_ph8 = _aligned_chi2(torch.polar(amp8, phase8).cpu().numpy(), truth)
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
    res["_amp"], res["_phase"], res["_chi2_modulus"] = amp.cpu(), phase.cpu(), c_mod
    return res


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
    n_amp, n_ph = _aligned_chi2(obj, truth)
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
    res = {
        "file": source,
        "cnn_chi2_modulus": c_cnn,
        "cnn_seeded_chi2": float(seeded.chi2[0]),
        "random_chi2": random.chi2.double().cpu().tolist(),
        "random_chi2_median": float(random.chi2.double().median()),
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
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (a) Fig. 3, (b) CNN vs NNS, (c) Fig. 5f, (d) Fig. 7; write PNGs + ``metrics.json``.

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
    """
    from ..physics import simulate_batch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if seed >= 10**9:
        raise CDIValueError(f"seed {seed} is in the training range (>= 1e9); pick a smaller one")
    say(f"simulating {n} fresh test patterns (seed {seed})")
    data = simulate_batch(n, seed=seed, device="cpu")
    metrics: dict[str, Any] = {"n": n, "seed": seed, "paper": PAPER}
    say("(a) CNN alone: chi² of modulus, amplitude, phase")
    cnn = cnn_accuracy(net, data, out)
    say(
        f"    gamma means: modulus {cnn['chi2_modulus']['gamma_mean']:.4f}, amplitude "
        f"{cnn['chi2_amplitude']['gamma_mean']:.4f}, phase {cnn['chi2_phase']['gamma_mean']:.4f}"
    )
    say("(b) CNN vs nearest-neighbour search")
    index, index_name = _nns_index(nns_index, nns_size, seed + 1, "cpu")
    nns = nns_comparison(cnn, data, index, index_name, out)
    say(f"    mean chi² modulus: NNS {nns['nns_chi2_modulus']['mean']:.4f} vs CNN {cnn['chi2_modulus']['mean']:.4f}")
    say(f"(c) refinement from four starts ({refine_patterns} patterns, {repeats} repeats)")
    curves = refinement_curves(net, data, nns.pop("_match"), min(refine_patterns, n), repeats, seed, out, device)
    for k, v in curves.items():
        if isinstance(v, dict):
            say(f"    {k}: final mean {v['final_mean']:.4f}, worst decile {v['final_worst_decile']:.4f}")
    for k in ("_amp", "_phase", "_chi2_modulus"):
        cnn.pop(k)
    metrics.update(cnn=cnn, nns=nns, refinement=curves)
    if isinstance(measured, np.ndarray) or (measured is not None and Path(measured).is_file()):
        say("(d) measured frame")
        frame = measured if isinstance(measured, np.ndarray) else Path(measured)
        metrics["measured"] = measured_frame(net, frame, 8, out, device)
        say(
            f"    CNN chi² {metrics['measured']['cnn_chi2_modulus']:.3f}; CNN-seeded refinement "
            f"{metrics['measured']['cnn_seeded_chi2']:.4f}; random starts median "
            f"{metrics['measured']['random_chi2_median']:.4f}"
        )
    else:
        say(f"(d) skipped: measured frame {measured} not found")
        metrics["measured"] = {"skipped": f"{measured} not found"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
