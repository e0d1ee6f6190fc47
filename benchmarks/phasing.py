"""Phasing engine vs cohere-core: the same patterns, the same 600-iteration ER/HIO schedule
with shrink-wrap (from iteration 100, every 10, same sigma and threshold), in one repeat.

Time per pattern (wall and CPU) and the median final chi² (eq. 5, scale invariant, computed
by the same function for both codes), and the ratios cohere / ours per repeat. cohere runs
one pattern at a time (its API) after an untimed warm-up (its first ``create_rec`` costs
~0.3 s once); ours runs batches after an untimed warm-up (numba compilation). Both use one
thread (``--threads``). On the CPU our engine is also timed as its torch element-wise path
(without the numba kernels), the engine before them. On CUDA the torch path is timed eager
vs compiled (with and without CUDA graphs): frames/s at a large batch and batch-1 latency.

    ./run bench phasing [--repeats N] -- [--n 64] [--batch 64] [--cohere-n 16] [--threads 1]
    ./run bench phasing -- --device cuda --skip-cohere [--compiled-batch 4096]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch
from _compat import backend_ran, cuda_variants, torch_path
from _harness import Ratio, Row, main

from cdi_beamline.config import RefineConfig
from cdi_beamline.device import resolve_device
from cdi_beamline.phasing import chi2, refine
from cdi_beamline.physics import simulate_batch

NAME = "phasing"
TITLE = "ER/HIO + shrink-wrap, 600 iterations, 64×64: cdi_beamline vs cohere-core"
COHERE_SEQUENCE = "4*(130*HIO+20*ER)"  # == our default "(HIO**130 * ER**20)**4"
ROWS = [
    Row("ours", "cdi_beamline, batch {batch} (CPU: numba kernels)", "ms/pattern wall"),
    Row("ours_cpu", "cdi_beamline, batch {batch}", "ms/pattern CPU"),
    Row("torch_path", "cdi_beamline, torch element-wise path (no numba)", "ms/pattern wall"),
    Row("cohere_np", "cohere-core numpy, one pattern at a time", "ms/pattern wall"),
    Row("cohere_np_cpu", "cohere-core numpy, one pattern at a time", "ms/pattern CPU"),
    Row("cohere_torch", "cohere-core torch, one pattern at a time", "ms/pattern wall"),
    Row("ours_chi2", "cdi_beamline final chi², median over the patterns", "chi²", 4),
    Row("cohere_np_chi2", "cohere-core numpy final chi², median over its patterns", "chi²", 4),
    Row("cuda_eager", "CUDA torch path eager, batch {compiled_batch}", "frames/s", 0),
    Row("cuda_compiled", "CUDA compiled + CUDA graphs, batch {compiled_batch}", "frames/s", 0),
    Row("cuda_compiled_nograph", "CUDA compiled, no CUDA graphs, batch {compiled_batch}", "frames/s", 0),
    Row("cuda_eager_1", "CUDA torch path eager, batch 1", "ms", 2),
    Row("cuda_compiled_1", "CUDA compiled + CUDA graphs, batch 1", "ms", 2),
]
RATIOS = [
    Ratio("cohere-core numpy / ours (wall)", "cohere_np", "ours", 1),
    Ratio("cohere-core numpy / ours (CPU)", "cohere_np_cpu", "ours_cpu", 1),
    Ratio("cohere-core torch / ours (wall)", "cohere_torch", "ours", 1),
    Ratio("torch path / ours (wall)", "torch_path", "ours", 2),
    Ratio("CUDA compiled / eager (frames/s)", "cuda_compiled", "cuda_eager", 2),
    Ratio("CUDA eager / compiled (batch-1 latency)", "cuda_eager_1", "cuda_compiled_1", 2),
]


def run_ours(m: torch.Tensor, batch: int, cfg: RefineConfig) -> tuple[float, float, np.ndarray]:
    """(s/pattern wall, s/pattern CPU, final chi² per pattern) of our engine over ``m``."""
    out = []
    if m.device.type == "cuda":
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    for k, start in enumerate(range(0, len(m), batch)):
        out.append(refine(m[start : start + batch], config=cfg, seed=k).chi2)
    c = torch.cat(out).cpu().numpy()
    return (time.perf_counter() - w0) / len(m), (time.process_time() - c0) / len(m), c


def _median_seconds(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_cuda_variants(m: torch.Tensor, cfg: RefineConfig, batch: int) -> tuple[dict, dict]:
    """On CUDA: the torch path eager vs compiled (with and without CUDA graphs), frames/s at
    ``batch`` frames and batch-1 latency. The first runs (compilation, graph recording) are
    untimed; their seconds and what actually ran go to the info record."""
    big = m.repeat((batch + len(m) - 1) // len(m), 1, 1)[:batch].contiguous()
    one = m[:1].contiguous()
    keys = ["cuda_eager", "cuda_compiled", "cuda_compiled_nograph"]
    out, info = {}, {}
    for key, (name, c, context) in zip(keys, cuda_variants(cfg), strict=True):
        with context:
            t0 = time.perf_counter()
            ran = backend_ran(refine(big, config=c), c)
            refine(one, config=c)
            torch.cuda.synchronize(m.device)
            first = time.perf_counter() - t0

            def run_big(c=c):
                refine(big, config=c, seed=1)

            def run_one(c=c):
                refine(one, config=c, seed=1)

            out[key] = batch / _median_seconds(run_big, 3, m.device)
            latency = _median_seconds(run_one, 10, m.device) * 1e3
        if key != "cuda_compiled_nograph":
            out[key + "_1"] = latency
        info[name] = {"ran": ran, "first_runs_s": first, "batch_1_ms": latency}
    return out, info


def run_cohere(moduli: np.ndarray, pkg: str, cfg: RefineConfig) -> tuple[float, float, np.ndarray]:
    """(s/pattern wall, s/pattern CPU, final chi² per pattern) of cohere-core's ``pkg`` backend
    ("np" or "torch") over ``moduli`` (N, *spatial), 2-D or 3-D patterns, one at a time."""
    import cohere_core.controller.phasing as ph

    params = {
        "algorithm_sequence": COHERE_SEQUENCE,
        "hio_beta": cfg.beta,
        "shrink_wrap_trigger": [cfg.shrinkwrap_start, cfg.shrinkwrap_every],
        "shrink_wrap_type": "GAUSS",
        "shrink_wrap_threshold": cfg.shrinkwrap_threshold,
        "shrink_wrap_gauss_sigma": cfg.shrinkwrap_sigma,
        "initial_support_area": (cfg.init_support_size,) * (moduli.ndim - 1),
    }
    chis, wall, cpu = [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed warm-up (imports, first-call set-up), as ours gets: cohere's first
        # create_rec costs ~340 ms once, which doubled its mean per pattern over 8 patterns.
        path = os.path.join(tmp, "warmup.npy")
        np.save(path, moduli[0].astype(np.float32))
        with contextlib.redirect_stdout(io.StringIO()):
            ph.create_rec(dict(params, algorithm_sequence="5*HIO+5*ER"), path, pkg, -1, debug=True).iterate()
        for i, m in enumerate(moduli):
            path = os.path.join(tmp, f"data{i}.npy")
            np.save(path, m.astype(np.float32))
            np.random.seed(i)
            with contextlib.redirect_stdout(io.StringIO()):
                w0, c0 = time.perf_counter(), time.process_time()
                rec = ph.create_rec(dict(params), path, pkg, -1, debug=True)
                rec.iterate()
                wall += time.perf_counter() - w0
                cpu += time.process_time() - c0
            img = np.asarray(rec.ds_image if pkg == "np" else rec.ds_image.cpu().numpy())
            sup = np.asarray(rec.support if pkg == "np" else rec.support.cpu().numpy())
            # cohere keeps data with the origin in the corner and compares |ifft(image)| with it.
            pred = np.abs(np.fft.ifftn(img * sup))
            data = np.fft.fftshift(m)
            chis.append(chi2(torch.from_numpy(pred[None]).float(), torch.from_numpy(data[None]), ndim=m.ndim).item())
    return wall / len(moduli), cpu / len(moduli), np.asarray(chis)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=64, help="patterns for our engine (default 64)")
    ap.add_argument("--batch", type=int, default=64, help="our batch size (default 64)")
    ap.add_argument("--cohere-n", type=int, default=16, help="patterns for cohere-core per backend (default 16)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1, help="seed of the simulated patterns")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one thread each)")
    ap.add_argument("--skip-cohere", action="store_true", help="time our engine only")
    ap.add_argument("--skip-cohere-torch", action="store_true", help="skip cohere-core's torch backend")
    ap.add_argument("--skip-torch-path", action="store_true", help="do not time our torch element-wise path")
    ap.add_argument(
        "--compiled-batch", type=int, default=4096, help="CUDA: batch of the eager/compiled rows (0 = skip)"
    )


def params(args: argparse.Namespace) -> dict:
    cfg = RefineConfig()
    return {
        "patterns": f"{args.n} simulated (default SimulationConfig, seed {args.seed})",
        "batch": args.batch,
        "cohere-core patterns": 0 if args.skip_cohere else args.cohere_n,
        "schedule": f"{cfg.schedule} (cohere: {COHERE_SEQUENCE})",
        "shrink-wrap": f"from {cfg.shrinkwrap_start} every {cfg.shrinkwrap_every}, sigma {cfg.shrinkwrap_sigma}, "
        f"threshold {cfg.shrinkwrap_threshold}",
        "threads": args.threads,
        "device": args.device,
    }


def setup(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = RefineConfig()
    moduli = simulate_batch(args.n, seed=args.seed, device="cpu").modulus.numpy()
    m = torch.from_numpy(moduli).to(device)
    warm = cfg.model_copy(update={"schedule": "HIO**5 * ER**5"})
    refine(m[:2], config=warm)  # numba compilation, first calls
    if device.type == "cpu" and not args.skip_torch_path:
        with torch_path(warm) as c:
            refine(m[:2], config=c)
    packages = []
    if not args.skip_cohere:
        packages = ["np"] if args.skip_cohere_torch else ["np", "torch"]
    return {"cfg": cfg, "moduli": moduli, "m": m, "device": device, "cohere": packages}


def measure(args: argparse.Namespace, state: dict) -> dict:
    cfg, m, moduli, device = state["cfg"], state["m"], state["moduli"], state["device"]
    out: dict = {"info": {}}
    w, c, ch = run_ours(m, args.batch, cfg)
    out.update(ours=w * 1e3, ours_cpu=c * 1e3, ours_chi2=float(np.median(ch)))
    out["info"]["ours_chi2"] = {
        "median": float(np.median(ch)),
        "p90": float(np.percentile(ch, 90)),
        "max": float(ch.max()),
    }
    if device.type == "cpu" and not args.skip_torch_path:
        with torch_path(cfg) as c_torch:
            w, _, _ = run_ours(m, args.batch, c_torch)
        out["torch_path"] = w * 1e3
    for pkg in list(state["cohere"]):
        key = "cohere_np" if pkg == "np" else "cohere_torch"
        try:
            w, c, ch = run_cohere(moduli[: args.cohere_n], pkg, cfg)
        except Exception as exc:  # report a backend that does not run, keep the others
            out["info"][key] = f"failed: {type(exc).__name__}: {exc}"
            state["cohere"].remove(pkg)
            continue
        out[key], out[key + "_cpu"], out[key + "_chi2"] = w * 1e3, c * 1e3, float(np.median(ch))
    if device.type == "cuda" and args.compiled_batch:
        rows, info = run_cuda_variants(m, cfg, args.compiled_batch)
        out.update(rows)
        out["info"]["cuda"] = info
    return out


if __name__ == "__main__":
    main(sys.modules[__name__])
