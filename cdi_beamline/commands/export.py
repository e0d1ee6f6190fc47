"""``cdi-beamline export``: a raw run's derived run from Tiled to a CXI file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CDIValueError
from ..results import DERIVED_KIND, KIND, PARENT_UID, RAW_SEQ_NUM, RECONSTRUCTED, RECONSTRUCTOR
from .results import add_store_options, open_client, quiet_logs


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a raw run's derived run (reconstructions) to a CXI file",
        description="Read the latest derived run of RAW_UID (or --derived UID) from Tiled and write it as CXI 1.6 "
        "(docs/interfaces.md): the per-frame 2D reconstructions as one stacked entry_1/image_1 (complex object, "
        "support, chi² in process_1/results, the raw seq_num as frame_index, the engine's record as process_1's "
        "configuration). Frames without a reconstruction (bad, error, dropped) are left out and counted.",
    )
    p.add_argument("raw_uid", metavar="RAW_UID", help="raw run uid (full or partial)")
    p.add_argument("--format", choices=["cxi"], default="cxi", help="file format (default cxi)")
    p.add_argument("--out", metavar="FILE", help="output file (overwritten; default RAW_UID[:8]-DERIVED_UID[:8].cxi)")
    p.add_argument("--derived", metavar="UID", help="this derived run of RAW_UID instead of the latest")
    add_store_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tiled import derived_runs

    quiet_logs()
    client = open_client(args)
    raw_uid = args.raw_uid
    if len(raw_uid) != 36:
        try:
            raw_uid = client[raw_uid].metadata["start"]["uid"]  # partial uid -> full
        except KeyError:
            raise CDIValueError(f"no raw run {args.raw_uid!r} in the catalog") from None
    runs = derived_runs(client, raw_uid)
    if args.derived is not None:
        runs = [r for r in runs if r.metadata["start"]["uid"].startswith(args.derived)]
    if not runs:
        which = f" {args.derived!r}" if args.derived else ""
        raise CDIValueError(f"raw run {raw_uid} has no derived run{which}")
    start = runs[-1].metadata["start"]
    kind = start.get(KIND)
    exporter = EXPORTERS.get(kind)
    if exporter is None:
        raise CDIValueError(f"derived run {start['uid']}: no {args.format} export for its kind {kind!r}")
    out = Path(args.out or f"{raw_uid[:8]}-{start['uid'][:8]}.cxi").resolve()
    if out.is_dir() or not out.parent.is_dir():
        raise CDIValueError(f"--out {out}: give a file in an existing folder")
    partial = out.with_name(f".{out.name}.partial")  # renamed over --out once complete
    try:
        summary = exporter(client, start["uid"], partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{out}: derived run {start['uid']} of raw run {start[PARENT_UID]}: {summary}")
    return 0


def _previews_2d(client, derived_uid: str, path: Path) -> str:
    """The live (or reprocessed) 2D previews of a derived run as one stacked CXI image."""
    import numpy as np

    from ..cxi import write_cxi
    from ..tiled import load_results

    res = load_results(client, derived_uid)
    rows = np.isin(res["status"], RECONSTRUCTED)
    if not rows.any():
        raise CDIValueError(f"derived run {derived_uid} holds no reconstructed frame ({len(rows)} rows)")
    obj = (res["amplitude"][rows] * np.exp(1j * res["phase"][rows])).astype(np.complex64)
    write_cxi(
        path,
        object=obj,
        support=res["support"][rows],
        chi2=res["chi2"][rows],
        ndim=2,
        frame_index=res[RAW_SEQ_NUM][rows],
        process={"configuration": res["start"].get(RECONSTRUCTOR)},
    )
    left = int((~rows).sum())
    return f"{int(rows.sum())} frame(s) written" + (f", {left} without a reconstruction left out" if left else "")


EXPORTERS: dict[str | None, Callable[[Any, str, Path], str]] = {DERIVED_KIND: _previews_2d}
"""Derived run kind (``start[cdi_kind]``) -> writer ``(client, derived_uid, path) -> summary``; a 3D
derived run's kind writes one volume (``write_cxi(..., ndim=3)``)."""
