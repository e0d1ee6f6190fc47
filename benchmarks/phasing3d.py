"""3-D phasing vs cohere-core on the measured APS 34-ID-C rocking scan (64³ crop around the
Bragg peak, flat-field corrected): the same 600-iteration ER/HIO schedule with shrink-wrap,
random starts, in one repeat.

Time per 3-D reconstruction (wall) and its final chi² (eq. 5, computed by the same function
for both codes), at 1 and 2 torch threads, against cohere-core's numpy backend (one thread:
numpy's FFT) after an untimed warm-up each; ``--starts`` random starts in one batch
(:func:`cdi_beamline.phasing.refine` with B = starts, what :func:`multistart` runs) against
as many one-start reconstructions, and multistart's averaged result. On CUDA the same
reconstructions run on the GPU too.

    ./run bench benchmarks/phasing3d.py [--repeats N] [--starts 4] [--keep 2] [--threads 1]
        [--skip-cohere] [--data DIR]

The crop is frames 67-130, detector rows 94-157 and columns 95-158 of the scan the package
ships (``cdi_beamline/devices/data``); ``--data`` names the folder holding both files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _harness import Ratio, Row, main
from phasing import COHERE_SEQUENCE, run_cohere

from cdi_beamline.config import RefineConfig
from cdi_beamline.phasing import multistart, refine

NAME = "phasing3d"
TITLE = "3D ER/HIO + shrink-wrap, 600 iterations, measured 64³ APS crop: cdi_beamline vs cohere-core"
DATA = Path("/work/shared/data/aps34idc_S0054")
CROP = "aps34idc_S0054_crop64x64x64_raw.npz"
SCAN = "aps34idc_S0054_rocking_201x128x128.npz"
ROWS = [
    Row("ours_1", "cdi_beamline, one reconstruction, 1 torch thread", "s wall", 2),
    Row("ours_2", "cdi_beamline, one reconstruction, 2 torch threads", "s wall", 2),
    Row("cohere_np", "cohere-core numpy, one reconstruction", "s wall", 2),
    Row("ours_chi2", "cdi_beamline final chi² (1 thread's run)", "chi²", 4),
    Row("cohere_np_chi2", "cohere-core numpy final chi²", "chi²", 4),
    Row("batch", "{starts} random starts in one batch, {threads} thread(s)", "s wall", 2),
    Row("serial", "{starts} × one start, {threads} thread(s)", "s wall", 2),
    Row("ms_chi2", "multistart {starts} starts, best {keep} averaged: chi² of the average", "chi²", 4),
    Row("ms_best_chi2", "multistart: lowest chi² of the {starts} starts", "chi²", 4),
    Row("cuda_one", "CUDA, one reconstruction", "s wall", 3),
    Row("cuda_batch", "CUDA, {starts} random starts in one batch", "s wall", 3),
]
RATIOS = [
    Ratio("cohere-core numpy / ours, 1 thread (time)", "cohere_np", "ours_1", 1),
    Ratio("cohere-core numpy / ours, 2 threads (time)", "cohere_np", "ours_2", 1),
    Ratio("ours 1 thread / 2 threads (time)", "ours_1", "ours_2", 2),
    Ratio("ours / cohere-core numpy (chi²)", "ours_chi2", "cohere_np_chi2", 2),
    Ratio("{starts} × one start / one batch of {starts} (time)", "serial", "batch", 2),
    Ratio("CUDA one batch of {starts} / one reconstruction (time)", "cuda_batch", "cuda_one", 2),
]


def load_modulus(data: Path = DATA) -> np.ndarray:
    """The 64³ crop, flat-field corrected with the scan's whitefield cut to the crop's detector
    rows and columns: sqrt(counts / whitefield · mean whitefield), (64, 64, 64) float32, centred."""
    with np.load(data / CROP) as crop, np.load(data / SCAN) as scan:
        counts = crop["data"].astype(np.float64)
        rows = crop["rows"] - scan["rows"][0]
        cols = crop["cols"] - scan["cols"][0]
        whitefield = scan["whitefield"].astype(np.float64)[np.ix_(rows, cols)]
    corrected = counts / whitefield * whitefield.mean()
    return np.sqrt(corrected).astype(np.float32)


def _seconds(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--starts", type=int, default=4, help="random starts per batch (default 4)")
    ap.add_argument("--keep", type=int, default=2, help="multistart: starts averaged (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the batch rows (default 1)")
    ap.add_argument("--skip-cohere", action="store_true", help="time our engine only")
    ap.add_argument("--data", type=Path, default=DATA, help=f"folder of {CROP} and {SCAN} (default {DATA})")


def params(args: argparse.Namespace) -> dict:
    cfg = RefineConfig()
    return {
        "data": f"{CROP} (flat field: {SCAN} whitefield, same detector pixels)",
        "schedule": f"{cfg.schedule} (cohere: {COHERE_SEQUENCE})",
        "shrink-wrap": f"from {cfg.shrinkwrap_start} every {cfg.shrinkwrap_every}, sigma {cfg.shrinkwrap_sigma}, "
        f"threshold {cfg.shrinkwrap_threshold}",
        "starts": args.starts,
    }


def setup(args: argparse.Namespace) -> dict:
    m = torch.from_numpy(load_modulus(args.data))
    cfg = RefineConfig()
    warm = cfg.model_copy(update={"schedule": "HIO**5 * ER**5"})
    refine(m[None], config=warm)  # numba compilation, first calls
    refine(m.expand(args.starts, *m.shape), config=warm)
    state = {"cfg": cfg, "m": m, "repeat": 0, "cuda": None}
    if torch.cuda.is_available():
        mc = m.cuda()
        refine(mc[None], config=warm)
        state["cuda"] = mc
    return state


def measure(args: argparse.Namespace, state: dict) -> dict:
    cfg, m = state["cfg"], state["m"]
    seed = state["repeat"]
    state["repeat"] += 1
    cpu = torch.device("cpu")
    out: dict = {"info": {}}
    # ours at 2 threads, at 1 thread, cohere-core: each ratio of neighbours back to back
    torch.set_num_threads(2)
    out["ours_2"], _ = _seconds(lambda: refine(m[None], config=cfg, seed=seed), cpu)
    torch.set_num_threads(1)
    out["ours_1"], res = _seconds(lambda: refine(m[None], config=cfg, seed=seed), cpu)
    out["ours_chi2"] = float(res.chi2[0])
    out["info"]["ours_backend"] = res.backend
    if not args.skip_cohere:
        try:
            w, _, ch = run_cohere(m.numpy()[None], "np", cfg)
        except Exception as exc:  # report a backend that does not run, keep the rest
            out["info"]["cohere_np"] = f"failed: {type(exc).__name__}: {exc}"
        else:
            out.update(cohere_np=w, cohere_np_chi2=float(ch[0]))
    torch.set_num_threads(args.threads)
    starts = args.starts
    out["batch"], _ = _seconds(lambda: refine(m.expand(starts, *m.shape), config=cfg, seed=seed), cpu)
    out["serial"], _ = _seconds(lambda: [refine(m[None], config=cfg, seed=seed + k) for k in range(starts)], cpu)
    ms = multistart(m, config=cfg, starts=starts, keep=args.keep, seed=seed)
    out.update(ms_chi2=ms.chi2, ms_best_chi2=float(ms.chi2_starts.min()))
    out["info"]["multistart"] = {
        "chi2_starts": ms.chi2_starts.tolist(),
        "kept": ms.kept.tolist(),
        "spread_amplitude": ms.spread_amplitude,
        "spread_phase": ms.spread_phase,
    }
    mc = state["cuda"]
    if mc is not None:
        out["cuda_one"], _ = _seconds(lambda: refine(mc[None], config=cfg, seed=seed), mc.device)
        out["cuda_batch"], _ = _seconds(lambda: refine(mc.expand(starts, *mc.shape), config=cfg, seed=seed), mc.device)
    return out


if __name__ == "__main__":
    main(sys.modules[__name__])
