"""Scale: past one process on Dask (rows of :mod:`scale_dask`; the whole-machine rows of
``reconstruct`` are their own group). Measured in the same repeat so that ratios share the load.

    ./run bench scale [--repeats N] -- [--dask-frames 256] [--dask-runs 20]
"""

from __future__ import annotations

import argparse
import sys

import scale_dask
from _harness import main

NAME = "scale"
TITLE = "Scale: Dask workers for live frames and for reprocess"
ROWS = [*scale_dask.ROWS]
RATIOS = [*scale_dask.RATIOS]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    scale_dask.add_arguments(ap)


def params(args: argparse.Namespace) -> dict:
    return scale_dask.params(args)


def setup(args: argparse.Namespace) -> dict:
    return {"dask": scale_dask.setup(args)}


def measure(args: argparse.Namespace, state: dict) -> dict:
    return scale_dask.measure(args, state["dask"])


def teardown(state: dict) -> None:
    scale_dask.teardown(state["dask"])


if __name__ == "__main__":
    main(sys.modules[__name__])
