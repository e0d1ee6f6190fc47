"""Simulator throughput: patterns/s of ``simulate_batch`` on the CPU (and CUDA when present),
as ratios against a plain-numpy, one-pattern-at-a-time generator of the same physics
measured in the same run.

    .venv/bin/python benchmarks/simulate.py [--n 2048] [--gpu-n 200000]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

from cdi_beamline.config import SimulationConfig
from cdi_beamline.physics import simulate_batch


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
    numpy_pattern(rng, cfg)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        numpy_pattern(rng, cfg)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def rate_torch(n: int, cfg: SimulationConfig, device: str, repeats: int = 3) -> tuple[float, float]:
    """Best of ``repeats``: (patterns per wall-clock second, patterns per CPU second)."""
    simulate_batch(min(n, 2 * (cfg.chunk_size or 64)), cfg, device=device)  # warm-up
    best, best_cpu = math.inf, math.inf
    for r in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        batch = simulate_batch(n, cfg, seed=r, device=device)
        batch.modulus.sum().item()  # waits for the device
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
        del batch
    return n / best, n / best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="patterns per CPU measurement")
    parser.add_argument("--numpy-n", type=int, default=48, help="patterns of the numpy baseline")
    parser.add_argument("--gpu-n", type=int, default=200_000, help="patterns per GPU measurement")
    args = parser.parse_args()

    cfg = SimulationConfig()
    threads = torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} ({threads} threads)")  # fmt: skip
    base = rate_numpy(args.numpy_n, cfg)
    rows = [("numpy, one pattern at a time (baseline)", base)]
    for nthreads in sorted({1, threads}):
        torch.set_num_threads(nthreads)
        for chunk in (None, 128):
            label = f"torch CPU, {nthreads} thread(s), chunk {chunk or 'auto (32)'}"
            rows.append((label, rate_torch(args.n, cfg.model_copy(update={"chunk_size": chunk}), "cpu")))
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for chunk in (None, 16384):
            label = f"torch CUDA {name}, chunk {chunk or 'auto (4096)'}"
            rows.append((label, rate_torch(args.gpu_n, cfg.model_copy(update={"chunk_size": chunk}), "cuda")))
    width = max(len(r[0]) for r in rows)
    # Wall-clock rates suffer when other processes share the cores; the rate per CPU second
    # of this process (all its threads) is what one free core would give.
    print(f"{'generator':<{width}}  patterns/s  x baseline  patterns/CPU-s  x baseline")
    for label, (rate, per_cpu) in rows:
        print(f"{label:<{width}}  {rate:10.0f}  {rate / base[0]:10.1f}  {per_cpu:13.0f}  {per_cpu / base[1]:10.1f}")


if __name__ == "__main__":
    main()
