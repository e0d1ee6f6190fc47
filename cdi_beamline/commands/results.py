"""``cdi-beamline results``: list derived runs (per-frame chi²) from Tiled.

Also holds the store / reconstructor options shared by the live commands
(demo, serve, results, reprocess, worker).
"""

from __future__ import annotations

import argparse
import json
import math

from ..results import PARENT_UID, RAW_SEQ_NUM, REPROCESSED


def add_store_options(p: argparse.ArgumentParser) -> None:
    """``--data-dir DIR`` (embedded Tiled) and/or ``--uri URI [--api-key K]``."""
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory of the embedded Tiled server (results HDF5 files are written under DIR/results)",
    )
    p.add_argument("--uri", metavar="URI", help="a running Tiled server, e.g. http://host:8000")
    p.add_argument("--api-key", metavar="K", help="API key for --uri (default: $TILED_API_KEY)")


def open_client(args: argparse.Namespace):
    """The Tiled client the store options name (CDIValueError if none)."""
    from ..errors import CDIValueError
    from ..tiled import connect

    if args.uri is None and args.data_dir is None:
        raise CDIValueError("give --data-dir DIR or --uri URI")
    return connect(uri=args.uri, api_key=args.api_key, data_dir=args.data_dir)


def add_reconstructor_options(
    p: argparse.ArgumentParser,
    *,
    init_default: str | None = "random",
    iterations_default: int | None = None,
    defaults_from: str | None = None,
) -> None:
    """``--init``, ``--iterations``, ``--config``, ``--device``, ``--batch-size``; unset options
    take the defaults of :class:`~cdi_beamline.config.ReconstructorConfig` (or the ones given here),
    or, with ``defaults_from`` (e.g. "the latest derived run"), recorded settings the command reads."""
    from ..config import ReconstructorConfig

    batch_default = f"{defaults_from}'s" if defaults_from else ReconstructorConfig.model_fields["batch_size"].default
    p.add_argument(
        "--init",
        choices=("cnn", "random", "support", "nns"),
        default=init_default,
        help="start of the refinement (default "
        + (f"{defaults_from}'s" if defaults_from else init_default or "cnn if weights are installed, else random")
        + ")",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=iterations_default,
        metavar="N",
        help="refinement iterations (default: "
        + (
            f"{defaults_from}'s"
            if defaults_from
            else str(iterations_default)
            if iterations_default is not None
            else "the schedule's own"
        )
        + ")",
    )
    p.add_argument("--config", metavar="FILE", help="ReconstructorConfig as JSON or YAML")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:n] (default auto)")
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help=f"frames reconstructed together (default {batch_default})",
    )


def add_cluster_option(p: argparse.ArgumentParser) -> None:
    """``--cluster SPEC``: ``LiveConfig.cluster`` (default: the worker's own thread)."""
    from ..config import CLUSTER_HELP

    p.add_argument(
        "--cluster",
        metavar="SPEC",
        help=f"reconstruct the batches on a Dask cluster: {CLUSTER_HELP} (default: in this process)",
    )


def add_queue_policy_option(p: argparse.ArgumentParser, block_means: str) -> None:
    """``--queue-policy`` with the choices and default of ``LiveConfig.queue_policy``;
    ``block_means`` says what blocking holds up in this command."""
    from typing import get_args

    from ..config import LiveConfig

    field = LiveConfig.model_fields["queue_policy"]
    p.add_argument(
        "--queue-policy",
        choices=get_args(field.annotation),
        default=field.default,
        help=f"full queue: block ({block_means}) or drop and count; default {field.default}",
    )


def build_reconstructor(args: argparse.Namespace, recorded: dict | None = None):
    """A Reconstructor from the options over ``recorded`` (a ``ReconstructorConfig`` dump, e.g.
    what a derived run recorded; then the ``--config`` file; then the options given).

    ``--init cnn`` falls back to random (with a note) when no CNN weights are installed and
    ``--init`` was not given explicitly. The process's threads and workers are set here, by
    :func:`cdi_beamline.resources.plan` (the commands that build one own their process).
    """
    from .. import resources
    from ..config import ReconstructorConfig, read_config_file
    from ..errors import CDIRuntimeError
    from ..pipeline import Reconstructor

    resources.apply(resources.plan())
    values = dict(recorded or {})
    if args.config:
        values.update(read_config_file(args.config))
    explicit = args.init is not None
    init = args.init or values.get("init", "cnn")
    given = {"init": init, "iterations": args.iterations, "batch_size": args.batch_size}
    values.update({k: v for k, v in given.items() if v is not None})
    config = ReconstructorConfig.build(**values)
    rec = Reconstructor(config, device=args.device)
    if init == "cnn":
        try:
            rec.cnn()
        except (RuntimeError, FileNotFoundError, KeyError, ValueError, ImportError) as exc:
            if explicit:
                raise CDIRuntimeError(f"--init cnn: CNN weights unavailable: {exc}") from exc
            print(f"note: CNN weights unavailable ({exc}); using random-start refinement", flush=True)
            rec = Reconstructor(
                ReconstructorConfig.build(**{**config.model_dump(), "init": "random"}), device=args.device
            )
    return rec


def quiet_logs() -> None:
    """Keep the stack's INFO chatter (httpx, tiled, bluesky...) for ``-v``."""
    import logging

    if logging.getLogger().level > logging.DEBUG:
        for name in ("httpx", "tiled", "alembic", "uvicorn", "bluesky", "databroker", "numexpr"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _finite(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "results",
        help="list derived (reconstruction) runs with per-frame chi²",
        description="List the derived runs of RAW_UID (or all) stored in Tiled: counts, mean and worst chi², "
        "and one line per frame (raw seq_num, chi², status, reason).",
    )
    p.add_argument("raw_uid", nargs="?", metavar="RAW_UID", help="raw run uid (full or partial); default: all")
    add_store_options(p)
    p.add_argument("--json", action="store_true", help="print JSON (a list of runs with per-frame arrays)")
    p.add_argument("--last", type=int, metavar="N", help="only the N most recent derived runs")
    p.set_defaults(func=run)


def _print_undelivered(data_dir: str | None) -> None:
    """Runs of ``data_dir``'s spool that are not in Tiled: refused (quarantined) or waiting."""
    from ..tiled import DataDir, quarantined, undelivered

    if data_dir is None:
        return
    for spool in DataDir.of(data_dir).spools:
        for uid, reason in quarantined(spool):
            print(f"quarantined run {uid}: Tiled refused it: {reason.splitlines()[0]} (in {spool}/quarantine)")
        waiting = undelivered(spool)
        if waiting:
            print(f"{len(waiting)} run(s) not yet delivered to Tiled wait in {spool} (sent when Tiled answers)")


def _volume_item(run) -> dict:
    """A 3D run's line in the listing: uid, status, reason, chi², depth, brightest frame."""
    from ..results import ROCKING, VOLUME_SUMMARY

    start, stop = run.metadata["start"], run.metadata.get("stop") or {}
    summary = stop.get(VOLUME_SUMMARY) or {"status": "running", "reason": "", "chi2": float("nan")}
    return {
        "uid": start["uid"],
        "status": summary["status"],
        "reason": summary["reason"],
        "chi2": _finite(float(summary["chi2"])),
        "depth": start[ROCKING]["depth"],
        "brightest_seq_num": start[ROCKING]["brightest_seq_num"],
    }


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..results import counts, format_counts
    from ..tiled import derived_runs, load_results, volume_runs

    quiet_logs()
    client = open_client(args)
    raw_uid = args.raw_uid
    if raw_uid is not None and len(raw_uid) != 36:
        raw_uid = client[raw_uid].metadata["start"]["uid"]  # partial uid -> full
    runs = derived_runs(client, raw_uid)
    if args.last:
        runs = runs[-args.last :]
    listing = []
    for r in runs:
        start = r.metadata["start"]
        res = load_results(client, start["uid"])
        ok = res["status"] == "ok"
        chi2_ok = res["chi2"][ok]
        listing.append(
            {
                "uid": start["uid"],
                PARENT_UID: start[PARENT_UID],
                "scan_id": start.get("scan_id"),
                "time": start["time"],
                REPROCESSED: bool(start.get(REPROCESSED, False)),
                "counts": counts(res["stop"]),
                "exit_status": res["stop"].get("exit_status"),
                "chi2_mean": _finite(float(np.mean(chi2_ok))) if chi2_ok.size else None,
                "chi2_max": _finite(float(np.max(chi2_ok))) if chi2_ok.size else None,
                RAW_SEQ_NUM: [int(s) for s in res[RAW_SEQ_NUM]],
                "chi2": [_finite(float(c)) for c in res["chi2"]],
                "status": [str(s) for s in res["status"]],
                "reason": [str(s) for s in res["reason"]],
                "volumes": [_volume_item(v) for v in volume_runs(client, start[PARENT_UID])],
            }
        )
    if args.json:
        print(json.dumps(listing, indent=1))
        return 0
    _print_undelivered(args.data_dir)
    if not listing:
        print("no derived runs" + (f" for raw run {raw_uid}" if raw_uid else ""))
        return 0
    for item in listing:
        c = item["counts"]
        mean = "-" if item["chi2_mean"] is None else f"{item['chi2_mean']:.4g}"
        worst = "-" if item["chi2_max"] is None else f"{item['chi2_max']:.4g}"
        print(
            f"derived {item['uid']}  raw {item[PARENT_UID]}  scan_id {item['scan_id']}"
            f"{'  (reprocessed)' if item[REPROCESSED] else ''}"
        )
        print(
            f"  frames {len(item['chi2'])}: {c.get('reconstructed', 0)} reconstructed, {c.get('flagged', 0)} flagged;"
            f" chi2 (ok) mean {mean}, worst {worst}; exit {item['exit_status']}"
        )
        print(f"  status {format_counts(c)}")
        for v in item["volumes"]:
            chi = "-" if v["chi2"] is None else f"{v['chi2']:.4g}"
            why = f" ({v['reason']})" if v["reason"] else ""
            print(
                f"  3D run {v['uid']}: {v['status']}{why}, chi2 {chi}, "
                f"{v['depth']} frames around seq_num {v['brightest_seq_num']}"
            )
        print("  seq_num        chi2  status         reason")
        for s, x, st, why in zip(item[RAW_SEQ_NUM], item["chi2"], item["status"], item["reason"]):
            chi = "nan" if x is None else f"{x:.5f}"
            print(f"  {s:7d} {chi:>11}  {st:13}  {why}")
    return 0
