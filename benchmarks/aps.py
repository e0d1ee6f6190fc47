"""The measured APS 34-ID-C frame 99 (gold crystal, flat-field corrected, shipped with the
package): chi² (eq. 5) of the CNN alone, of the CNN-seeded refinement (deterministic), and of
``--seeds`` random-start refinements (median, min, max), all with the default 600-iteration
schedule — the code path of ``cdi-beamline evaluate`` part (d) (:func:`measured_frame`).
The chi² values do not change between repeats (fixed seeds); the repeats time the run.

    ./run bench aps [--repeats N] -- [--seeds 8] [--weights DEFAULT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _harness import Ratio, Row, main

from cdi_beamline.devices import make_source
from cdi_beamline.models import cdinet
from cdi_beamline.models.evaluation import measured_frame

NAME = "aps"
TITLE = "APS 34-ID-C frame 99 (measured): chi² after refinement"
ROWS = [
    Row("cnn", "CNN alone (modulus chi²)", "chi²", 4),
    Row("seeded", "CNN-seeded refinement, 600 iterations", "chi²", 4),
    Row("random_median", "random starts, median of {seeds}", "chi²", 4),
    Row("random_min", "random starts, best", "chi²", 4),
    Row("random_max", "random starts, worst", "chi²", 4),
    Row("seconds", "time of the whole part (CNN, seeded, random starts, figure)", "s", 1),
]
RATIOS = [Ratio("random-start median / CNN-seeded", "random_median", "seeded", 2)]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seeds", type=int, default=8, help="random starts (default 8)")
    ap.add_argument("--weights", default="DEFAULT", help="CNN weights (default DEFAULT)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def params(args: argparse.Namespace) -> dict:
    return {"frame": "aps34idc frame 99 (shipped)", "random starts": args.seeds, "weights": args.weights}


def setup(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    return {"frame": make_source("aps34idc").frame(99), "net": cdinet(args.weights)}


def measure(args: argparse.Namespace, state: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = measured_frame(state["net"], state["frame"], args.seeds, Path(tmp), torch.device("cpu"))
        seconds = time.perf_counter() - t0
    random = res["random_chi2"]
    return {
        "cnn": res["cnn_chi2_modulus"],
        "seeded": res["cnn_seeded_chi2"],
        "random_median": res["random_chi2_median"],
        "random_min": min(random),
        "random_max": max(random),
        "seconds": seconds,
        "info": {"random_chi2": random},
    }


if __name__ == "__main__":
    main(sys.modules[__name__])
