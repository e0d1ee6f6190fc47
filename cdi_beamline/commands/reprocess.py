"""``cdi-beamline reprocess``: rebuild the derived run of a raw run stored in Tiled."""

from __future__ import annotations

import argparse

from ..config import LiveConfig
from .results import add_reconstructor_options, add_store_options, build_reconstructor, open_client, quiet_logs


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reprocess",
        help="rebuild the derived run of a raw run from its frames in Tiled",
        description="Read the detector frames of RAW_UID back from Tiled, reconstruct them with the same "
        "worker code as the live callback, and store a new derived run (start.reprocessed = true, "
        "start.supersedes = the earlier derived runs). The raw run is not touched. Unset options take "
        "the settings recorded in the raw run's latest derived run (the configuration that ran, the "
        "seed, the preprocessing), so a reprocess reproduces the live result unless told otherwise. Result HDF5 files go "
        "to DIR/results, which the Tiled server must be able to read.",
    )
    p.add_argument("raw_uid", metavar="RAW_UID", help="raw run uid (full or partial)")
    add_store_options(p)
    p.add_argument("--image-key", metavar="KEY", help="detector image field (default: the first 2D field)")
    add_reconstructor_options(p, init_default=None, defaults_from="the latest derived run")
    p.add_argument("--seed", type=int, help="seed of random starts (default: the latest derived run's)")
    p.set_defaults(func=run)


def recorded_settings(client, raw_uid: str) -> tuple[dict, dict]:
    """(ReconstructorConfig dump, LiveConfig dump) recorded in the raw run's latest derived run;
    empty dicts when it has none (or an older one recorded no configuration)."""
    from ..results import LIVE, RECONSTRUCTOR
    from ..tiled import derived_runs

    runs = derived_runs(client, raw_uid)
    if not runs:
        return {}, {}
    start = runs[-1].metadata["start"]
    return dict((start.get(RECONSTRUCTOR) or {}).get("config") or {}), dict(start.get(LIVE) or {})


def run(args: argparse.Namespace) -> int:
    from ..callbacks import reprocess
    from ..errors import CDIValueError
    from ..results import counts
    from ..tiled import DataDir, make_writer, processed

    quiet_logs()
    client = open_client(args)
    if args.data_dir is None:
        raise CDIValueError("reprocess needs --data-dir DIR for the result HDF5 files (readable by the Tiled server)")
    raw_uid = client[args.raw_uid].metadata["start"]["uid"]
    recorded, live = recorded_settings(client, raw_uid)
    rec = build_reconstructor(args, recorded=recorded)
    dirs = DataDir.of(args.data_dir)
    seed = args.seed if args.seed is not None else live.get("seed", LiveConfig.model_fields["seed"].default)
    config = LiveConfig.build(
        seed=seed,
        data_dir=dirs.root,
        image_key=args.image_key or live.get("image_key"),
        preprocess=live.get("preprocess"),  # raw counts are preprocessed again as they were live
    )
    writer = make_writer(processed(client), dirs.derived_spool, batch_size=1000)
    stop = reprocess(client, raw_uid, rec, writer, config)
    if not writer.flush(timeout=60):
        print(
            f"warning: Tiled unreachable; the derived run waits in {writer.journal_dir} (delivered by the next writer)"
        )
    for uid, reason in writer.quarantine:
        print(f"warning: Tiled refused derived run {uid} ({reason}); kept in {writer.spool_dir}/quarantine")
    writer.close()
    c = counts(stop)
    print(
        f"reprocessed raw run {raw_uid}: derived run {stop['run_start']}: {c['reconstructed']} reconstructed, "
        f"{c['flagged']} flagged of {c['received']} frames"
    )
    return 0
