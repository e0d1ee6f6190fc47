"""Scale past one process: the row groups of ``scale.py`` that run on Dask (imported by it).

1. ``dask_live``: a RunEngine ``count`` of ``--dask-frames`` 64x64 synthetic frames with
   :class:`LiveReconstruction` on a Dask cluster (``LiveConfig.cluster``: the scheduler of a
   ``LocalCluster`` of 1, then of 2, single-threaded worker processes, both started and warmed
   in setup; the frames simulated once, before), from scan start until every result is
   emitted; frames/s. Twice: at light settings (``--dask-iterations``, random start,
   ``--dask-batch``: the consumer process's cost per frame shows) and at the package's
   defaults (``ReconstructorConfig()``; ``--dask-default-frames`` frames).
2. ``dask_reprocess``: ``cdi-beamline reprocess --all --force`` of ``--dask-runs`` raw runs
   (``--dask-run-frames`` frames each) stored in Tiled (``cdi-beamline serve`` of the data
   directory, a process of its own, SQLite, as a facility's server is), whole processes:
   in one process (no cluster) and with ``--cluster local:2`` (the process starts its own
   LocalCluster: the start, and each worker's imports, are in the time).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import Ratio, Row

ROWS = [
    Row("dask_live_1", "live on Dask, 1 worker: scan start → every result emitted", "frames/s", 1),
    Row("dask_live_2", "live on Dask, 2 workers: scan start → every result emitted", "frames/s", 1),
    Row("dask_default_1", "live on Dask at default settings, 1 worker", "frames/s", 1),
    Row("dask_default_2", "live on Dask at default settings, 2 workers", "frames/s", 1),
    Row("reprocess_1p", "`reprocess --all` of {dask_runs} runs, one process", "s", 1),
    Row("reprocess_local2", "`reprocess --all --cluster local:2` (its cluster's start included)", "s", 1),
]
RATIOS = [
    Ratio("live frames/s, 2 Dask workers / 1 (target ≥ 1.6)", "dask_live_2", "dask_live_1", 2),
    Ratio(
        "live frames/s at default settings, 2 Dask workers / 1 (target ≥ 1.6)", "dask_default_2", "dask_default_1", 2
    ),
    Ratio("`reprocess --all`: one process / `--cluster local:2`", "reprocess_1p", "reprocess_local2", 2),
]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dask-frames", type=int, default=256, help="frames of the live Dask scan (default 256)")
    ap.add_argument("--dask-iterations", type=int, default=200, help="iterations per frame (default 200)")
    ap.add_argument("--dask-batch", type=int, default=16, help="batch (default 16)")
    ap.add_argument(
        "--dask-default-frames", type=int, default=512, help="frames of the scan at default settings (default 512)"
    )
    ap.add_argument("--dask-runs", type=int, default=20, help="raw runs reprocessed (default 20)")
    ap.add_argument("--dask-live-only", action="store_true", help="only the live rows (no archive, no reprocess)")
    ap.add_argument("--dask-run-frames", type=int, default=16, help="frames per reprocessed run (default 16)")


def params(args: argparse.Namespace) -> dict:
    return {
        "dask live": f"{args.dask_frames} synthetic 64×64 frames, random start, {args.dask_iterations} iterations, "
        f"batch {args.dask_batch}, 1 thread per Dask worker process, results kept in memory (no Tiled); "
        f"at default settings: {args.dask_default_frames} frames, {_describe(_default())}",
        "dask reprocess": f"{args.dask_runs} raw runs × {args.dask_run_frames} frames in Tiled "
        f"(SQLite) served by its own process, random start, {args.dask_iterations} iterations, batch {args.dask_batch}",
    }


def _engine_args(args: argparse.Namespace) -> list[str]:
    return ["--init", "random", "--iterations", str(args.dask_iterations), "--batch-size", str(args.dask_batch)]


def setup(args: argparse.Namespace) -> dict:
    from bluesky import RunEngine
    from bluesky.plans import count

    from cdi_beamline.callbacks import DaskCluster
    from cdi_beamline.devices import ReplayDetector, SyntheticSource
    from cdi_beamline.tiled import EmbeddedTiled, make_writer

    clusters = {n: DaskCluster(f"local:{n}") for n in (1, 2)}
    for n, c in clusters.items():
        c.client.wait_for_workers(n, timeout=300)
    tmp = tempfile.TemporaryDirectory()
    # one chunk of every frame, simulated once (by the first warm-up scan): the detector's
    # simulation stays out of the timed scans, as a real detector's readout is not the consumer's
    n_frames = max(args.dask_frames, args.dask_default_frames, args.dask_run_frames)
    source = SyntheticSource(n=n_frames, seed=7, chunk=n_frames)
    state = {"clusters": clusters, "tmp": tmp, "source": source, "serve": None}
    for n in clusters:
        for config in (_light(args), _default()):  # warm: every worker imports and builds both engines
            _live(args, state, n, 2 * n * config.batch_size, config)
    if args.dask_live_only:
        return state
    data = Path(tmp.name) / "archive"
    server = EmbeddedTiled(data)
    writer = make_writer(server.client(), server.spool_dir)
    RE = RunEngine({})
    RE.subscribe(writer)
    for _ in range(args.dask_runs):
        RE(count([ReplayDetector(source, name="det")], args.dask_run_frames))
    writer.flush(120)
    writer.close()
    server.close()
    from cdi_beamline.tiled import serving

    serve = subprocess.Popen([sys.executable, "-m", "cdi_beamline.cli", "serve", "--data-dir", str(data)])
    deadline = time.monotonic() + 120
    while serving(data) is None:
        if time.monotonic() > deadline or serve.poll() is not None:
            raise RuntimeError("cdi-beamline serve did not start")
        time.sleep(0.5)
    return {**state, "data": data, "serve": serve}


def _light(args: argparse.Namespace):
    """The light live configuration: random start, ``--dask-iterations``, ``--dask-batch``."""
    from cdi_beamline.config import ReconstructorConfig

    return ReconstructorConfig(init="random", iterations=args.dask_iterations, batch_size=args.dask_batch)


def _default():
    """The package's default configuration."""
    from cdi_beamline.config import ReconstructorConfig

    return ReconstructorConfig()


def _describe(config) -> str:
    """``config``'s start, iterations and batch, for the record."""
    return f"{config.init} start, {config.iterations} iterations, batch {config.batch_size}"


def _live(args: argparse.Namespace, state: dict, n_workers: int, frames: int, config) -> float:
    """Frames/s of one scan of ``frames`` frames on the ``n_workers`` cluster, engine ``config``."""
    from bluesky import RunEngine
    from bluesky.plans import count

    from cdi_beamline.callbacks import LiveReconstruction
    from cdi_beamline.config import LiveConfig
    from cdi_beamline.devices import ReplayDetector
    from cdi_beamline.pipeline import Reconstructor

    address = state["clusters"][n_workers].client.scheduler.address
    live = LiveConfig(data_dir=state["tmp"].name, max_wait_s=60, cluster=address)
    cb = LiveReconstruction(Reconstructor(config, device="cpu"), None, live)
    RE = RunEngine({})
    RE.subscribe(cb)
    t0 = time.perf_counter()
    RE(count([ReplayDetector(state["source"], name="det")], frames))
    cb.flush()
    dt = time.perf_counter() - t0
    cb.close()
    assert cb.worker.stats["rows"] == frames, cb.worker.stats
    return frames / dt


def _reprocess(args: argparse.Namespace, state: dict, cluster: list[str]) -> float:
    """Seconds of one whole ``cdi-beamline reprocess --all --force`` process."""
    cmd = [sys.executable, "-m", "cdi_beamline.cli", "reprocess", "--all", "--force", "--data-dir", str(state["data"])]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    t0 = time.perf_counter()
    subprocess.run([*cmd, *_engine_args(args), "--device", "cpu", *cluster], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def measure(args: argparse.Namespace, state: dict) -> dict:
    """One repeat of both groups, baseline and candidate interleaved."""
    out = {}
    state["repeat"] = state.get("repeat", -1) + 1
    for n in (1, 2) if state["repeat"] % 2 == 0 else (2, 1):  # ABBA over the repeats
        out[f"dask_live_{n}"] = _live(args, state, n, args.dask_frames, _light(args))
        out[f"dask_default_{n}"] = _live(args, state, n, args.dask_default_frames, _default())
    if args.dask_live_only:
        return out
    out["reprocess_1p"] = _reprocess(args, state, [])
    out["reprocess_local2"] = _reprocess(args, state, ["--cluster", "local:2"])
    return out


def teardown(state: dict) -> None:
    serve = state["serve"]
    if serve is not None:
        serve.send_signal(signal.SIGINT)  # its Ctrl-C
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
    for c in state["clusters"].values():
        c.close()
    state["tmp"].cleanup()
