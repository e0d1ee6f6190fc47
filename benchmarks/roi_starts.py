"""CNN start vs random start on frames larger than the CNN's 64×64 input (128×128 here).

Each of the pipeline's CNN starts for a 128×128 frame (``ReconstructorConfig.cnn_large_frames``:
the binned pattern's object, the central 64×64's upsampled, the better fit of the two per
frame) against its random start (``--repeats`` seeds per frame, their median), all refined as
the pipeline refines them (``ReconstructorConfig.build(init=..., iterations=n)``, n in
``--iterations``); median and worst decile (p90) of the returned chi², and on how many frames
the CNN start ended lower than the random one:

- APS: the raw 128×128 cut of the shipped APS 34-ID-C rocking scan through
  :class:`cdi_beamline.preprocess.Preprocessor` (dark, flat field, ROI the whole cut): the
  frames at the top of the rocking curve ``--aps-frames`` and the scan's centre
  ``--scan-frames`` (weak frames included);
- simulated, ``--n`` patterns (``simulate_batch``, seed ``--seed``) of 128×128: "compact", the
  simulator's 32-px object padded to 128 (oversampled 4x); "extended", the same particle
  Fourier-interpolated to 64 px (oversampled 2x: the same object seen to twice the q range).

    PYTHONPATH=. python benchmarks/roi_starts.py [--n 16] [--out benchmarks/results/roi_starts.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from cdi_beamline.config import PreprocessConfig, ReconstructorConfig
from cdi_beamline.devices import ApsRockingSource
from cdi_beamline.fourier import embed_centre, fourier_modulus, fourier_upsample
from cdi_beamline.physics import simulate_batch
from cdi_beamline.pipeline import Reconstructor
from cdi_beamline.preprocess import Preprocessor


def aps_frames(frames: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(moduli (N, 128, 128), mask (128, 128)) of the raw APS frames, dark + flat corrected."""
    src = ApsRockingSource(corrected=False, crop=128)
    pre = Preprocessor(PreprocessConfig(roi=(0, 0, 128, 128)), dark=src.dark, flat=src.whitefield)
    out = pre.apply(src.frames[frames])
    assert not any(out.reason), out.reason
    return out.modulus, out.mask


def simulated(n: int, seed: int, extended: bool) -> np.ndarray:
    """(n, 128, 128) moduli of simulated particles, 32 px (compact) or 64 px (extended) across."""
    b = simulate_batch(n, seed=seed, device="cpu")
    obj = torch.polar(b.amplitude, b.phase)
    if extended:
        support = b.support.repeat_interleave(2, -2).repeat_interleave(2, -1)
        obj = fourier_upsample(obj, (64, 64)) * support
    return fourier_modulus(embed_centre(obj, (128, 128))).numpy()


WAYS = ("fit", "binned", "central")


def compare(modulus: np.ndarray, mask: np.ndarray | None, iterations: int, repeats: int) -> dict:
    def build(init: str, **kw) -> Reconstructor:
        cfg = ReconstructorConfig.build(
            init=init, iterations=iterations, quantity="modulus", quality={"max_chi2": None}, **kw
        )
        return Reconstructor(cfg, device="cpu")

    def summary(c: np.ndarray) -> dict[str, float]:
        return {"median": float(np.median(c)), "p90": float(np.quantile(c, 0.9))}

    rnd = np.stack([build("random").reconstruct(modulus, mask=mask, seed=s).chi2 for s in range(repeats)])
    rnd_median = np.median(rnd, 0)  # per frame, over seeds
    out: dict = {"frames": len(modulus), "random": summary(rnd_median)}
    for way in WAYS:
        cnn = build("cnn", cnn_large_frames=way).reconstruct(modulus, mask=mask, seed=0)
        out[way] = {
            **summary(cnn.chi2),
            "start": summary(cnn.chi2_history[:, 0]),
            "lower_than_random": int((cnn.chi2 < rnd_median).sum()),
            "seeds": dict(Counter(cnn.init)),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aps-frames", default="95-103")
    p.add_argument("--scan-frames", default="36-163")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=20261203)
    p.add_argument("--iterations", default="100,600", help="comma-separated counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/roi_starts.json"))
    args = p.parse_args()
    torch.set_num_threads(1)

    def frames(spec: str) -> list[int]:
        lo, hi = (int(x) for x in spec.split("-"))
        return list(range(lo, hi + 1))

    sets = {
        "aps_raw_128_peak": aps_frames(frames(args.aps_frames)),
        "aps_raw_128_scan": aps_frames(frames(args.scan_frames)),
        "simulated_compact_128": (simulated(args.n, args.seed, extended=False), None),
        "simulated_extended_128": (simulated(args.n, args.seed, extended=True), None),
    }
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} torch thread",
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": {},
    }
    for name, (modulus, mask) in sets.items():
        for n in (int(x) for x in args.iterations.split(",")):
            record["results"].setdefault(name, {})[str(n)] = compare(modulus, mask, n, args.repeats)
            print(name, n, json.dumps(record["results"][name][str(n)]), flush=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
