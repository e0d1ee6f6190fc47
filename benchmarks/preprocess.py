"""Raw detector frames through the preprocessing step and the offline Reconstructor, as the
live worker would take them (batches of ``--batch-size``, CNN + ``--iterations``):

1. 512×512 frames: the raw APS 34-ID-C frames (128×128 cut) placed off-centre in a
   512×512 detector with a module gap and hot pixels, dark + flat field + mask, automatic
   ROI of 64 around the Bragg peak (chosen in the first batch of each repeat): the
   preprocessing alone, then preprocessing + reconstruction (frames/s, mean final chi²);
2. 128×128 ROI: the raw 128×128 frames, dark + flat field, ROI the whole cut, phased at
   128×128 (random start: `cnn_large_frames` defaults to random; the reason recorded per frame).

    ./run bench preprocess [--repeats N] -- [--frames 128] [--iterations 100] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _harness import Ratio, Row, main

NAME = "preprocess"
TITLE = "Raw frames → preprocessing → Reconstructor ({iterations} iterations), {frames} APS frames, batch {batch_size}"
ROWS = [
    Row("pre512", "512×512 → ROI 64 (auto): dark, flat, mask, ROI, sqrt alone", "frames/s", 0),
    Row("rec512", "512×512 → ROI 64: preprocessing + CNN + refinement", "frames/s", 1),
    Row("chi2_512", "512×512 → ROI 64: mean final chi²", "chi²", 4),
    Row("pre128", "128×128 ROI: dark, flat, sqrt alone", "frames/s", 0),
    Row("rec128", "128×128 ROI: preprocessing + random start + refinement", "frames/s", 1),
    Row("chi2_128", "128×128 ROI: mean final chi²", "chi²", 4),
]
RATIOS = [
    Ratio("512×512 → ROI 64: with reconstruction / preprocessing alone (frames/s)", "rec512", "pre512", 3),
    Ratio("128×128 / 64×64 ROI, frames/s with preprocessing", "rec128", "rec512", 2),
]

#: Where the 128×128 cut's corner lands in the 512×512 detector (its peak near (364, 154)).
CORNER = (300, 90)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--frames", type=int, default=128, help="APS frames from the scan's centre (default 128)")
    ap.add_argument("--iterations", type=int, default=100, help="refinement iterations (default 100)")
    ap.add_argument("--batch-size", type=int, default=64, help="frames per batch (default 64)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: no spin-waiting on a busy machine)"
    )


def params(args: argparse.Namespace) -> dict:
    return {
        "frames": f"{args.frames} raw APS 34-ID-C frames from the scan's centre",
        "iterations": args.iterations,
        "batch": args.batch_size,
        "torch threads": args.threads,
    }


def detector_512(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, seed: int = 1):
    """(frames (N, 512, 512), dark, flat, mask): ``raw`` (N, 128, 128) placed at CORNER,
    Poisson background 0.2, a 4-pixel gap (masked), 40 hot pixels (half of them masked)."""
    rng = np.random.default_rng(seed)
    y, x = CORNER
    frames = rng.poisson(0.2, (len(raw), 512, 512)).astype(np.float32)
    frames[:, y : y + 128, x : x + 128] = raw
    dark512 = np.zeros((512, 512), np.float32)
    dark512[y : y + 128, x : x + 128] = dark
    flat512 = np.full((512, 512), float(flat.mean()), np.float32)
    flat512[y : y + 128, x : x + 128] = flat
    mask = np.ones((512, 512), bool)
    frames[:, :, 176:180] = 0
    mask[:, 176:180] = False
    hot = rng.integers(0, 512, (40, 2))
    hot = hot[(np.abs(hot[:, 0] - 364) >= 48) | (np.abs(hot[:, 1] - 154) >= 48)]
    frames[:, hot[:, 0], hot[:, 1]] = 5e6
    mask[hot[::2, 0], hot[::2, 1]] = False
    return frames, dark512, flat512, mask


def setup(args: argparse.Namespace) -> dict:
    from cdi_beamline.config import ReconstructorConfig
    from cdi_beamline.devices import ApsRockingSource
    from cdi_beamline.pipeline import Reconstructor

    torch.set_num_threads(args.threads)
    src = ApsRockingSource(corrected=False, crop=128)
    lo = max(0, (src.n_frames - args.frames) // 2)
    raw = src.frames[lo : lo + args.frames]
    frames512, dark512, flat512, mask512 = detector_512(raw, src.dark, src.whitefield)
    rec = Reconstructor(
        ReconstructorConfig(quantity="modulus", iterations=args.iterations, batch_size=args.batch_size), device="cpu"
    )
    state = {
        "rec": rec,
        "512": (frames512, {"dark": dark512, "flat": flat512, "mask": mask512}, {"roi": "auto", "roi_size": 64}),
        "128": (raw, {"dark": src.dark, "flat": src.whitefield}, {"roi": (0, 0, 128, 128)}),
    }
    for key in ("512", "128"):  # warm-up: CNN weights, first batch of each size
        run(state, key, args.batch_size, n=args.batch_size)
    return state


def run(state: dict, key: str, batch: int, n: int | None = None, phase: bool = True) -> tuple[float, float]:
    """(frames/s, mean final chi² or NaN) of one fresh run: a new Preprocessor (the ROI is
    chosen in its first batch), batch by batch."""
    from cdi_beamline.config import PreprocessConfig
    from cdi_beamline.preprocess import Preprocessor

    frames, arrays, config = state[key]
    frames = frames[:n]
    t = time.perf_counter()
    pre = Preprocessor(PreprocessConfig(**config), **arrays)
    chis = []
    for i in range(0, len(frames), batch):
        out = pre.apply(frames[i : i + batch])
        if phase:
            chis.append(state["rec"].reconstruct(out.modulus, mask=out.mask, seed=0).chi2)
    rate = len(frames) / (time.perf_counter() - t)
    return rate, float(np.nanmean(np.concatenate(chis))) if chis else float("nan")


def measure(args: argparse.Namespace, state: dict) -> dict:
    b = args.batch_size
    out: dict = {}
    out["pre512"], _ = run(state, "512", b, phase=False)
    out["rec512"], out["chi2_512"] = run(state, "512", b)
    out["pre128"], _ = run(state, "128", b, phase=False)
    out["rec128"], out["chi2_128"] = run(state, "128", b)
    return out


if __name__ == "__main__":
    main(sys.modules[__name__])
