"""Nearest-neighbour search (the paper's NNS start) over N simulated-like references of 64×64:
index build time, ms per query in a batch, against a brute-force matmul over the same
normalised vectors, and how often a query taken from the index returns itself.

    ./run bench nns [--repeats N] -- [--n 150000] [--queries 256]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _harness import Ratio, Row, main

from cdi_beamline.phasing import NearestNeighbourIndex

NAME = "nns"
TITLE = "Nearest-neighbour search over 64×64 references"
ROWS = [
    Row("build", "index build", "s", 1),
    Row("query", "query, batched", "ms/query", 2),
    Row("brute", "brute-force matmul over the index's vectors", "ms/query", 1),
    Row("exact", "queries taken from the index that return themselves", "%", 0),
]
RATIOS = [Ratio("brute force / index (ms per query)", "brute", "query", 0)]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=150_000, help="references (default 150000)")
    ap.add_argument("--queries", type=int, default=256, help="queries per batch (default 256)")
    ap.add_argument("--seed", type=int, default=1)


def params(args: argparse.Namespace) -> dict:
    return {"references": args.n, "queries": args.queries, "data": "smooth random moduli (bicubic 8×8 → 64×64)"}


def setup(args: argparse.Namespace) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    # Smooth non-negative random moduli (cheap stand-ins with realistic PCA spectra).
    chunks = [min(8192, args.n - i) for i in range(0, args.n, 8192)]
    mod = torch.cat(
        [
            torch.nn.functional.interpolate(torch.rand(c, 1, 8, 8, generator=g), size=(64, 64), mode="bicubic")[
                :, 0
            ].abs()
            for c in chunks
        ]
    )
    return {"mod": mod, "g": g}


def measure(args: argparse.Namespace, state: dict) -> dict:
    mod, g, n = state["mod"], state["g"], args.n
    dummy = torch.zeros(n, 4, 4)
    t0 = time.perf_counter()
    index = NearestNeighbourIndex(mod, dummy, dummy, dummy.bool())
    build = time.perf_counter() - t0
    pick = torch.randperm(n, generator=g)[: args.queries]
    q = mod[pick] * 3.0
    index.query(q[:8])
    t0 = time.perf_counter()
    match = index.query(q)
    per = (time.perf_counter() - t0) / args.queries
    t0 = time.perf_counter()
    qv = torch.nn.functional.normalize(q[:16].reshape(16, -1), dim=1)
    best = torch.cat([(qv @ c.T) for c in index.vectors.split(32768)], 1).argmax(1)
    brute = (time.perf_counter() - t0) / 16
    return {
        "build": build,
        "query": per * 1e3,
        "brute": brute * 1e3,
        "exact": 100 * (match.index == pick).float().mean().item(),
        "info": {"brute_force_agrees": (best == pick[:16]).float().mean().item()},
    }


if __name__ == "__main__":
    main(sys.modules[__name__])
