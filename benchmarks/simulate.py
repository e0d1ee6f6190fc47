"""Simulator throughput: patterns/s of ``simulate_batch`` on the CPU (and CUDA when present),
as ratios against a plain-numpy, one-pattern-at-a-time generator of the same physics
measured in the same repeat. "patterns/CPU-s" divides by the CPU time of this process (all
its threads): what one free core would give on a shared machine.

    ./run bench simulate [--repeats N] -- [--n 2048] [--numpy-n 48] [--gpu-n 200000]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from _harness import Ratio, Row, main

from cdi_beamline.config import SimulationConfig
from cdi_beamline.physics import simulate_batch

NAME = "simulate"
TITLE = "Simulator: patterns/s of simulate_batch vs a plain-numpy generator"
CORES = os.cpu_count() or 1
ROWS = [
    Row("numpy", "numpy, one pattern at a time (baseline)", "patterns/s", 0),
    Row("numpy_cpu", "numpy, one pattern at a time (baseline)", "patterns/CPU-s", 0),
    Row("torch1", "simulate_batch, torch CPU, 1 thread, auto chunk", "patterns/s", 0),
    Row("torch1_cpu", "simulate_batch, torch CPU, 1 thread, auto chunk", "patterns/CPU-s", 0),
    Row("torchN", f"simulate_batch, torch CPU, {CORES} threads, auto chunk", "patterns/s", 0),
    Row("cuda", "simulate_batch, CUDA, auto chunk", "patterns/s", 0),
]
RATIOS = [
    Ratio("1 thread / numpy (patterns/s)", "torch1", "numpy", 1),
    Ratio("1 thread / numpy (patterns/CPU-s)", "torch1_cpu", "numpy_cpu", 1),
    Ratio(f"{CORES} threads / numpy (patterns/s)", "torchN", "numpy", 1),
    Ratio("CUDA / numpy (patterns/s)", "cuda", "numpy", 0),
]


def numpy_pattern(rng: np.random.Generator, cfg: SimulationConfig) -> np.ndarray:
    """One pattern the plain way: dense 32^3 grid, numpy FFTs, the same steps as the simulator."""
    s = 32
    a, b, c, e, n, lx, ly, lz, span = (
        rng.uniform(*getattr(cfg, k)) for k in ("a", "b", "c", "e", "n", "Lx", "Ly", "Lz", "phase_span")
    )
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    R = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip
    ax = np.arange(s) - s // 2
    Z, Y, X = np.meshgrid(ax, ax, ax, indexing="ij")
    lab = np.stack([X, Y, Z]).reshape(3, -1).astype(np.float64)
    # (no fit-to-grid scaling: the bounds are drawn within the grid here)
    u, v, wz = (R.T @ lab) / np.array([[a], [b], [c]])
    f = (np.abs(u) ** (2 / e) + np.abs(v) ** (2 / e)) ** (e / n) + np.abs(wz) ** (2 / n)
    r = np.maximum(np.linalg.norm(lab, axis=0), 1e-3)
    with np.errstate(divide="ignore"):
        d = r * (1 - f ** (-n / 2))
    from scipy.special import erfc

    shape = (0.5 * erfc(d / (math.sqrt(2) * cfg.edge_sigma))).reshape(s, s, s)
    k = 2 * np.pi * np.fft.fftfreq(s)
    KZ, KY, KX = np.meshgrid(k, k, k, indexing="ij")
    qv = np.stack([KX, KY, KZ]).reshape(3, -1)
    C = R @ np.diag([lx**2, ly**2, lz**2]) @ R.T
    gauss = np.exp(-0.5 * np.einsum("iv,ij,jv->v", qv, C, qv)).reshape(s, s, s)
    phi = np.fft.ifftn(np.fft.fftn(rng.normal(size=(s, s, s))) * gauss).real
    inside = shape > 0.5
    lo, hi = phi[inside].min(), phi[inside].max()
    phi = (phi - (lo + hi) / 2) * span / (hi - lo)
    proj = (shape * np.exp(1j * phi)).sum(0)
    amp = np.abs(proj)
    support = amp > cfg.support_threshold * amp.max()
    proj = np.where(support, proj, 0)
    proj *= np.conj(proj.sum()) / abs(proj.sum())
    big = np.zeros((64, 64), complex)
    big[16:48, 16:48] = proj / amp.max()
    return np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(big), norm="ortho"))).astype(np.float32)


def rate_numpy(n: int, cfg: SimulationConfig) -> tuple[float, float]:
    """(patterns per wall-clock second, patterns per CPU second of this process)."""
    rng = np.random.default_rng(0)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        numpy_pattern(rng, cfg)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def rate_torch(n: int, cfg: SimulationConfig, device: str, seed: int) -> tuple[float, float]:
    """(patterns per wall-clock second, patterns per CPU second) of one ``simulate_batch`` call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    batch = simulate_batch(n, cfg, seed=seed, device=device)
    batch.modulus.sum().item()  # waits for the device
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=2048, help="patterns per CPU measurement (default 2048)")
    ap.add_argument("--numpy-n", type=int, default=48, help="patterns of the numpy baseline (default 48)")
    ap.add_argument("--gpu-n", type=int, default=200_000, help="patterns per GPU measurement (default 200000)")


def params(args: argparse.Namespace) -> dict:
    return {"patterns (torch)": args.n, "patterns (numpy)": args.numpy_n, "config": "default SimulationConfig"}


def setup(args: argparse.Namespace) -> dict:
    cfg = SimulationConfig()
    numpy_pattern(np.random.default_rng(0), cfg)  # warm-up: imports, first FFT plans
    simulate_batch(args.n, cfg, device="cpu")
    if torch.cuda.is_available():
        simulate_batch(4096, cfg, device="cuda")
    return {"cfg": cfg, "repeat": 0}


def measure(args: argparse.Namespace, state: dict) -> dict:
    cfg, seed = state["cfg"], state["repeat"]
    state["repeat"] += 1
    threads = torch.get_num_threads()
    out = {}
    out["numpy"], out["numpy_cpu"] = rate_numpy(args.numpy_n, cfg)
    try:
        torch.set_num_threads(1)
        out["torch1"], out["torch1_cpu"] = rate_torch(args.n, cfg, "cpu", seed)
        torch.set_num_threads(CORES)
        out["torchN"], _ = rate_torch(args.n, cfg, "cpu", seed)
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        out["cuda"], _ = rate_torch(args.gpu_n, cfg, "cuda", seed)
    return out


if __name__ == "__main__":
    main(sys.modules[__name__])
