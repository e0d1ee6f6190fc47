"""``cdi-beamline export``: a raw run's derived run from Tiled to a CXI file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CDIValueError
from ..results import (
    DERIVED_KIND,
    GEOMETRY,
    KIND,
    PARENT_UID,
    RAW_SEQ_NUM,
    RECONSTRUCTED,
    RECONSTRUCTOR,
    ROCKING,
    VOLUME_KIND,
    VOLUME_SUMMARY,
)
from .results import add_store_options, open_client, quiet_logs


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a raw run's derived run (reconstructions) to a CXI file",
        description="Read the latest derived run of RAW_UID (or --derived UID) from Tiled and write it as CXI 1.6 "
        "(docs/interfaces.md): the per-frame 2D reconstructions as one stacked entry_1/image_1 (complex object, "
        "support, chi² in process_1/results, the raw seq_num as frame_index, the engine's record as process_1's "
        "configuration). Frames without a reconstruction (bad, error, dropped) are left out and counted. "
        "A rocking scan's 3D run (--what volume, the default where the raw run has one) is written as one "
        "(D, H, W) image with its support, chi², the starts' chi² and spreads, and the geometry it was given.",
    )
    p.add_argument("raw_uid", metavar="RAW_UID", help="raw run uid (full or partial)")
    p.add_argument("--format", choices=["cxi"], default="cxi", help="file format (default cxi)")
    p.add_argument("--out", metavar="FILE", help="output file (overwritten; default RAW_UID[:8]-DERIVED_UID[:8].cxi)")
    p.add_argument("--derived", metavar="UID", help="this derived run of RAW_UID instead of the latest")
    p.add_argument(
        "--what",
        choices=["previews", "volume"],
        help="the per-frame 2D previews or the rocking scan's 3D run (default: the 3D run where there is one)",
    )
    add_store_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tiled import derived_runs, volume_runs

    quiet_logs()
    client = open_client(args)
    raw_uid = args.raw_uid
    if len(raw_uid) != 36:
        try:
            raw_uid = client[raw_uid].metadata["start"]["uid"]  # partial uid -> full
        except KeyError:
            raise CDIValueError(f"no raw run {args.raw_uid!r} in the catalog") from None
    volumes = volume_runs(client, raw_uid) if args.what != "previews" else []
    if args.what == "volume" and not volumes:
        raise CDIValueError(f"raw run {raw_uid} has no 3D run (it was not a rocking scan, or had too few frames)")
    runs = volumes or derived_runs(client, raw_uid)
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


def _volume_3d(client, volume_uid: str, path: Path) -> str:
    """A rocking scan's 3D run as one CXI volume."""
    import numpy as np

    from ..cxi import write_cxi
    from ..tiled import load_volume

    vol = load_volume(client, volume_uid)
    summary = vol["stop"].get(VOLUME_SUMMARY) or {}
    if summary.get("status") != "ok":
        raise CDIValueError(
            f"3D run {volume_uid}: status {summary.get('status')!r} ({summary.get('reason') or 'no reason given'}): "
            "nothing to export"
        )
    write_cxi(
        path,
        object=(vol["amplitude"] * np.exp(1j * vol["phase"])).astype(np.complex64),
        support=vol["support"].astype(bool),
        chi2=float(vol["chi2"]),
        ndim=3,
        geometry=vol["start"].get(GEOMETRY) or None,
        process={"configuration": vol["start"].get(ROCKING)},
        results={k: vol[k] for k in ("chi2_starts", "spread_amplitude", "spread_phase") if k in vol},
    )
    return f"one {'x'.join(map(str, vol['amplitude'].shape))} volume written, chi² {float(vol['chi2']):.3g}"


EXPORTERS: dict[str | None, Callable[[Any, str, Path], str]] = {DERIVED_KIND: _previews_2d, VOLUME_KIND: _volume_3d}
"""Derived run kind (``start[cdi_kind]``) -> writer ``(client, derived_uid, path) -> summary``."""
