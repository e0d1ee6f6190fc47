"""The shipped CNN alone on fresh simulated patterns: chi² of modulus (eq. 5), amplitude and
phase (after alignment: translation, global phase, twin), as the Gamma-fit means of the
paper's Fig. 3, plain and with test-time augmentation (``symmetries=8``) — the code path of
``cdi-beamline evaluate`` part (a) (:func:`cnn_accuracy`) with its default patterns (1,000,
seed 20210). The chi² values do not change between repeats (fixed seeds); the repeats time it.

    ./run bench accuracy [--repeats N] -- [--n 1000] [--seed 20210] [--weights DEFAULT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _harness import Ratio, Row, main

from cdi_beamline.models import cdinet
from cdi_beamline.models.evaluation import PAPER, cnn_accuracy
from cdi_beamline.physics import simulate_batch

NAME = "accuracy"
TITLE = "CNN alone on {n} fresh simulated patterns (seed {seed}): chi² (Gamma-fit mean)"
ROWS = [
    Row("modulus", "chi² modulus", "chi²", 4),
    Row("amplitude", "chi² amplitude", "chi²", 4),
    Row("phase", "chi² phase", "chi²", 4),
    Row("modulus8", "chi² modulus, symmetries=8", "chi²", 4),
    Row("amplitude8", "chi² amplitude, symmetries=8", "chi²", 4),
    Row("phase8", "chi² phase, symmetries=8", "chi²", 4),
    Row("paper_modulus", "paper (Wu et al. 2021): chi² modulus", "chi²", 3),
    Row("seconds", "time of the part (CNN plain and ×8, alignment, figure)", "s", 1),
]
RATIOS = [
    Ratio("chi² modulus / paper's", "modulus", "paper_modulus", 2),
    Ratio("chi² modulus, symmetries=8 / paper's", "modulus8", "paper_modulus", 2),
]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=1000, help="fresh test patterns (default 1000, as evaluate)")
    ap.add_argument("--seed", type=int, default=20210, help="seed of the test patterns (default 20210, as evaluate)")
    ap.add_argument("--weights", default="DEFAULT", help="CNN weights (default DEFAULT)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")


def params(args: argparse.Namespace) -> dict:
    return {"weights": args.weights, "threads": args.threads}


def setup(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    return {"net": cdinet(args.weights), "data": simulate_batch(args.n, seed=args.seed, device="cpu")}


def measure(args: argparse.Namespace, state: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = cnn_accuracy(state["net"], state["data"], Path(tmp))
        seconds = time.perf_counter() - t0
    sym = res["symmetries8"]
    return {
        "modulus": res["chi2_modulus"]["gamma_mean"],
        "amplitude": res["chi2_amplitude"]["gamma_mean"],
        "phase": res["chi2_phase"]["gamma_mean"],
        "modulus8": sym["chi2_modulus"]["gamma_mean"],
        "amplitude8": sym["chi2_amplitude"]["gamma_mean"],
        "phase8": sym["chi2_phase"]["gamma_mean"],
        "paper_modulus": PAPER["cnn_chi2_modulus"],
        "seconds": seconds,
        "info": {"means": {k: res[k]["mean"] for k in ("chi2_modulus", "chi2_amplitude", "chi2_phase")}},
    }


if __name__ == "__main__":
    main(sys.modules[__name__])
