"""``cdi-beamline demo``: a scan with live reconstruction into an embedded Tiled server."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from ..config import LIVE_ITERATIONS, LiveConfig
from .results import (
    add_cluster_option,
    add_queue_policy_option,
    add_reconstructor_options,
    build_reconstructor,
    quiet_logs,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a simulated scan with live reconstruction into a local Tiled server",
        description="Start the embedded Tiled server in DIR, run a Bluesky scan of a simulated detector "
        "(synthetic patterns, or the measured APS 34-ID-C rocking scan replayed against a rocking motor) "
        "with LiveReconstruction subscribed, and print where the results are and a summary. The rocking scan "
        "is also phased in 3D after its last frame (the 64 frames around the brightest, several random starts) "
        "into a 3D run linked to the raw run. Writes DIR/demo_recent.png (amplitude and unwrapped phase of "
        "frames across the scan, and slices through the 3D crystal). The data stay in DIR: "
        "`cdi-beamline results --data-dir DIR` lists them again.",
    )
    p.add_argument("--data-dir", default="cdi-demo", metavar="DIR", help="data directory (default ./cdi-demo)")
    p.add_argument(
        "--frames",
        type=int,
        metavar="N",
        help="frames to scan (default 200 synthetic; the 201 frames of the rocking scan for aps34idc)",
    )
    p.add_argument(
        "--source",
        choices=("synthetic", "aps34idc", "aps34idc-raw"),
        default="synthetic",
        help="simulated detector's frames (default synthetic); aps34idc-raw: the rocking scan's raw 128x128 "
        "counts, with its dark and whitefield, through the live preprocessing (dark, flat, ROI auto 64)",
    )
    add_reconstructor_options(p, init_default="cnn", iterations_default=LIVE_ITERATIONS)
    add_queue_policy_option(p, "the scan: replay")
    add_cluster_option(p)
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from tqdm import tqdm

    from ..callbacks import LiveSession
    from ..config import PreprocessConfig, StoreConfig
    from ..devices import ApsRockingSource, ReplayDetector, RockingMotor, make_source
    from ..errors import CDIRuntimeError, CDIValueError
    from ..phasing import unwrap
    from ..plotting import plot_scan_overview
    from ..results import PREPROCESS, RAW_SEQ_NUM, ROCKING, VOLUME_SUMMARY, format_counts
    from ..results import counts as count_frames
    from ..tiled import load_results, load_volume

    quiet_logs()
    if args.frames is not None and args.frames < 1:
        raise CDIValueError(f"--frames must be >= 1, got {args.frames}")
    data_dir = Path(args.data_dir).expanduser().resolve()
    t0 = time.perf_counter()
    preprocess = None
    if args.source == "synthetic":
        n = args.frames or 200
        source = make_source("synthetic", n=n, seed=0)
    elif args.source == "aps34idc":
        source = make_source("aps34idc")
        n = args.frames or len(source)
    else:  # raw counts, and the dark and whitefield files a beamline would have
        source = raw = ApsRockingSource(corrected=False, crop=128)
        n = args.frames or len(source)
        calib = data_dir / "preprocess"
        calib.mkdir(parents=True, exist_ok=True)
        np.save(calib / "dark.npy", raw.dark)
        np.save(calib / "whitefield.npy", raw.whitefield)
        preprocess = PreprocessConfig.build(
            dark=str(calib / "dark.npy"), flat=str(calib / "whitefield.npy"), roi="auto", roi_size=64
        )
    rec = build_reconstructor(args, None if preprocess is None else {"quantity": "modulus"})
    print(f"starting Tiled in {data_dir} ...", flush=True)
    live = LiveConfig.build(queue_policy=args.queue_policy, max_wait_s=1.0, preprocess=preprocess, cluster=args.cluster)
    with LiveSession(rec, StoreConfig.build(data_dir=data_dir), live, mask=source.mask) as session:
        RE = RunEngine({})
        session.subscribe(RE)
        if source.angles is not None:  # the rocking scan
            theta = RockingMotor("theta")
            det = ReplayDetector(source, name="det", motor=theta)
            plan = scan([det], theta, float(source.angles[0]), float(source.angles[-1]), n)
            print(f"a rocking scan: after its last frame the stack is phased in 3D ({live.rocking.starts} starts)")
        else:
            det = ReplayDetector(source, name="det")
            plan = count([det], n)
        describe = rec.provenance()
        print(
            f"Tiled at {session.uri}; reconstructing with init={describe['config']['init']}, "
            f"{describe['config']['iterations']} iterations on {describe['device']}",
            flush=True,
        )
        stats = session.callback.worker.stats
        bar = tqdm(total=n, desc="reconstructed", unit="frame")
        stop_bar = threading.Event()

        def _progress():
            while not stop_bar.wait(0.2):
                bar.update(stats["rows"] - bar.n)

        watcher = threading.Thread(target=_progress, daemon=True)
        watcher.start()
        t_scan = time.perf_counter()
        (raw_uid,) = RE(plan, purpose="cdi-beamline demo", source=args.source)  # type: ignore[misc]
        t_scanned = time.perf_counter()
        finished = session.finish()
        t_done = time.perf_counter()
        if not finished:
            print(f"warning: {finished}", flush=True)
        stop_bar.set()
        watcher.join()
        bar.update(stats["rows"] - bar.n)
        bar.close()
        derived_uid = session.callback.derived_uid(raw_uid)
        if derived_uid is None:
            raise CDIRuntimeError(f"no derived run was started for raw run {raw_uid} (see the log)")
        res = load_results(session.client, derived_uid)
        volume_uid = session.callback.volume_uid(raw_uid)
        volume = None if volume_uid is None else load_volume(session.client, volume_uid)
        png = data_dir / "demo_recent.png"
        if not args.no_plot:
            plot_scan_overview(res, png, unwrap=unwrap, volume=volume)
        uri = session.uri
    ok = res["status"] == "ok"
    chi2 = res["chi2"][ok]
    counts = count_frames(res["stop"])
    print()
    print(f"raw run      {raw_uid}  ({n} frames, scan {t_scanned - t_scan:.1f} s)")
    print(f"derived run  {derived_uid}")
    print(
        f"frames       {counts['received']} received, {counts['reconstructed']} reconstructed, {counts['flagged']} flagged"
    )
    print(f"status       {format_counts(counts)}")
    if chi2.size:
        print(f"chi2 (ok)    mean {np.mean(chi2):.4g}, worst {np.max(chi2):.4g}")
    if volume is not None:
        summary, rocking = volume["stop"].get(VOLUME_SUMMARY, {}), volume["start"][ROCKING]
        if "amplitude" in volume:
            starts = volume["chi2_starts"]
            print(
                f"3D run       {volume_uid}  {'x'.join(map(str, volume['amplitude'].shape))} "
                f"(frames {volume[RAW_SEQ_NUM][0]}-{volume[RAW_SEQ_NUM][-1]} around {rocking['brightest_seq_num']}, "
                f"{rocking['motor']} step {rocking['step_deg']:.4g} deg)"
            )
            print(
                f"chi2 (3D)    {volume['chi2']:.4g}  ({len(starts)} starts: {starts.min():.4g}-{starts.max():.4g}; "
                f"{summary.get('seconds', float('nan')):.1f} s)"
            )
        else:
            print(f"3D run       {volume_uid}  {summary.get('status')}: {summary.get('reason')}")
    elif source.angles is not None:
        why = session.callback.worker.volumes.skipped.get(raw_uid, "see the log")
        print(f"3D run       none: {why}")
    if preprocess is not None:
        record = res["stop"].get(PREPROCESS) or {}
        roi = record.get("roi")
        where = (
            "none chosen (no frame showed a peak)" if roi is None else "(y0, x0, h, w) = ({}, {}, {}, {})".format(*roi)
        )
        print(f"preprocess   dark + whitefield, ROI {where} of the {source.shape[0]}x{source.shape[1]} frames")
    print(
        f"rate         {n / (t_done - t_scan):.1f} frames/s end to end (scan start -> results in Tiled"
        f"{', the 3D run included' if volume is not None else ''}); "
        f"total {time.perf_counter() - t0:.1f} s"
    )
    print(f"data         {data_dir} (Tiled catalog in tiled/, results HDF5 in results/)")
    if not args.no_plot:
        print(f"picture      {png}")
    print(f"again        cdi-beamline results {raw_uid[:8]} --data-dir {data_dir}")
    print(f"             cdi-beamline serve --data-dir {data_dir}   (was at {uri})")
    return 0
