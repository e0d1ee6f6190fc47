"""Phasing engine vs cohere-core: the same patterns, the same 600-iteration ER/HIO schedule
with shrink-wrap (from iteration 100, every 10, same sigma and threshold), in one run.

Reports time per pattern (wall and CPU) and the distribution of final chi² (eq. 5,
scale invariant, computed by the same function for both codes), and the ratios
cohere / ours. cohere runs one pattern at a time (its API); ours runs batches. On the
CPU our engine is also timed with its fused numba kernels switched off (the torch
element-wise path, i.e. the engine before those kernels), as a same-run baseline. On CUDA
the torch path is also timed eager vs fused (``RefineConfig.fused``): frames/s at a large
batch and batch-1 latency, as ratios to eager.

    .venv/bin/python benchmarks/phasing.py [--n 64] [--batch 64] [--cohere-n 8] [--device cpu]
    .venv/bin/python benchmarks/phasing.py --device cuda --skip-cohere [--fused-batch 4096]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import platform
import tempfile
import time

import numpy as np
import torch

from cdi_beamline.config import RefineConfig
from cdi_beamline.device import resolve_device
from cdi_beamline.phasing import chi2, refine
from cdi_beamline.config.schedule import parse_schedule

COHERE_SEQUENCE = "4*(130*HIO+20*ER)"  # == our default "(HIO**130 * ER**20)**4"


def patterns(n: int, seed: int) -> tuple[np.ndarray, str]:
    """n simulated moduli (64x64) from the physics package, else the APS frame n times."""
    try:
        from cdi_beamline.physics import simulate_batch

        return simulate_batch(
            n, seed=seed, device="cpu"
        ).modulus.numpy(), "simulated (cdi_beamline.physics, default SimulationConfig)"
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        frame = np.load(
            os.path.join(
                here, "..", "..", "shared", "data", "aps34idc_S0054", "aps34idc_S0054_frame099_crop64_wfcorr.npy"
            )
        )
        return np.repeat(np.sqrt(frame)[None], n, 0).astype(np.float32), "APS 34-ID-C frame 99 (repeated)"


def run_ours(moduli: np.ndarray, batch: int, device, cfg: RefineConfig) -> tuple[float, float, np.ndarray]:
    m = torch.from_numpy(moduli).to(device)
    refine(m[:2], config=cfg.model_copy(update={"schedule": "HIO**5 * ER**5"}))  # warm up
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    for k, start in enumerate(range(0, len(m), batch)):
        out.append(refine(m[start : start + batch], config=cfg, seed=k).chi2)
    c = torch.cat(out).cpu().numpy()
    return (time.perf_counter() - w0) / len(m), (time.process_time() - c0) / len(m), c


def run_ours_torch_path(moduli: np.ndarray, batch: int, device, cfg: RefineConfig) -> tuple[float, float, np.ndarray]:
    """:func:`run_ours` with the fused CPU kernels switched off (torch element-wise path)."""
    module = importlib.import_module("cdi_beamline.phasing.refine")
    load = module._load_cpu_kernels
    module._load_cpu_kernels = lambda: None
    try:
        return run_ours(moduli, batch, device, cfg)
    finally:
        module._load_cpu_kernels = load


def _median_seconds(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_fused_comparison(moduli: np.ndarray, device, cfg: RefineConfig, batch: int) -> None:
    """On CUDA: the torch path eager vs fused (torch.compile, with and without CUDA graphs),
    frames/s at ``batch`` frames and batch-1 latency for the full schedule, as ratios to
    eager within this run. The first run of each (compilation, graph recording) is untimed
    and reported apart."""
    module = importlib.import_module("cdi_beamline.phasing.refine")
    m = torch.from_numpy(moduli).to(device)
    big = m.repeat((batch + len(m) - 1) // len(m), 1, 1)[:batch].contiguous()
    one = m[:1].contiguous()
    rows = []
    for name, fused, graphs in [
        ("eager", "off", True),
        ("fused (torch.compile + CUDA graphs)", "on", True),
        ("fused, no CUDA graphs", "on", False),
    ]:
        module._cuda_graphs = graphs
        c = cfg.model_copy(update={"fused": fused})
        try:
            t0 = time.perf_counter()
            refine(big, config=c)
            refine(one, config=c)
            torch.cuda.synchronize(device)
            first = time.perf_counter() - t0
            chis = []
            t_big = _median_seconds(lambda: chis.append(refine(big, config=c, seed=1).chi2), 3, device)
            t_one = _median_seconds(lambda: refine(one, config=c, seed=1), 10, device)
        finally:
            module._cuda_graphs = True
        if fused == "on" and module._fused_failure is not None:
            print(f"{name}: not available ({module._fused_failure}); ran eager")
        rows.append((name, batch / t_big, t_one, first, chis[-1].cpu().numpy()))
    _, base_fps, base_lat, _, _ = rows[0]
    print(
        f"torch path on {torch.cuda.get_device_name(device)}, {cfg.schedule} ({len(parse_schedule(cfg.schedule))} iterations), "
        f"64x64: frames/s at batch {batch}, latency at batch 1 (medians of 3 and 10 runs)"
    )
    print(
        f"{'torch path':38s} {'frames/s':>10s} {'vs eager':>9s} {'batch-1 ms':>11s} {'vs eager':>9s} {'first runs s':>13s}   final chi²"
    )
    for name, fps, lat, first, ch in rows:
        print(
            f"{name:38s} {fps:10.0f} {fps / base_fps:8.2f}x {lat * 1e3:11.1f} {base_lat / lat:8.2f}x {first:13.1f}   {summary(ch)} (n={len(ch)})"
        )


def run_cohere(moduli: np.ndarray, pkg: str, cfg: RefineConfig) -> tuple[float, float, np.ndarray]:
    import cohere_core.controller.phasing as ph

    params = {
        "algorithm_sequence": COHERE_SEQUENCE,
        "hio_beta": cfg.beta,
        "shrink_wrap_trigger": [cfg.shrinkwrap_start, cfg.shrinkwrap_every],
        "shrink_wrap_type": "GAUSS",
        "shrink_wrap_threshold": cfg.shrinkwrap_threshold,
        "shrink_wrap_gauss_sigma": cfg.shrinkwrap_sigma,
        "initial_support_area": (cfg.init_support_size, cfg.init_support_size),
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
            pred = np.abs(np.fft.ifft2(img * sup))
            data = np.fft.fftshift(m)
            chis.append(chi2(torch.from_numpy(pred[None]).float(), torch.from_numpy(data[None])).item())
    return wall / len(moduli), cpu / len(moduli), np.asarray(chis)


def run_nns(n: int, queries: int, seed: int) -> None:
    """Nearest-neighbour search over ``n`` references of 64x64: build time, ms per query
    (batched), and whether queries taken from the index return themselves."""
    from cdi_beamline.phasing import NearestNeighbourIndex

    g = torch.Generator().manual_seed(seed)
    # Smooth non-negative random moduli (cheap stand-ins with realistic PCA spectra).
    mod = torch.cat(
        [
            torch.nn.functional.interpolate(torch.rand(c, 1, 8, 8, generator=g), size=(64, 64), mode="bicubic")[
                :, 0
            ].abs()
            for c in [min(8192, n - i) for i in range(0, n, 8192)]
        ]
    )
    dummy = torch.zeros(n, 4, 4)
    t0 = time.perf_counter()
    index = NearestNeighbourIndex(mod, dummy, dummy, dummy.bool())
    build = time.perf_counter() - t0
    pick = torch.randperm(n, generator=g)[:queries]
    q = mod[pick] * 3.0
    index.query(q[:8])
    t0 = time.perf_counter()
    match = index.query(q)
    per = (time.perf_counter() - t0) / queries
    exact = (match.index == pick).float().mean().item()
    # Brute force on a subset of the queries, for the ratio.
    t0 = time.perf_counter()
    qv = torch.nn.functional.normalize(q[:16].reshape(16, -1), dim=1)
    best = torch.cat([(qv @ c.T) for c in index.vectors.split(32768)], 1).argmax(1)
    brute = (time.perf_counter() - t0) / 16
    print(
        f"NNS over {n} references (64x64): build {build:.1f} s; {per * 1e3:.2f} ms/query in a batch of {queries} "
        f"(brute-force matmul {brute * 1e3:.1f} ms/query, {brute / per:.0f}x slower); "
        f"exact item returned for {exact:.0%} of queries taken from the index "
        f"(brute force agrees: {(best == pick[:16]).float().mean().item():.0%})"
    )


def summary(c: np.ndarray) -> str:
    return f"chi² median {np.median(c):.4f}  p90 {np.percentile(c, 90):.4f}  max {c.max():.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="patterns for our engine (default 64)")
    ap.add_argument("--batch", type=int, default=64, help="our batch size (default 64)")
    ap.add_argument("--cohere-n", type=int, default=8, help="patterns for cohere-core per backend (default 8)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-cohere", action="store_true", help="time our engine only")
    ap.add_argument(
        "--skip-torch-path", action="store_true", help="do not also time our CPU engine without its numba kernels"
    )
    ap.add_argument("--nns", type=int, default=0, metavar="N", help="also time NNS over N references (e.g. 150000)")
    ap.add_argument(
        "--fused-batch",
        type=int,
        default=4096,
        help="on CUDA: batch of the eager vs fused torch-path rows (default 4096; 0 = skip them)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.nns:
        run_nns(args.nns, 256, args.seed)
    device = resolve_device(args.device)
    cfg = RefineConfig()
    moduli, source = patterns(args.n, args.seed)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}"
    )
    print(
        f"patterns: {source}; schedule {cfg.schedule} (cohere: {COHERE_SEQUENCE}); shrink-wrap from "
        f"{cfg.shrinkwrap_start} every {cfg.shrinkwrap_every}, sigma {cfg.shrinkwrap_sigma}, threshold {cfg.shrinkwrap_threshold}"
    )
    rows = []
    w, c, ch = run_ours(moduli, args.batch, device, cfg)
    rows.append((f"cdi_beamline (batch {args.batch}, {device.type})", w, c, ch))
    if device.type == "cpu" and not args.skip_torch_path:
        w, c, ch = run_ours_torch_path(moduli, args.batch, device, cfg)
        rows.append(("cdi_beamline, torch element-wise path", w, c, ch))
    for pkg in () if args.skip_cohere else ("np", "torch"):
        try:
            w2, c2, ch2 = run_cohere(moduli[: args.cohere_n], pkg, cfg)
            rows.append((f"cohere-core {pkg} (one at a time)", w2, c2, ch2))
        except Exception as exc:  # report a backend that does not run, keep the others
            print(f"cohere-core {pkg}: failed: {type(exc).__name__}: {exc}")
    base_w, base_c = rows[0][1], rows[0][2]
    print(f"{'engine':40s} {'ms/pattern wall':>16s} {'ms/pattern CPU':>15s} {'vs ours: wall; CPU':>19s}   final chi²")
    for name, w, c, ch in rows:
        ratio = f"{w / base_w:.1f}x; {c / base_c:.1f}x"
        print(f"{name:40s} {w * 1e3:16.1f} {c * 1e3:15.1f} {ratio:>19s}   {summary(ch)} (n={len(ch)})")
    if device.type == "cuda" and args.fused_batch:
        run_fused_comparison(moduli, device, cfg, args.fused_batch)


if __name__ == "__main__":
    main()
