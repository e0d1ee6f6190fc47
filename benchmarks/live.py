"""Live pipeline: RunEngine -> LiveReconstruction -> Reconstructor -> Tiled, one repeat each:

1. the RunEngine's own rate: ``count`` of a 64x64 replay detector, no callback (baseline);
2. the same scan with LiveReconstruction subscribed and the worker held: the callback's own
   cost in the RunEngine thread (find the frame, enqueue) and the time spent inside it
   (``--scans`` of each, interleaved, medians);
3. offline: the same frames through ``Reconstructor.reconstruct`` in a thread (as the
   worker), same batches, with the CNN start and with random starts (mean chi² of both);
4. end to end: raw run + derived run written to an embedded Tiled server, from scan start
   until every result is in Tiled; frames lost counted from what Tiled returns. On a small
   machine the scan rate here includes the CPU the worker takes from the scan;
5. end to end with preprocessing: the raw measured APS frames (scan centre, counts) placed
   off-centre in 512×512 frames, through the live preprocessing with an automatic ROI of 64
   (CNN start) and of 128 (random start, the default for frames larger than the CNN's input).

    ./run bench live [--repeats N] -- [--frames 1000] [--iterations 100] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _compat import HeldEngine, live_config, load_results
from _harness import Ratio, Row, main

NAME = "live"
TITLE = "Live: scan → CNN + {iterations} iterations → Tiled, {frames} frames 64×64, batch {batch_size}"
ROWS = [
    Row("alone", "RunEngine count alone (baseline; median of {scans} scans)", "events/s", 0),
    Row("held", "… with the callback subscribed, worker held (median of {scans}, interleaved)", "events/s", 0),
    Row("inside", "time inside the callback, RunEngine thread (median of {scans})", "µs/event", 1),
    Row("e2e", "end to end: scan start → every result in Tiled", "frames/s", 1),
    Row("e2e_scan", "scan rate during end to end (raw TiledWriter + callback + worker)", "events/s", 0),
    Row("lost", "frames lost (derived rows missing in Tiled)", "frames", 0),
    Row("e2e_chi2", "end to end: mean final chi²", "chi²", 5),
    Row("e2e_roi64", "end to end, 512×512 raw APS frames → automatic ROI 64 (CNN start)", "frames/s", 1),
    Row("e2e_roi128", "end to end, 512×512 raw APS frames → automatic ROI 128 (random start)", "frames/s", 1),
    Row("roi64_chi2", "… ROI 64: median final chi²", "chi²", 5),
    Row("roi128_chi2", "… ROI 128: median final chi²", "chi²", 5),
    Row("offline", "offline Reconstructor.reconstruct in a thread, CNN start", "frames/s", 1),
    Row("offline_random", "offline Reconstructor.reconstruct in a thread, random start", "frames/s", 1),
    Row("chi2_cnn", "offline mean final chi², CNN start", "chi²", 5),
    Row("chi2_random", "offline mean final chi², random start", "chi²", 5),
]
RATIOS = [
    Ratio("scan with callback (worker held) / alone", "held", "alone", 3),
    Ratio("scan during end to end / alone", "e2e_scan", "alone", 2),
    Ratio("end to end / offline (CNN)", "e2e", "offline", 2),
    Ratio("mean chi² random start / CNN start (offline)", "chi2_random", "chi2_cnn", 1),
]


class _Timed:
    """Wraps a callback and adds the seconds spent inside it."""

    def __init__(self, callback):
        self.callback, self.seconds = callback, 0.0

    def __call__(self, name, doc):
        t0 = time.perf_counter()
        self.callback(name, doc)
        self.seconds += time.perf_counter() - t0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--frames", type=int, default=1000, help="frames per scan (default 1000)")
    ap.add_argument("--iterations", type=int, default=100, help="refinement iterations (default 100)")
    ap.add_argument("--batch-size", type=int, default=64, help="live batch (default 64)")
    ap.add_argument(
        "--scans", type=int, default=3, help="interleaved scans alone / with the callback per repeat (median)"
    )
    ap.add_argument("--device", default="auto")


def params(args: argparse.Namespace) -> dict:
    return {
        "frames": f"{args.frames} synthetic 64×64, pre-simulated in memory",
        "init": "cnn (shipped weights)",
        "iterations": args.iterations,
        "batch": args.batch_size,
    }


def setup(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.WARNING)
    from bluesky import RunEngine
    from bluesky.plans import count

    from cdi_beamline.config import ReconstructorConfig
    from cdi_beamline.devices import FrameSource, ReplayDetector, SyntheticSource
    from cdi_beamline.pipeline import Reconstructor

    class MemorySource(FrameSource):
        """Pre-simulated frames in memory, so that the scan does not pay for the simulator."""

        def __init__(self, frames):
            self.frames, self.n_frames, self.shape = frames, len(frames), frames.shape[1:]

        def _frame(self, i):
            return self.frames[i]

        def provenance(self):
            return {"source": "memory", "n_frames": self.n_frames}

        describe = provenance  # the name in trees before the provenance() rename

    n = args.frames
    synth = SyntheticSource(n=n, seed=0)
    frames = np.stack([synth.frame(i) for i in range(n)])
    source = MemorySource(frames)
    recs = {
        init: Reconstructor(
            ReconstructorConfig(init=init, iterations=args.iterations, batch_size=args.batch_size), device=args.device
        )
        for init in ("cnn", "random")
    }

    def scan_rate(cb=None) -> float:
        RE = RunEngine({})
        if cb is not None:
            RE.subscribe(cb)
        t = time.perf_counter()
        RE(count([ReplayDetector(source, name="det")], n))
        return n / (time.perf_counter() - t)

    scan_rate()  # warm-up: imports, first RunEngine
    for rec in recs.values():
        rec.reconstruct(frames[: args.batch_size], seed=0)  # warm-up: weights, numba, first batch
    from cdi_beamline.devices import ApsRockingSource

    aps = ApsRockingSource(corrected=False, crop=128)
    m = min(n, 128)  # the scan's centre: frames 36..163
    big = np.zeros((m, 512, 512), np.float32)
    big[:, 300:428, 100:228] = np.stack([aps.frame(36 + i) for i in range(m)])  # the peak off-centre
    return {
        "frames": frames,
        "source": source,
        "recs": recs,
        "scan_rate": scan_rate,
        "count": count,
        "RE": RunEngine,
        "big": MemorySource(big),
        "iterations": args.iterations,
    }


def preprocessed_e2e(state: dict, data_dir: Path, roi_size: int, batch: int) -> tuple[float, float]:
    """(frames/s, median final chi²) of a live session with preprocessing (automatic ROI of
    ``roi_size``) over the 512×512 frames, scan start to every result in Tiled."""
    from cdi_beamline.callbacks import LiveSession
    from cdi_beamline.config import PreprocessConfig, ReconstructorConfig, StoreConfig
    from cdi_beamline.devices import ReplayDetector
    from cdi_beamline.pipeline import Reconstructor

    source = state["big"]
    rec = Reconstructor(ReconstructorConfig(iterations=state["iterations"], batch_size=batch))
    preprocess = PreprocessConfig(roi="auto", roi_size=roi_size)
    live = live_config(batch, queue_size=source.n_frames + 16, max_wait_s=1.0, data_dir=data_dir, preprocess=preprocess)
    with LiveSession(rec, StoreConfig(data_dir=data_dir), live) as session:
        RE = state["RE"]({})
        session.subscribe(RE)
        t = time.perf_counter()
        (raw_uid,) = RE(state["count"]([ReplayDetector(source, name="det")], source.n_frames))
        session.finish()
        rate = source.n_frames / (time.perf_counter() - t)
        res = load_results(session.client, session.callback.derived_uid(raw_uid))
    return rate, float(np.nanmedian(res["chi2"]))


def offline(rec, frames: np.ndarray, batch: int) -> tuple[float, float]:
    """(frames/s, mean final chi²) of ``rec`` over ``frames`` in a worker thread, as live."""
    box: list = []

    def work():
        t = time.perf_counter()
        chis = [rec.reconstruct(frames[i : i + batch], seed=0).chi2 for i in range(0, len(frames), batch)]
        box.append((len(frames) / (time.perf_counter() - t), float(np.nanmean(np.concatenate(chis)))))

    th = threading.Thread(target=work)
    th.start()
    th.join()
    return box[0]


def measure(args: argparse.Namespace, state: dict) -> dict:
    from cdi_beamline.callbacks import LiveReconstruction, LiveSession
    from cdi_beamline.config import StoreConfig
    from cdi_beamline.devices import ReplayDetector

    n, frames, batch = args.frames, state["frames"], args.batch_size
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="cdi-live-bench-") as tmp_name:
        tmp = Path(tmp_name)
        alone, with_callback, inside = [], [], []
        for k in range(args.scans):  # interleaved, medians: one scan is at the mercy of the load
            alone.append(state["scan_rate"]())
            gate = threading.Event()
            held = LiveReconstruction(
                HeldEngine(gate, batch), None, live_config(batch, data_dir=tmp / f"held{k}", queue_size=n + 16)
            )
            timed = _Timed(held)
            with_callback.append(state["scan_rate"](timed))
            inside.append(1e6 * timed.seconds / n)
            gate.set()
            held.close()
        out.update(alone=np.median(alone), held=np.median(with_callback), inside=np.median(inside))

        out["offline"], out["chi2_cnn"] = offline(state["recs"]["cnn"], frames, batch)
        out["offline_random"], out["chi2_random"] = offline(state["recs"]["random"], frames, batch)

        live = live_config(batch, queue_size=n + 16, max_wait_s=1.0, data_dir=tmp / "e2e")
        t_server = time.perf_counter()
        with LiveSession(state["recs"]["cnn"], StoreConfig(data_dir=tmp / "e2e"), live) as session:
            t_server = time.perf_counter() - t_server
            RE = state["RE"]({})
            session.subscribe(RE)
            t = time.perf_counter()
            (raw_uid,) = RE(state["count"]([ReplayDetector(state["source"], name="det")], n))
            t_scan = time.perf_counter() - t
            finished = session.finish()
            t_e2e = time.perf_counter() - t
            res = load_results(session.client, session.callback.derived_uid(raw_uid))
            raw_n = len(session.client[raw_uid]["primary"]["det_image"].read())
        out["e2e_roi64"], out["roi64_chi2"] = preprocessed_e2e(state, tmp / "roi64", 64, batch)
        out["e2e_roi128"], out["roi128_chi2"] = preprocessed_e2e(state, tmp / "roi128", 128, batch)
    out.update(e2e=n / t_e2e, e2e_scan=n / t_scan, lost=n - len(res["status"]), e2e_chi2=float(np.nanmean(res["chi2"])))
    out["info"] = {
        "tiled_start_s": t_server,
        "finished": bool(finished),
        "raw_frames_in_tiled": raw_n,
        "derived_ok": int((np.asarray(res["status"]) == "ok").sum()),
        "worst_chi2": float(np.nanmax(res["chi2"])),
    }
    return out


if __name__ == "__main__":
    main(sys.modules[__name__])
