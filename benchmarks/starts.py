"""How refinement should begin from a CNN seed: chi² against the iteration count for the
paper's four starts (Wu et al. 2021, Fig. 5f), images per start (Fig. 6), and the APS
34-ID-C rocking-scan frames that hold a crystal.

Every run is configured as the pipeline configures it, ``ReconstructorConfig.build(init=...,
iterations=n).refine`` (the default schedule of each start, scaled to n iterations, and
``keep="best"``): "after n iterations" is what a user asking for n gets.

- Counts: on ``--n`` fresh simulated 64×64 patterns (``simulate_batch``, seed ``--seed``),
  median and worst decile (p90) of the returned chi² after 20, 50, 100 and 600 iterations,
  for the CNN start (object and support) and the random start (random phases in the
  rectangle), the random one ``--repeats`` times per pattern (seeds 0, 1, ...); the CNN
  start also under the paper's schedule, returning the best or the last object.
- Fig. 5f: chi² of the object after each iteration (``RefineResult.chi2_history``) of the
  600-iteration runs of the four starts (random + rectangle, random + CNN support, CNN,
  nearest neighbour in ``--nns-size`` simulated patterns), median and 10–90 % band over the
  first ``--curve-n`` patterns × repeats.
- Fig. 6: one pattern's object after 0, 20, 50, 100 and 600 iterations of each start (the
  600-iteration schedule's first n steps, ``keep="last"``: what the iterate is then).
- APS: the measured frames ``--aps-frames`` of the shipped rocking scan, CNN start vs random
  start, after 50 and 600 iterations.

    PYTHONPATH=. python benchmarks/starts.py [--n 200] [--repeats 2] [--out benchmarks/results/starts.json]

Writes the JSON record and docs/img/starts_fig5f.png, docs/img/starts_fig6.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from cdi_beamline.config import ReconstructorConfig, RefineConfig
from cdi_beamline.config.refine import DEFAULT_SCHEDULE
from cdi_beamline.config.schedule import parse_schedule
from cdi_beamline.devices import make_source
from cdi_beamline.fourier import embed_centre
from cdi_beamline.models import cdinet
from cdi_beamline.models.inference import initial_estimate
from cdi_beamline.phasing import (
    InitialEstimate,
    NearestNeighbourIndex,
    random_initial_object,
    refine,
    square_support,
)
from cdi_beamline.physics import simulate_batch
from cdi_beamline.plotting import plot_start_curves, plot_start_images

COUNTS = (20, 50, 100, 600)
ROOT = Path(__file__).resolve().parent.parent


def refine_config(init: str, iterations: int, **refine) -> RefineConfig:
    """The refinement the pipeline runs for ``init`` and ``iterations`` (its defaults, or ``refine``)."""
    return ReconstructorConfig.build(init=init, iterations=iterations, refine=refine).refine


#: the CNN start under the earlier defaults, for comparison: the paper's schedule, and the last object
CNN_BEFORE = {
    "cnn_paper_best": {"schedule": DEFAULT_SCHEDULE},
    "cnn_paper_last": {"schedule": DEFAULT_SCHEDULE, "keep": "last"},
}


def prefix(config: RefineConfig, n: int) -> RefineConfig:
    """``config`` with its schedule cut to the first ``n`` iterations, returning the last object."""
    steps = list(parse_schedule(config.schedule))[:n]
    runs: list[list] = []
    for name, beta in steps:
        if runs and runs[-1][:2] == [name, beta]:
            runs[-1][2] += 1
        else:
            runs.append([name, beta, 1])
    text = " * ".join(f"{a}{'' if b is None else f'({b:g})'}**{k}" for a, b, k in runs)
    return config.model_copy(update={"schedule": text, "keep": "last"})


def summary(chi2: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(chi2)), "p90": float(np.quantile(chi2, 0.9)), "mean": float(np.mean(chi2))}


def counts(m, est, repeats: int) -> dict:
    """Returned chi² after each count: CNN start (its default, and :data:`CNN_BEFORE`) and
    random start (``repeats`` seeds)."""
    out: dict[str, dict] = {"cnn": {}, "random": {}, **{k: {} for k in CNN_BEFORE}}
    for n in COUNTS:
        res = refine(m, init=est, config=refine_config("cnn", n), seed=0)
        out["cnn"][str(n)] = summary(res.chi2.double().numpy())
        for name, refine_kw in CNN_BEFORE.items():
            res = refine(m, init=est, config=refine_config("cnn", n, **refine_kw), seed=0)
            out[name][str(n)] = summary(res.chi2.double().numpy())
        rnd = [refine(m, config=refine_config("random", n), seed=s).chi2.double().numpy() for s in range(repeats)]
        out["random"][str(n)] = summary(np.concatenate(rnd))
        print(f"  after {n}: " + ", ".join(f"{k} {v[str(n)]}" for k, v in out.items()), flush=True)
    return out


def four_starts(m, est, nns: InitialEstimate, repeats: int):
    """(name -> (runs, T + 1) chi² of the object after each iteration, name -> (init, config, seeds))."""
    random_cfg, cnn_cfg = refine_config("random", 600), refine_config("cnn", 600)
    starts = {
        "random + rectangle": (None, random_cfg, range(repeats)),
        "random + CNN support": (InitialEstimate(support=est.support), random_cfg, range(repeats)),
        "CNN object + support": (est, cnn_cfg, [0]),
        "nearest neighbour": (nns, cnn_cfg, [0]),
    }
    curves = {}
    for name, (init, cfg, seeds) in starts.items():
        rows = []
        for s in seeds:
            r = refine(m, init=init, config=cfg.model_copy(update={"keep": "last"}), seed=s)
            rows.append(torch.cat([r.chi2_history, r.chi2[:, None]], 1).double().numpy())
        curves[name] = np.concatenate(rows)
    return curves, starts


def images(m1, starts, shots=(0, 20, 50, 100, 600)) -> dict[str, list[np.ndarray]]:
    """One pattern: the object (centred) after each count in ``shots`` per start (seed 0)."""
    out = {}
    H, W = m1.shape[-2:]
    for name, (init, cfg, _) in starts.items():
        init1 = None
        if init is not None:
            init1 = InitialEstimate(object=None if init.object is None else init.object[:1], support=init.support[:1])
        row = []
        for n in shots:
            if n == 0 and init1 is not None and init1.object is not None:
                obj = init1.object[0] * init1.support[0]  # the seed, in its support
            elif n == 0:  # random phases, as refine draws them with seed 0
                S = init1.support if init1 is not None else square_support((H, W), cfg.init_support_size)[None]
                obj = random_initial_object(S, torch.Generator().manual_seed(0))[0]
            else:
                obj = refine(m1, init=init1, config=prefix(cfg, n), seed=0).object[0]
            row.append(obj.numpy())
        out[name] = row
    return out


def aps(net, frames: list[int]) -> dict:
    source = make_source("aps34idc")
    intensity = np.stack([source.frame(k) for k in frames]).astype(np.float32)
    m = torch.from_numpy(np.sqrt(np.clip(intensity, 0, None)))
    est = initial_estimate(net, m)
    out = {"frames": frames}
    for n in (50, 600):
        out[f"cnn_{n}"] = summary(refine(m, init=est, config=refine_config("cnn", n), seed=0).chi2.double().numpy())
        for name, refine_kw in CNN_BEFORE.items():
            res = refine(m, init=est, config=refine_config("cnn", n, **refine_kw), seed=0)
            out[f"{name}_{n}"] = summary(res.chi2.double().numpy())
        out[f"random_{n}"] = summary(refine(m, config=refine_config("random", n), seed=0).chi2.double().numpy())
        print(f"  APS after {n}: cnn {out[f'cnn_{n}']}, random {out[f'random_{n}']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="fresh simulated patterns (default 200)")
    ap.add_argument("--seed", type=int, default=20261203, help="seed of the simulated patterns")
    ap.add_argument("--repeats", type=int, default=2, help="random-start seeds per pattern (default 2)")
    ap.add_argument("--curve-n", type=int, default=100, help="patterns of Fig. 5f (default 100)")
    ap.add_argument("--nns-size", type=int, default=2000, help="simulated patterns of the NNS index")
    ap.add_argument("--aps-frames", default="85:116", help="APS scan frames, start:stop (default 85:116)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/starts.json")
    ap.add_argument("--img", type=Path, default=ROOT / "docs/img")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    data = simulate_batch(args.n, seed=args.seed, device="cpu")
    m = data.modulus
    net = cdinet("DEFAULT")
    est = initial_estimate(net, m)
    record: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread",
        "patterns": args.n,
        "seed": args.seed,
        "repeats": args.repeats,
        "configs": {init: refine_config(init, 600).model_dump() for init in ("cnn", "random")},
    }
    print("counts ...", flush=True)
    record["counts"] = counts(m, est, args.repeats)

    print("four starts ...", flush=True)
    k = min(args.curve_n, args.n)
    ref = simulate_batch(args.nns_size, seed=args.seed + 1, device="cpu")
    index = NearestNeighbourIndex(ref.modulus, ref.amplitude, ref.phase, ref.support)
    match = index.query(m[:k])
    nns = InitialEstimate(
        object=embed_centre(torch.polar(match.amplitude, match.phase) * match.support, (64, 64)),
        support=embed_centre(match.support, (64, 64)),
    )
    est_k = InitialEstimate(object=est.object[:k], support=est.support[:k])
    curves, starts = four_starts(m[:k], est_k, nns, args.repeats)
    record["fig5f"] = {
        "patterns": k,
        "nns_index": args.nns_size,
        "starts": {
            name: {
                "runs": int(len(c)),
                **{f"after_{n}": summary(c[:, n]) for n in (0, *COUNTS)},
                **{f"best_{n}": summary(c[:, : n + 1].min(1)) for n in COUNTS},
            }
            for name, c in curves.items()
        },
    }
    plot_start_curves(
        curves,
        args.img / "starts_fig5f.png",
        title=f"chi² of the object after each iteration, {k} patterns (random starts ×{args.repeats})",
    )
    shots = (0, 20, 50, 100, 600)
    plot_start_images(
        images(m[:1], starts, shots),
        shots,
        args.img / "starts_fig6.png",
        title="One simulated pattern: the object after n iterations per start (cf. Wu et al. 2021, Fig. 6)",
    )

    print("APS ...", flush=True)
    a, b = (int(v) for v in args.aps_frames.split(":"))
    record["aps"] = aps(net, list(range(a, b)))
    record["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}, {args.img / 'starts_fig5f.png'}, {args.img / 'starts_fig6.png'}")


if __name__ == "__main__":
    main()
