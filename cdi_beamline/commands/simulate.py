"""``cdi-beamline simulate``: write a data set of the paper's simulated patterns to HDF5."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import CDIValueError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate diffraction patterns of random particles (Wu et al. 2021) into an HDF5 file",
        description="Superellipsoid particles (eq. 2) with Gaussian-correlated phase (eq. 3), rotated "
        "uniformly in 3D and projected along the beam. Writes FILE.h5 with modulus (N,64,64) float32, "
        "amplitude and phase (N,32,32) float32 (radians), support (N,32,32) bool, mask (N,64,64) bool "
        "(with --mask), params/<name> per-pattern generator parameters, and the config (JSON), seed, "
        "package version and FFT convention as attributes. Without --photons the modulus is exactly "
        "|FFT| of amplitude*exp(i*phase) centred in 64x64.",
    )
    p.add_argument("--n", type=int, required=True, help="number of patterns (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0; default 0)")
    p.add_argument("--out", required=True, metavar="FILE.h5", help="output HDF5 file (overwritten)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:n] (default auto)")
    p.add_argument("--config", metavar="FILE", help="SimulationConfig as JSON or YAML (fields: docs/simulator.md)")
    p.add_argument("--photons", type=float, help="expected photons per pattern: Poisson noise (default: noiseless)")
    p.add_argument("--mask", action="store_true",
                   help="mask a 3-pixel beamstop and detector gaps (rows 44-45, cols 20-21)")  # fmt: skip
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(config_path: str | None, photons: float | None, mask: bool, device=None):
    """SimulationConfig from an optional file plus the command-line overrides, validated once.

    The chunk size is resolved for ``device`` (it is part of the random stream, so the file
    records the one used).
    """
    from ..config import DEFAULT_MASK, SimulationConfig, read_config_file
    from ..physics import chunk_size

    values = read_config_file(config_path) if config_path else {}
    detector = dict(values.get("detector") or {})
    if photons is not None:
        detector["photons"] = photons
    if mask:
        detector.update(DEFAULT_MASK)
    if detector:
        values["detector"] = detector
    if device is not None and values.get("chunk_size") is None:
        values["chunk_size"] = chunk_size(SimulationConfig.build(**values), device)
    return SimulationConfig.build(**values)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..device import resolve_device
    from ..physics import H5Writer, iter_batches

    if args.n < 1:
        raise CDIValueError(f"--n: the number of patterns must be >= 1, got {args.n}")
    if args.seed < 0:
        raise CDIValueError(f"--seed must be >= 0, got {args.seed}")
    if args.threads is not None:
        if args.threads < 1:
            raise CDIValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    config = build_config(args.config, args.photons, args.mask, dev)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    start = time.perf_counter()
    bar = tqdm(total=args.n, unit="pattern", disable=args.quiet or args.n < 4 * config.chunk_size, file=sys.stderr)
    try:
        with H5Writer(partial, args.n, config, seed=args.seed) as writer:
            for batch in iter_batches(args.n, config, seed=args.seed, device=dev):
                writer.append(batch)
                bar.update(len(batch))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    os.replace(partial, out)
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n} patterns to {out} ({args.n / elapsed:.0f} patterns/s on {dev}, seed {args.seed})")
    return 0
