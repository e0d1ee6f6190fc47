"""Live pipeline benchmark: RunEngine -> LiveReconstruction -> Reconstructor -> Tiled.

Measured in one run, on one machine:

1. the RunEngine's own rate: ``count`` of a 64x64 replay detector, no callback;
2. the same scan with LiveReconstruction subscribed and the worker held: the callback's own
   cost in the RunEngine thread (find the frame, enqueue);
3. end to end: raw run + derived run written to an embedded Tiled server, from scan start
   until every result is in Tiled; frames lost counted from what Tiled returns; the scan
   rate here includes the CPU the worker takes from the scan on a small machine;
4. baseline: the same frames through ``Reconstructor.reconstruct`` offline, same batches.

Run: ``.venv/bin/python benchmarks/live.py [--frames 1000] [--iterations 100] [--init cnn]``
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--init", default="cnn", choices=("cnn", "random"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="RunEngine-only scans per variant (median)")
    ap.add_argument("--data-dir", help="keep the Tiled data here (default: a temporary folder)")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch
    from bluesky import RunEngine
    from bluesky.plans import count

    from cdi_beamline.callbacks import LiveReconstruction, LiveSession
    from cdi_beamline.config import LiveConfig, ReconstructorConfig, StoreConfig
    from cdi_beamline.devices import FrameSource, ReplayDetector, SyntheticSource
    from cdi_beamline.pipeline import Reconstructor
    from cdi_beamline.store import load_results

    class MemorySource(FrameSource):
        """Pre-simulated frames in memory, so that the scan does not pay for the simulator."""

        def __init__(self, frames):
            self.frames, self.n_frames, self.shape = frames, len(frames), frames.shape[1:]

        def _frame(self, i):
            return self.frames[i]

        def describe(self):
            return {"source": "memory", "n_frames": self.n_frames}

    n = args.frames
    synth = SyntheticSource(n=n, seed=0)
    frames = np.stack([synth.frame(i) for i in range(n)])
    source = MemorySource(frames)
    rec = Reconstructor(
        ReconstructorConfig(init=args.init, iterations=args.iterations, batch_size=args.batch_size), device=args.device
    )
    print(
        f"machine: {torch.get_num_threads()} torch threads, device {rec.device}; "
        f"{n} frames 64x64, init={args.init}, {args.iterations} iterations, batch {args.batch_size}"
    )

    def scan_rate(cb=None) -> float:
        RE = RunEngine({})
        if cb is not None:
            RE.subscribe(cb)
        det = ReplayDetector(source, name="det")
        t = time.perf_counter()
        RE(count([det], n))
        return n / (time.perf_counter() - t)

    tmp = Path(args.data_dir or tempfile.mkdtemp(prefix="cdi-live-bench-"))

    # 1 + 2: the scan alone, with the callback (worker held), with the worker running
    class Held:
        """Holds the worker during the scan (the callback only enqueues), then returns
        empty results at once: measures the RunEngine-thread cost alone."""

        def __init__(self, gate):
            self.gate = gate

        def reconstruct(self, frames, **kw):
            self.gate.wait()
            b = len(frames)
            zeros = np.zeros(frames.shape, np.float32)
            return SimpleNamespace(
                amplitude=zeros,
                phase=zeros,
                support=zeros.astype(bool),
                chi2=np.full(b, np.nan),
                status=["ok"] * b,
                reason=[""] * b,
            )

        def describe(self):
            return {"engine": "held (benchmark)"}

    scan_rate()  # warm-up: imports, first RunEngine
    rec.reconstruct(frames[: args.batch_size], seed=0)  # warm-up: weights, first batch
    rates = {"alone": [], "callback (worker held)": []}
    inside: list[float] = []  # seconds spent inside the callback, per scan
    for _ in range(args.repeats):
        rates["alone"].append(scan_rate())
        gate = threading.Event()
        held = LiveReconstruction(
            Held(gate), None, data_dir=tmp / "held", batch_size=args.batch_size, queue_size=n + 16
        )
        spent = [0.0]

        def timed(name, doc, _cb=held, _spent=spent):
            t0 = time.perf_counter()
            _cb(name, doc)
            _spent[0] += time.perf_counter() - t0

        rates["callback (worker held)"].append(scan_rate(timed))
        inside.append(spent[0])
        gate.set()
        held.close()
    base = float(np.median(rates["alone"]))
    print(f"\nRunEngine count rate (events/s, median of {args.repeats} interleaved repeats)")
    for k, v in rates.items():
        r = float(np.median(v))
        print(
            f"  {k:28s} {r:8.1f}   x{r / base:.3f} of alone   (scan cost {100 * (1 - r / base):+.1f} %)  "
            f"runs: {', '.join(f'{x:.0f}' for x in v)}"
        )
    per_event = float(np.median(inside)) / n
    print(
        f"  time inside the callback: {1e6 * per_event:.1f} us per event = "
        f"{100 * per_event * base:.2f} % of an event's time in the scan alone"
    )

    # 4: offline baseline, same batches, in the calling thread and in a worker thread (as live)
    def offline_rate() -> float:
        t = time.perf_counter()
        for i in range(0, n, args.batch_size):
            rec.reconstruct(frames[i : i + args.batch_size], seed=0)
        return n / (time.perf_counter() - t)

    offline_main = offline_rate()
    box: list[float] = []
    th = threading.Thread(target=lambda: box.append(offline_rate()))
    th.start()
    th.join()
    offline = box[0]

    # 3: end to end with Tiled
    live = LiveConfig(batch_size=args.batch_size, queue_size=n + 16, max_wait_s=1.0, data_dir=tmp / "e2e")
    t_server = time.perf_counter()
    with LiveSession(rec, StoreConfig(data_dir=tmp / "e2e"), live) as session:
        t_server = time.perf_counter() - t_server
        RE = RunEngine({})
        session.subscribe(RE)
        det = ReplayDetector(source, name="det")
        t = time.perf_counter()
        (raw_uid,) = RE(count([det], n))
        t_scan = time.perf_counter() - t
        assert session.finish()
        t_e2e = time.perf_counter() - t
        res = load_results(session.client, session.callback.derived_uid(raw_uid))
        raw_n = len(session.client[raw_uid]["primary"]["det_image"].read())
    ok = int((res["status"] == "ok").sum())
    lost = n - len(res["status"])
    print(f"\nend to end (RunEngine -> callback -> reconstruction -> Tiled), Tiled started in {t_server:.1f} s")
    print(
        f"  scan {t_scan:.1f} s ({n / t_scan:.1f} events/s, x{n / t_scan / base:.3f} of alone: raw TiledWriter + "
        f"callback + worker competing for the CPU)"
    )
    print(f"  results in Tiled after {t_e2e:.1f} s: {n / t_e2e:.1f} frames/s sustained")
    print(f"  raw frames in Tiled {raw_n}/{n}; derived rows {len(res['status'])}/{n}, ok {ok}, lost {lost}")
    print(f"  mean chi2 {np.nanmean(res['chi2']):.4g}, worst {np.nanmax(res['chi2']):.4g}")
    print(
        f"offline Reconstructor.reconstruct, same batches: {offline:.1f} frames/s in a thread "
        f"(as the worker), {offline_main:.1f} frames/s in the main thread"
    )
    print(f"end to end / offline (thread): x{(n / t_e2e) / offline:.3f}")


if __name__ == "__main__":
    main()
