"""Scale: the whole machine by default. Groups of rows, one function each (``measure_*``), all
measured in the same repeat so that their ratios share the load:

1. ``reconstruct``: whole processes, as a user runs them from a pip install (no
   ``OMP_NUM_THREADS``, no ``OMP_WAIT_POLICY`` in the environment): ``cdi-beamline reconstruct``
   of a ``--n`` stack (64x64 simulated patterns, default settings: CNN start, 600 iterations)
   at its default (:func:`cdi_beamline.resources.plan`: one torch thread per core, the batch
   split across the cores), with ``--threads 1`` and with ``--threads`` = the cores (torch's
   own default count, the batch in one piece); and cohere-core's numpy backend, a whole
   process too (imports, then each pattern one at a time, the same 600-iteration ER/HIO
   schedule from random phases, its API's only way). One untimed run of ours first fills
   numba's cache, as any second run of a user's finds it; each row of a repeat is the shortest
   of ``--process-runs`` runs (see :func:`measure_reconstruct`).
2. ``batch``: in this process, one refine of a (``--n``, 64, 64) batch, 600 iterations, random
   starts: torch at the cores' thread count, at 1 thread, the batch split across the cores in
   Python threads (1 torch thread each: what the plan runs) and in worker processes (started
   and warmed before the timing, one torch thread each).
3. ``fft3d``: one 64³ complex64 fftn + ifftn pair (the FFT work of one iteration of a 3D
   refinement, the single big pattern a rocking scan gives) at 1 thread and the cores' count.
4. past one process, on Dask: live frames/s with 1 and 2 workers, ``reprocess --all`` on
   ``local:2`` vs one process (the rows of :mod:`scale_dask`).

    ./run bench scale [--repeats N] -- [--n 64] [--process-runs 3] [--busy 0] [--skip-cohere]
        [--skip-batch] [--skip-fft3d] [--skip-dask] [--dask-frames 256] [--dask-runs 20] [--dask-live-only]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import scale_dask
import torch
from _harness import Ratio, Row, main
from phasing import COHERE_SEQUENCE, cohere_params, run_cohere

from cdi_beamline import resources
from cdi_beamline.config import RefineConfig
from cdi_beamline.phasing import refine
from cdi_beamline.physics import simulate_batch

CORES = resources.cpu_count()
NAME = "scale"
TITLE = "Scale: threads and workers on {cores} cores, {n} patterns 64×64, 600 iterations"

ROWS = [
    Row("rec_default", "`reconstruct` whole process, default (1 torch thread × {cores} workers)", "s", 2),
    Row("rec_t1", "`reconstruct --threads 1` whole process", "s", 2),
    Row("rec_tn", "`reconstruct --threads {cores}` whole process (torch's own count, one batch)", "s", 2),
    Row("cohere_whole", "cohere-core numpy whole process, {n} patterns one at a time", "s", 2),
    Row("rec_fixed", "`reconstruct --iterations 0` whole process (start-up, CNN, files: the fixed cost)", "s", 2),
    Row("cohere_pp", "cohere-core numpy in this process, {cohere_n} patterns after a warm-up", "ms/pattern", 1),
    Row("batch_tn", "refine, one batch, torch {cores} threads", "ms/pattern", 1),
    Row("batch_t1", "refine, one batch, torch 1 thread", "ms/pattern", 1),
    Row("batch_split", "refine, batch split over {cores} Python threads × 1 torch thread", "ms/pattern", 1),
    Row("batch_procs", "refine, batch split over {cores} processes × 1 torch thread (pool warm)", "ms/pattern", 1),
    Row("fft3d_t1", "64³ fftn + ifftn, torch 1 thread", "ms", 1),
    Row("fft3d_tn", "64³ fftn + ifftn, torch {cores} threads", "ms", 1),
    *scale_dask.ROWS,
]
RATIOS = [
    Ratio("`--threads 1` / default (whole process; ≥ 1: default not slower)", "rec_t1", "rec_default", 2),
    Ratio("`--threads {cores}` / default (whole process)", "rec_tn", "rec_default", 2),
    Ratio("cohere-core numpy / default (whole process)", "cohere_whole", "rec_default", 2),
    Ratio("cohere-core numpy per pattern / split over {cores} threads (in process)", "cohere_pp", "batch_split", 2),
    Ratio("torch 1 thread / {cores} threads (one batch)", "batch_tn", "batch_t1", 2),
    Ratio("one batch 1 thread / split over {cores} threads", "batch_t1", "batch_split", 2),
    Ratio("one batch 1 thread / split over {cores} processes", "batch_t1", "batch_procs", 2),
    Ratio("64³ FFT pair: 1 thread / {cores} threads", "fft3d_t1", "fft3d_tn", 2),
    *scale_dask.RATIOS,
]

# cohere-core in its own process: numpy and cohere only, the patterns from an .npy stack of
# intensities; argv: stack.npy, JSON of cohere's parameters.
COHERE_PROCESS = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, tempfile
    import numpy as np
    import cohere_core.controller.phasing as ph
    stack, params = np.load(sys.argv[1]), json.loads(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        for i, intensity in enumerate(stack):
            path = os.path.join(tmp, f"data{i}.npy")
            np.save(path, np.sqrt(intensity).astype(np.float32))
            np.random.seed(i)
            with contextlib.redirect_stdout(io.StringIO()):
                ph.create_rec(dict(params), path, "np", -1, debug=True).iterate()
    """
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=64, help="patterns in the stack and in the batch (default 64)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the simulated patterns")
    ap.add_argument("--cohere-n", type=int, default=8, help="patterns of the in-process cohere-core row (default 8)")
    ap.add_argument(
        "--process-runs",
        type=int,
        default=3,
        help="runs of each whole process per repeat, the shortest kept (default 3)",
    )
    ap.add_argument(
        "--busy", type=int, default=0, help="processes spinning on the CPU beside the whole-process rows (default 0)"
    )
    ap.add_argument("--skip-cohere", action="store_true", help="no cohere-core rows")
    ap.add_argument("--skip-batch", action="store_true", help="no in-process batch rows")
    ap.add_argument("--skip-fft3d", action="store_true", help="no 3D FFT rows")
    ap.add_argument("--skip-dask", action="store_true", help="no Dask rows (live, reprocess)")
    scale_dask.add_arguments(ap)
    ap.set_defaults(cores=CORES)


def params(args: argparse.Namespace) -> dict:
    cfg = RefineConfig()
    return {
        "patterns": f"{args.n} simulated 64×64 (default SimulationConfig, seed {args.seed})",
        "reconstruct": "default settings (CNN start, seeded 600-iteration schedule), --device cpu",
        "whole processes": f"each row the shortest of {args.process_runs} runs per repeat, order rotated"
        + (f", beside {args.busy} processes spinning on the CPU" if args.busy else ""),
        "cohere-core": f"{COHERE_SEQUENCE}, random start, shrink-wrap from {cfg.shrinkwrap_start} every "
        f"{cfg.shrinkwrap_every}",
        "in-process batch": f"{cfg.schedule}, random start",
        "cores": args.cores,
        **({} if args.skip_dask else scale_dask.params(args)),
    }


def _user_env() -> dict[str, str]:
    """This environment less what a pip user would not have set (``./run`` exports them)."""
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}


def _warm_worker() -> None:
    """A pool process: one torch thread, numba's kernels loaded."""
    torch.set_num_threads(1)
    refine(torch.ones((1, 64, 64)), config=RefineConfig(schedule="HIO**2 * ER**2", shrinkwrap=False))


def _refine_chi2(modulus: np.ndarray, seed: int) -> np.ndarray:
    return refine(torch.from_numpy(modulus), seed=seed).chi2.numpy()


def setup(args: argparse.Namespace) -> dict:
    tmp = tempfile.TemporaryDirectory()
    moduli = simulate_batch(args.n, seed=args.seed, device="cpu").modulus.numpy()
    stack = Path(tmp.name) / "stack.npy"
    np.save(stack, (moduli.astype(np.float64) ** 2).astype(np.float32))
    state: dict = {"tmp": tmp, "stack": stack, "moduli": moduli, "pool": None}
    _reconstruct(state, [])  # untimed: numba's cache filled, as a user's second run finds it
    if not args.skip_batch:
        _warm_worker()
        torch.set_num_threads(CORES)
        context = multiprocessing.get_context("spawn")
        state["pool"] = ProcessPoolExecutor(CORES, mp_context=context, initializer=_warm_worker)
        list(state["pool"].map(_refine_chi2, [moduli[:1]] * CORES, range(CORES)))  # start and warm every process
    state["dask"] = None if args.skip_dask else scale_dask.setup(args)
    return state


def _reconstruct(state: dict, options: list[str]) -> float:
    """Seconds of one whole ``cdi-beamline reconstruct`` process of the stack."""
    out = Path(state["tmp"].name) / "out.h5"
    cmd = [sys.executable, "-m", "cdi_beamline.cli", "reconstruct", str(state["stack"]), "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--device", "cpu", *options], env=_user_env(), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


#: the ``reconstruct`` rows and their options; :func:`measure_reconstruct` rotates their order
RECONSTRUCT_VARIANTS = {
    "rec_default": [],
    "rec_t1": ["--threads", "1"],
    "rec_tn": ["--threads", str(CORES)],
    "rec_fixed": ["--iterations", "0"],
}


def _cohere(state: dict) -> float:
    """Seconds of one whole cohere-core process of the stack."""
    cmd = [sys.executable, "-c", COHERE_PROCESS, str(state["stack"]), json.dumps(cohere_params(RefineConfig()))]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=_user_env(), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure_reconstruct(args: argparse.Namespace, state: dict) -> dict:
    """The whole-process rows, each the shortest of ``--process-runs`` runs (as ``timeit``
    reports: the run least disturbed by the rest of the machine; one process's start alone
    varies by ±0.5 s here, as much as the default's gain). The first process after other work
    runs 1–3 s slower (2-core CPU, 2026-12-03: 6.1 s, then 5.1 s for the same command), so an
    untimed ``--iterations 0`` process goes first, and each round of runs rotates the order.
    With ``--busy N``, N processes spinning on the CPU run beside them (a busy machine)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        _reconstruct(state, RECONSTRUCT_VARIANTS["rec_fixed"])
        runs: dict[str, list[float]] = {}
        for _ in range(args.process_runs):
            turn = state["turn"] = state.get("turn", -1) + 1
            keys = list(RECONSTRUCT_VARIANTS)
            keys = keys[turn % len(keys) :] + keys[: turn % len(keys)]
            for key in keys:
                runs.setdefault(key, []).append(_reconstruct(state, RECONSTRUCT_VARIANTS[key]))
            if not args.skip_cohere:
                runs.setdefault("cohere_whole", []).append(_cohere(state))
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    return {key: min(times) for key, times in runs.items()}


def measure_batch(args: argparse.Namespace, state: dict) -> dict:
    moduli = state["moduli"]
    n = len(moduli)
    per_pattern = {}

    def timed(key, fn):
        t0 = time.perf_counter()
        fn()
        per_pattern[key] = (time.perf_counter() - t0) / n * 1e3

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(CORES)
        timed("batch_tn", lambda: _refine_chi2(moduli, 0))
        torch.set_num_threads(1)
        timed("batch_t1", lambda: _refine_chi2(moduli, 0))
        timed("batch_split", lambda: resources.split_batch(lambda s: _refine_chi2(moduli[s], 0), n, CORES))
        parts = [moduli[s] for s in resources.slices(n, CORES)]
        timed("batch_procs", lambda: list(state["pool"].map(_refine_chi2, parts, [0] * len(parts))))
        if not args.skip_cohere:  # one thread, as numpy's FFT runs
            per_pattern["cohere_pp"] = run_cohere(moduli[: args.cohere_n], "np", RefineConfig())[0] * 1e3
    finally:
        torch.set_num_threads(threads)
    return per_pattern


def measure_fft3d(args: argparse.Namespace, state: dict) -> dict:
    x = torch.randn((64, 64, 64), dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    out, threads = {}, torch.get_num_threads()
    try:
        for key, count in (("fft3d_t1", 1), ("fft3d_tn", CORES)):
            torch.set_num_threads(count)
            torch.fft.ifftn(torch.fft.fftn(x))  # first call: plans
            t0, pairs = time.perf_counter(), 50
            for _ in range(pairs):
                torch.fft.ifftn(torch.fft.fftn(x))
            out[key] = (time.perf_counter() - t0) / pairs * 1e3
    finally:
        torch.set_num_threads(threads)
    return out


def measure(args: argparse.Namespace, state: dict) -> dict:
    out = measure_reconstruct(args, state)
    if not args.skip_batch:
        out.update(measure_batch(args, state))
    if not args.skip_fft3d:
        out.update(measure_fft3d(args, state))
    if state["dask"] is not None:
        out.update(scale_dask.measure(args, state["dask"]))
    return out


def teardown(state: dict) -> None:
    if state["pool"] is not None:
        state["pool"].shutdown()
    if state["dask"] is not None:
        scale_dask.teardown(state["dask"])
    state["tmp"].cleanup()


if __name__ == "__main__":
    main(sys.modules[__name__])
