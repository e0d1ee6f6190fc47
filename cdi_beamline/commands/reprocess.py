"""``cdi-beamline reprocess``: rebuild the derived runs of raw runs stored in Tiled, in
parallel on a Dask cluster."""

from __future__ import annotations

import argparse

from ..config import CLUSTER_HELP, LiveConfig
from .results import add_reconstructor_options, add_store_options, build_reconstructor, open_client, quiet_logs


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reprocess",
        help="rebuild the derived runs of raw runs from their frames in Tiled",
        description="Read the detector frames of raw runs back from Tiled, reconstruct them with the same "
        "worker code as the live callback, and store a new derived run per raw run (start.reprocessed = true, "
        "start.supersedes = the earlier derived runs). Raw runs are not touched. Named runs are always rebuilt; "
        "--all and --since skip runs already done (a derived run with a stop document and no 'error' or "
        "'dropped' frame) unless --force, so running them again does nothing. Runs are rebuilt in parallel on "
        "a Dask cluster with --cluster (one run per Dask worker at a time, its batches spread over the "
        "workers), else one after the other in this process. Unset options take "
        "the settings recorded in each raw run's latest derived run (the configuration that ran, the "
        "seed, the preprocessing), so a reprocess reproduces the live result unless told otherwise. Result HDF5 files go "
        "to DIR/results, which the Tiled server must be able to read.",
    )
    p.add_argument("raw_uid", nargs="*", metavar="RAW_UID", help="raw run uids (full or partial)")
    p.add_argument("--all", action="store_true", help="every raw run of the catalog not done yet")
    p.add_argument(
        "--since",
        metavar="DATE",
        help="the raw runs started at or after DATE (ISO 8601, UTC: 2026-12-01 or 2026-12-01T08:00) not done yet",
    )
    p.add_argument("--force", action="store_true", help="with --all/--since: rebuild runs already done too")
    p.add_argument("--cluster", metavar="SPEC", help=f"rebuild on a Dask cluster: {CLUSTER_HELP}")
    add_store_options(p)
    p.add_argument("--image-key", metavar="KEY", help="detector image field (default: the first 2D field)")
    add_reconstructor_options(p, init_default=None, defaults_from="the latest derived run")
    p.add_argument("--seed", type=int, help="seed of random starts (default: the latest derived run's)")
    p.set_defaults(func=run)


def done_runs(client) -> set[str]:
    """Uids of the raw runs that have a complete derived run: a stop document, and no frame
    ``error`` (engine failure) or ``dropped`` (queue full)."""
    from ..results import PARENT_UID, counts
    from ..tiled import derived_runs

    done = set()
    for run in derived_runs(client):
        stop = run.metadata.get("stop")
        c = counts(stop or {})
        if stop and c["error"] == 0 and c["dropped"] == 0:
            done.add(run.metadata["start"][PARENT_UID])
    return done


def select_runs(client, args: argparse.Namespace) -> tuple[list[str], int]:
    """(raw uids to rebuild, runs skipped as done): the named ones, or those of --all / --since."""
    from ..errors import CDIValueError
    from ..tiled import raw_runs

    if bool(args.raw_uid) + bool(args.all) + bool(args.since) != 1:
        raise CDIValueError("reprocess: give RAW_UID..., --all or --since DATE (one of them)")
    if args.raw_uid:
        return [client[uid].metadata["start"]["uid"] for uid in args.raw_uid], 0
    try:
        uids = [start["uid"] for start in raw_runs(client, since=args.since)]
    except ValueError as exc:  # a DATE TimeRange cannot read
        raise CDIValueError(f"--since {args.since!r}: {exc}") from exc
    done = set() if args.force else done_runs(client)
    todo = [uid for uid in uids if uid not in done]
    return todo, len(uids) - len(todo)


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


def _close_started(starting) -> None:
    """Close the cluster a future started, once it has (nothing if starting it failed)."""
    if starting.exception() is None:
        starting.result().close()


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    from ..callbacks import DaskCluster, reprocess
    from ..errors import CDIError, CDIRuntimeError, CDIValueError
    from ..results import counts
    from ..tiled import DataDir, make_writer, processed

    quiet_logs()
    # the cluster starts (worker processes, their imports) while Tiled is opened and the runs chosen
    starting = None
    if args.cluster:
        starter = ThreadPoolExecutor(1)
        starting = starter.submit(DaskCluster, args.cluster)
        starter.shutdown(wait=False)  # its one thread ends with the start
    try:
        client = open_client(args)
        if args.data_dir is None:
            raise CDIValueError(
                "reprocess needs --data-dir DIR for the result HDF5 files (readable by the Tiled server)"
            )
        uids, skipped = select_runs(client, args)
    except BaseException:
        if starting is not None:
            starting.add_done_callback(_close_started)
        raise
    print(f"reprocess: {len(uids)} raw run(s) to rebuild, {skipped} already done", flush=True)
    cluster = starting.result() if starting is not None else None
    if not uids:
        if cluster is not None:
            cluster.close()
        return 0
    dirs = DataDir.of(args.data_dir)

    def one(raw_uid: str) -> dict:
        recorded, live = recorded_settings(client, raw_uid)
        rec = build_reconstructor(args, recorded=recorded)
        seed = args.seed if args.seed is not None else live.get("seed", LiveConfig.model_fields["seed"].default)
        config = LiveConfig.build(
            seed=seed,
            data_dir=dirs.root,
            image_key=args.image_key or live.get("image_key"),
            preprocess=live.get("preprocess"),  # raw counts are preprocessed again as they were live
        )
        engine = rec if cluster is None else cluster.engine(rec.config)
        return reprocess(client, raw_uid, engine, writer, config)

    writer = make_writer(processed(client), dirs.derived_spool, batch_size=1000)
    failed: list[str] = []
    try:
        with (
            ThreadPoolExecutor(1 if cluster is None else cluster.n_workers) as pool,
            tqdm(total=len(uids), unit="run", desc="reprocess", disable=len(uids) < 2) as bar,
        ):
            jobs = {pool.submit(one, uid): uid for uid in uids}
            for job in as_completed(jobs):
                raw_uid = jobs[job]
                try:
                    stop = job.result()
                except CDIError as exc:  # this run cannot be rebuilt: say why, go on with the others
                    failed.append(f"{raw_uid}: {exc}")
                    tqdm.write(f"reprocess of raw run {raw_uid} failed: {exc}")
                else:
                    c = counts(stop)
                    tqdm.write(
                        f"reprocessed raw run {raw_uid}: derived run {stop['run_start']}: {c['reconstructed']} "
                        f"reconstructed, {c['flagged']} flagged of {c['received']} frames"
                    )
                bar.update()
    finally:
        if cluster is not None:
            cluster.close()
        if not writer.flush(timeout=60):
            print(
                f"warning: Tiled unreachable; derived runs wait in {writer.journal_dir} (delivered by the next writer)"
            )
        for uid, reason in writer.quarantine:
            print(f"warning: Tiled refused derived run {uid} ({reason}); kept in {writer.spool_dir}/quarantine")
        writer.close()
    if failed:
        raise CDIRuntimeError(f"{len(failed)} of {len(uids)} run(s) not rebuilt: " + "; ".join(failed))
    return 0
