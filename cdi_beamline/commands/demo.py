"""``cdi-beamline demo``: a scan with live reconstruction into an embedded Tiled server."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from .results import add_reconstructor_options, quiet_logs


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a simulated scan with live reconstruction into a local Tiled server",
        description="Start the embedded Tiled server in DIR, run a Bluesky scan of a simulated detector "
        "(synthetic patterns, or the measured APS 34-ID-C rocking scan replayed against a rocking motor) "
        "with LiveReconstruction subscribed, and print where the results are and a summary. Writes "
        "DIR/demo_recent.png (amplitude and unwrapped phase of frames across the scan). The data stay in DIR: "
        "`cdi-beamline results --data-dir DIR` lists them again.",
    )
    p.add_argument("--data-dir", default="cdi-demo", metavar="DIR", help="data directory (default ./cdi-demo)")
    p.add_argument(
        "--frames",
        type=int,
        metavar="N",
        help="frames to scan (default 200 synthetic; the 189 frames of the rocking scan for aps34idc)",
    )
    p.add_argument(
        "--source",
        choices=("synthetic", "aps34idc"),
        default="synthetic",
        help="simulated detector's frames (default synthetic)",
    )
    add_reconstructor_options(p, init_default="cnn", iterations_default=100)
    p.add_argument(
        "--queue-policy",
        choices=("block", "drop"),
        default="block",
        help="full queue: block the scan (replay, default) or drop and count (live)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from tqdm import tqdm

    from ..callbacks import LiveSession
    from ..config import LiveConfig, StoreConfig
    from ..devices import ReplayDetector, RockingMotor, make_source
    from ..store import load_results

    quiet_logs()
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    data_dir = Path(args.data_dir).expanduser().resolve()
    t0 = time.perf_counter()
    rec = _reconstructor(args)
    if args.source == "synthetic":
        n = args.frames or 200
        source = make_source("synthetic", n=n, seed=0)
    else:
        source = make_source("aps34idc")
        n = args.frames or len(source)
    print(f"starting Tiled in {data_dir} ...", flush=True)
    live = LiveConfig(batch_size=args.batch_size, queue_policy=args.queue_policy, data_dir=data_dir, max_wait_s=1.0)
    with LiveSession(rec, StoreConfig(data_dir=data_dir), live, mask=source.mask) as session:
        RE = RunEngine({})
        session.subscribe(RE)
        if args.source == "aps34idc":
            theta = RockingMotor("theta")
            det = ReplayDetector(source, name="det", motor=theta)
            plan = scan([det], theta, float(source.angles[0]), float(source.angles[-1]), n)
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
        (raw_uid,) = RE(plan, purpose="cdi-beamline demo", source=args.source)
        t_scanned = time.perf_counter()
        session.finish()
        t_done = time.perf_counter()
        stop_bar.set()
        watcher.join()
        bar.update(stats["rows"] - bar.n)
        bar.close()
        derived_uid = session.callback.derived_uid(raw_uid)
        res = load_results(session.client, derived_uid)
        if not args.no_plot:
            png = data_dir / "demo_recent.png"
            _plot_recent(res, png)
        uri = session.uri
    ok = res["status"] == "ok"
    chi2 = res["chi2"][ok]
    counts = res["stop"].get("cdi_counts", {})
    print()
    print(f"raw run      {raw_uid}  ({n} frames, scan {t_scanned - t_scan:.1f} s)")
    print(f"derived run  {derived_uid}")
    print(
        f"frames       {counts.get('reconstructed', 0)} reconstructed, {counts.get('flagged', 0)} flagged, "
        f"{counts.get('dropped', 0)} dropped"
    )
    if chi2.size:
        print(f"chi2         mean {np.mean(chi2):.4g}, worst {np.max(chi2):.4g}")
    print(
        f"rate         {n / (t_done - t_scan):.1f} frames/s end to end (scan start -> results in Tiled); "
        f"total {time.perf_counter() - t0:.1f} s"
    )
    print(f"data         {data_dir} (Tiled catalog in tiled/, results HDF5 in results/)")
    if not args.no_plot:
        print(f"picture      {png}")
    print(f"again        cdi-beamline results {raw_uid[:8]} --data-dir {data_dir}")
    print(f"             cdi-beamline serve --data-dir {data_dir}   (was at {uri})")
    return 0


def _reconstructor(args):
    from .results import build_reconstructor

    return build_reconstructor(args)


def _plot_recent(res: dict, path: Path, n: int = 8) -> None:
    """Amplitude (top) and unwrapped phase in the support (bottom) of ``n`` good frames spread
    evenly over the scan (a rocking scan then shows its weak tails and its peak)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..phasing import unwrap

    good = np.flatnonzero(res["status"] == "ok")
    if good.size == 0:
        return
    good = good[np.unique(np.linspace(0, good.size - 1, min(n, good.size)).round().astype(int))]
    fig, axes = plt.subplots(2, len(good), figsize=(2.2 * len(good), 4.6), squeeze=False)
    for col, i in enumerate(good):
        amp = res["amplitude"][i]
        # phase is meaningful where the object is: support and amplitude above 10 % of its peak
        sup = res["support"][i] & (amp > 0.1 * amp.max())
        rows, cols = np.nonzero(sup) if sup.any() else np.nonzero(np.ones_like(sup))
        pad = 3
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, amp.shape[0])
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, amp.shape[1])
        phase = unwrap(res["phase"][i], mask=sup if sup.any() else None)
        phase = np.where(sup, phase, np.nan)
        axes[0, col].imshow(amp[r0:r1, c0:c1], cmap="gray")
        axes[0, col].set_title(f"seq {res['raw_seq_num'][i]}\nchi² {res['chi2'][i]:.3g}", fontsize=8)
        im = axes[1, col].imshow(phase[r0:r1, c0:c1], cmap="twilight_shifted")
        fig.colorbar(im, ax=axes[1, col], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel("phase (rad, unwrapped)\nwhere amplitude > 10 %")
    fig.suptitle(f"live reconstructions across the scan ({len(res['status'])} frames)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
