"""``cdi-beamline worker``: the live reconstruction worker in its own process, fed by 0MQ."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import LIVE_ITERATIONS, LiveConfig, StoreConfig
from .results import (
    add_cluster_option,
    add_queue_policy_option,
    add_reconstructor_options,
    add_store_options,
    build_reconstructor,
    quiet_logs,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "worker",
        help="run LiveReconstruction in its own process, fed by bluesky's 0MQ publisher",
        description="Subscribe to a bluesky 0MQ proxy (bluesky.callbacks.zmq: the RunEngine side does "
        "RE.subscribe(Publisher('host:in_port', serializer=cdi_beamline.tiled.encode_document)); a proxy "
        "forwards to out_port) and reconstruct every "
        "frame of every run, writing one derived run per raw run to Tiled (--uri, or the embedded server "
        "of --data-dir). Result HDF5 files go to DIR/results, which the Tiled server must read. The GPU "
        "can sit on another host than the RunEngine; with --cluster, this one worker fans the batches out to "
        "the Dask workers behind it (run one worker per scan stream: two would both reconstruct every run). Documents travel as JSON: a pickled message is dropped, "
        "never unpickled.",
    )
    p.add_argument("--zmq", required=True, metavar="ADDRESS", help="the 0MQ proxy's output, host:port")
    p.add_argument("--prefix", default="", help="only documents published with this prefix")
    p.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="CURVE: this worker's secret key file (zmq.auth.create_certificates), for a proxy whose output "
        "requires keys (bluesky-0MQ-proxy --out-curve-secret ... --out-curve-client-keys ...)",
    )
    p.add_argument("--curve-server-public", metavar="FILE", help="CURVE: the proxy's public key file")
    add_store_options(p)
    add_reconstructor_options(p, init_default=None, iterations_default=LIVE_ITERATIONS)
    p.add_argument("--image-key", metavar="KEY", help="detector image field (default: the first 2D field)")
    add_queue_policy_option(p, "0MQ buffers")
    add_cluster_option(p)
    p.add_argument("--write-raw", action="store_true", help="also store the raw runs (if no other writer does)")
    p.add_argument("--max-runs", type=int, metavar="N", help="exit after N runs (default: run until Ctrl-C)")
    p.add_argument(
        "--retry-max-s",
        type=float,
        metavar="S",
        default=StoreConfig.model_fields["retry_max_s"].default,
        help="longest wait between delivery attempts while Tiled is unreachable (default %(default)s; "
        "documents wait in DIR/spool meanwhile)",
    )
    p.set_defaults(func=run)


def make_dispatcher(args: argparse.Namespace):
    """The bluesky ``RemoteDispatcher`` of ``--zmq`` (``--prefix``, CURVE keys if given) that
    decodes JSON: never pickle, which would run a message's code on this (GPU) host."""
    from bluesky.callbacks.zmq import ClientCurve, RemoteDispatcher

    from ..errors import CDIValueError
    from ..tiled import decode_document

    keys = (args.curve_secret, args.curve_server_public)
    if any(keys) and not all(keys):
        raise CDIValueError("CURVE needs both --curve-secret and --curve-server-public")
    for key in filter(None, keys):
        if not Path(key).is_file():
            raise CDIValueError(f"no such key file: {key}")
    curve = ClientCurve(Path(args.curve_secret), Path(args.curve_server_public)) if all(keys) else None
    return RemoteDispatcher(args.zmq, prefix=args.prefix.encode(), deserializer=decode_document, curve_config=curve)


def run(args: argparse.Namespace) -> int:
    from ..callbacks import LiveSession
    from ..errors import CDIValueError

    quiet_logs()
    if args.data_dir is None:
        raise CDIValueError("worker needs --data-dir DIR (result HDF5 files, spool; the embedded server without --uri)")
    if args.max_runs is not None and args.max_runs < 1:
        raise CDIValueError(f"--max-runs must be >= 1, got {args.max_runs}")
    rec = build_reconstructor(args)
    store = StoreConfig.build(
        data_dir=Path(args.data_dir), uri=args.uri, api_key=args.api_key, retry_max_s=args.retry_max_s
    )
    live = LiveConfig.build(queue_policy=args.queue_policy, image_key=args.image_key, cluster=args.cluster)
    dispatcher = make_dispatcher(args)
    starts: set[str] = set()
    stops: list[str] = []
    enough: list[bool] = []  # set when --max-runs is reached

    def _count_stops(name, doc):
        if name == "start":
            starts.add(doc["uid"])
        elif name == "stop" and doc["run_start"] not in starts:
            # 0MQ drops what is published before a subscription reaches the proxy ("slow joiner")
            print(f"ignored stop of run {doc['run_start']}: its start was not received (subscribed late?)", flush=True)
        elif name == "stop":
            stops.append(doc["run_start"])
            print(f"raw run {doc['run_start']} done ({len(stops)})", flush=True)
            if args.max_runs and len(stops) >= args.max_runs:
                enough.append(True)
                dispatcher.loop.stop()  # start() returns (raising RuntimeError) and closes the dispatcher

    with LiveSession(rec, store, live, write_raw=args.write_raw) as session:
        session.subscribe(dispatcher)
        dispatcher.subscribe(_count_stops)
        print(f"listening on {args.zmq}; results to {session.client.uri}", flush=True)
        try:
            dispatcher.start()
        except KeyboardInterrupt:
            pass
        except RuntimeError:  # "Event loop stopped before Future completed": --max-runs reached
            if not enough:
                raise
        print("finishing queued frames ...", flush=True)
        print(f"finished: {session.finish()}", flush=True)
        for raw_uid in stops:
            print(f"raw {raw_uid} -> derived {session.callback.derived_uid(raw_uid)}", flush=True)
    return 0
