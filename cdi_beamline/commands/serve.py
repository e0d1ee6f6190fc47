"""``cdi-beamline serve``: serve a data directory with the embedded Tiled server."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a data directory (raw + derived runs) with a local Tiled server",
        description="Start the embedded Tiled server on DIR (SQLite catalog + files; results HDF5 readable) "
        "and keep it running until Ctrl-C. Other commands given --data-dir DIR use it while it runs. A DIR "
        "that another live server already serves is refused.",
    )
    p.add_argument("--data-dir", required=True, metavar="DIR", help="data directory (created if missing)")
    p.add_argument("--port", type=int, default=0, metavar="P", help="port (default: a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import time

    from ..errors import CDIValueError
    from ..tiled import EmbeddedTiled

    if not 0 <= args.port <= 65535:
        raise CDIValueError(f"--port must be in 0..65535, got {args.port}")
    # Ctrl-C and SIGTERM stop the server cleanly, also where this process was started with
    # SIGINT ignored (a background job of a non-interactive shell inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with EmbeddedTiled(args.data_dir, port=args.port, exclusive=True) as server:
        print(f"serving {server.data_dir}", flush=True)
        print(f"  uri      {server.uri}", flush=True)
        print(f"  api key  {server.api_key}   (also in {server.tiled_dir / 'api_key'})", flush=True)
        print(f"  browse   {server.uri}/?api_key={server.api_key}   (the access log records it redacted)", flush=True)
        print("Ctrl-C to stop", flush=True)
        try:
            # Sleep in short steps: a signal the kernel hands to one of the server's threads
            # would not wake a main thread blocked for good, and Ctrl-C would be lost.
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0
