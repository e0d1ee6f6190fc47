"""``cdi-beamline serve``: serve a data directory with a Tiled server of this package."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a data directory (raw + derived runs) with a Tiled server",
        description="Start a Tiled server on DIR (catalog: SQLite in DIR, or PostgreSQL with --catalog; results "
        "HDF5 readable) and keep it running until Ctrl-C. Other commands given --data-dir DIR use it while it "
        "runs. A DIR that another live server already serves is refused. --config FILE (YAML or JSON) holds the "
        "same settings as fields of StoreConfig (data_dir, catalog, host, port, api_key); options given here win.",
    )
    p.add_argument(
        "--config", metavar="FILE", help="StoreConfig file (YAML/JSON): data_dir, catalog, host, port, api_key"
    )
    p.add_argument("--data-dir", metavar="DIR", help="data directory (created if missing; default: cdi-data)")
    p.add_argument(
        "--catalog",
        metavar="URI",
        help="catalog database, e.g. postgresql://user@dbhost:5432/tiled (existing; recorded in DIR); "
        "default: the one DIR was last served with, else SQLite in DIR",
    )
    p.add_argument(
        "--host",
        metavar="ADDR",
        help="interface to listen on (default 127.0.0.1; 0.0.0.0 or the host's address needs an API key)",
    )
    p.add_argument("--port", type=int, metavar="P", help="port (default: a free one)")
    p.add_argument(
        "--api-key",
        metavar="K",
        help="the key clients must send (default: $TILED_SINGLE_USER_API_KEY, as for Tiled's own server; "
        "else DIR's own, generated once)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import time

    from ..config import StoreConfig, load_config
    from ..tiled import EmbeddedTiled, redact

    store = load_config(
        StoreConfig,
        args.config,
        data_dir=args.data_dir,
        catalog=args.catalog,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("TILED_SINGLE_USER_API_KEY") or None,
    )
    # Ctrl-C and SIGTERM stop the server cleanly, also where this process was started with
    # SIGINT ignored (a background job of a non-interactive shell inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with EmbeddedTiled(
        store.data_dir, store.port, exclusive=True, catalog=store.catalog, host=store.host, api_key=store.api_key
    ) as server:
        server.client()  # creates the run catalog now: clients by --uri find it from the start
        print(f"serving {server.data_dir}", flush=True)
        print(f"  catalog  {redact(server.catalog)}", flush=True)
        print(f"  listen   {server.host}:{server.port}", flush=True)
        print(f"  uri      {server.uri}", flush=True)
        if store.api_key is None:  # a key the operator gave is not echoed
            print(f"  api key  {server.api_key}   (also in {server.tiled_dir / 'api_key'})", flush=True)
            print(
                f"  browse   {server.uri}/?api_key={server.api_key}   (the access log records it redacted)", flush=True
            )
        else:
            print(f"  api key  the one given (also in {server.tiled_dir / 'api_key'})", flush=True)
        print("Ctrl-C to stop", flush=True)
        try:
            # Sleep in short steps: a signal the kernel hands to one of the server's threads
            # would not wake a main thread blocked for good, and Ctrl-C would be lost.
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0
