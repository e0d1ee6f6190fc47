"""The ``cdi-beamline`` command.

Each subcommand lives in ``cdi_beamline.commands.<module>`` and exposes
``add_parser(subparsers)`` (which registers it and sets ``func``) — so ``--help``
stays fast and one subsystem's import errors never break another's command.

Errors: a :class:`cdi_beamline.errors.CDIError` (bad input, configuration or environment)
becomes one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import CDIError
from .resources import passive_openmp, skip_numba_extensions

passive_openmp()  # before any command imports torch: OpenMP reads OMP_WAIT_POLICY once, at start
skip_numba_extensions()  # the CLI's process is ours: numba loads no third-party extension

# (subcommand, module under cdi_beamline.commands)
COMMANDS = [
    ("simulate", "simulate"),
    ("gallery", "gallery"),
    ("reconstruct", "reconstruct"),
    ("train", "train"),
    ("evaluate", "evaluate"),
    ("demo", "demo"),
    ("serve", "serve"),
    ("results", "results"),
    ("export", "export"),
    ("reprocess", "reprocess"),
    ("worker", "worker"),
    ("tango-server", "tango_server"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdi-beamline",
        description="Live coherent diffraction imaging: simulate, reconstruct, train, and "
        "run the Bluesky/Tiled live pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"cdi-beamline {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module in COMMANDS:
        try:
            mod = importlib.import_module(f"cdi_beamline.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cdi_beamline.commands.{module}":
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # httpx logs every request line at INFO: noise, and a URL may carry an API key.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CDIError as exc:
        # What the user can fix: one line (the traceback with -v). Any other exception is a
        # bug and propagates with its traceback.
        if args.verbose:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"cdi-beamline {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
