"""``cdi-beamline evaluate``: the paper's evaluation of the CNN on fresh patterns."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CDIValueError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate the CNN as the paper does (Figs. 3, 4, 5f, 7, NNS comparison): PNGs + metrics.json",
        description="Evaluate the CNN on fresh simulated patterns: (a) chi² histograms of modulus, amplitude and "
        "phase with Gamma fits (Fig. 3b-d), beside the paper's literal forms (eq. 5 without a scale, phase on "
        "(0, 1)); predictions against the truth (Fig. 4); the training and validation loss (Fig. 3a) when the "
        "weights' training history is at hand; (b) CNN vs nearest-neighbour search (chi², time per pattern); (c) chi² "
        "against iteration for four initialisations of ER/HIO (Fig. 5f); (d) the measured APS 34-ID-C frame, CNN "
        "alone and CNN-seeded refinement (Fig. 7). Writes OUT/eval_*.png and OUT/metrics.json.",
    )
    p.add_argument("--n", type=int, default=1000, help="fresh test patterns (default 1000)")
    p.add_argument("--seed", type=int, default=20210, help="seed of the test patterns (< 1e9; default 20210)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--weights", help="registry name (default: the registry's DEFAULT) or a training output folder")
    p.add_argument(
        "--nns-index", metavar="FILE.h5", help="HDF5 from `cdi-beamline simulate` to search (default: simulate)"
    )
    p.add_argument("--nns-size", type=int, default=10_000, help="patterns simulated for the NNS index (default 10000)")
    p.add_argument("--refine-patterns", type=int, default=16, help="patterns refined in part (c) (default 16)")
    p.add_argument("--repeats", type=int, default=4, help="random restarts per pattern in part (c) (default 4)")
    p.add_argument(
        "--measured",
        default="aps34idc",
        metavar="FILE.npy",
        help="measured 64×64 intensity for part (d) (default aps34idc: frame 99 of the APS 34-ID-C "
        "rocking scan shipped in the package, flat-field corrected; a missing file is skipped)",
    )
    p.add_argument("--examples", type=int, default=6, help="patterns shown in Fig. 4 (default 6, as the paper)")
    p.add_argument(
        "--history",
        metavar="FILE.jsonl",
        help="training history for Fig. 3a (default: history.jsonl of a --weights training folder; the "
        "registry's weights were shipped without one, so Fig. 3a is skipped for them)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:n] (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..models import CDINetWeights, cdinet
    from ..models.evaluation import evaluate

    for name in ("n", "nns_size", "refine_patterns", "repeats", "examples"):
        if getattr(args, name) < 1:
            raise CDIValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    measured = args.measured
    if measured == "aps34idc":  # the shipped scan's frame 99 equals the shared wfcorr crop (tested)
        from ..devices import make_source

        measured = make_source("aps34idc").frame(99)
    history = args.history
    if history is None and args.weights and (Path(args.weights) / "history.jsonl").is_file():
        history = Path(args.weights) / "history.jsonl"
    elif history is None and (args.weights or "DEFAULT") in CDINetWeights.__members__:
        history = CDINetWeights[args.weights or "DEFAULT"].value.history()  # shipped with the weights, if kept
    elif history is not None and not Path(history).is_file():
        raise CDIValueError(f"--history {history}: no such file")
    dev = resolve_device(args.device)
    net = (cdinet(args.weights) if args.weights else cdinet()).to(dev)
    evaluate(
        net,
        n=args.n,
        seed=args.seed,
        out=args.out,
        nns_index=args.nns_index,
        nns_size=args.nns_size,
        refine_patterns=args.refine_patterns,
        repeats=args.repeats,
        measured=measured,
        device=dev,
        examples=args.examples,
        history=history,
        say=lambda s: print(s, flush=True),
    )
    print(f"wrote {args.out}/metrics.json and eval_*.png")
    return 0
