"""Where derived runs live in Tiled, and reading runs back: derived runs of a raw run, their
results, the raw frames.

Layout of a run catalog: raw scans at the root; every derived run in the root's container
:data:`cdi_beamline.results.PROCESSED` (a catalog of Bluesky runs of its own, created by
:func:`processed` at the first session). Derived runs written before that container existed
(at the root) are still found.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CDIValueError
from ..results import (
    DERIVED_KIND,
    KIND,
    PARENT_UID,
    PROCESSED,
    STREAM,
    VOLUME_KIND,
    ResultRows,
    VolumeResult,
    find_image_key,
)

__all__ = [
    "derived_of",
    "derived_runs",
    "load_raw_frames",
    "load_results",
    "load_volume",
    "processed",
    "raw_runs",
    "volume_runs",
]

_CATALOG_SPEC = "CatalogOfBlueskyRuns"


def _child(client, key: str):
    # A catalog of runs reads a string key as a (partial) run uid; a plain container lookup
    # reaches a named child.
    from tiled.client.container import Container

    return Container.__getitem__(client, key)


def processed(client, *, create: bool = True):
    """The container of derived runs under the run catalog ``client``.

    Created (a catalog of Bluesky runs, so ``processed(client)[-1]`` is the latest derived
    run) when missing and ``create``; a concurrent creator is tolerated. Returns None when it
    is missing and not ``create``.
    """
    from tiled.structures.core import Spec

    try:
        return _child(client, PROCESSED)
    except KeyError:
        if not create:
            return None
    try:
        return client.create_container(
            PROCESSED,
            specs=[Spec(_CATALOG_SPEC, version="3.0")],
            metadata={"description": "derived runs (cdi-beamline reconstructions) of the raw scans beside it"},
        )
    except Exception as exc:  # another session may have created it since our lookup
        try:
            return _child(client, PROCESSED)
        except KeyError:
            raise exc from None


def _catalogs(client) -> list:
    # where derived runs may be: their container, then the root (runs stored before it existed)
    container = processed(client, create=False)
    return [client] if container is None else [container, client]


def derived_runs(client, raw_uid: str | None = None, *, kind: str = DERIVED_KIND) -> list:
    """Derived (reconstruction) runs of the run catalog ``client``, oldest first; only those
    of ``raw_uid`` if given. ``kind``: the per-frame 2D runs (default), or
    :data:`cdi_beamline.results.VOLUME_KIND` for the 3D runs of rocking scans."""
    from tiled.queries import Key

    runs: list[Any] = []
    for catalog in _catalogs(client):
        results = catalog.search(Key(f"start.{KIND}") == kind)
        if raw_uid is not None:
            results = results.search(Key(f"start.{PARENT_UID}") == raw_uid)
        runs.extend(results[uid] for uid in results)
    return sorted(runs, key=lambda r: r.metadata["start"]["time"])


def volume_runs(client, raw_uid: str | None = None) -> list:
    """The 3D runs (rocking scans) of the run catalog ``client``, oldest first; only those of
    ``raw_uid`` if given."""
    return derived_runs(client, raw_uid, kind=VOLUME_KIND)


def raw_runs(client, since: str | None = None) -> list[dict]:
    """Start documents of the raw runs (not derived ones) at the root of the run catalog
    ``client``, oldest first; only those started at or after ``since`` (ISO 8601 date or time,
    UTC) if given."""
    from bluesky_tiled_plugins.queries import TimeRange

    catalog = client.search(TimeRange(since=since, timezone="UTC")) if since else client
    starts = [
        dict(node.metadata["start"])
        for key, node in catalog.items()
        if key != PROCESSED and "start" in node.metadata and KIND not in node.metadata["start"]
    ]
    return sorted(starts, key=lambda start: start["time"])


def derived_of(raw_run) -> list:
    """The derived runs of a raw run client (e.g. ``catalog[-1]``), oldest first."""
    return derived_runs(raw_run.parent, raw_run.metadata["start"]["uid"])


def _v3(run):
    # a run's client may come back in the v2 (databroker) flavour once ``.v2`` was used
    return getattr(run, "v3", run)


def _derived_run(client, derived_uid: str):
    for catalog in _catalogs(client):
        try:
            return catalog[derived_uid]
        except KeyError:
            continue
    raise CDIValueError(f"no run {derived_uid!r} in the catalog or its {PROCESSED!r} container")


def load_results(client, derived_uid: str) -> dict[str, Any]:
    """All results of a derived run as numpy arrays.

    Returns
    -------
    dict
        The columns of :data:`cdi_beamline.results.RESULT_KEYS` (``amplitude``, ``phase``,
        ``start_amplitude``, ``start_phase`` (N, H, W) float32; ``support`` (N, H, W) bool;
        ``chi2_history`` (N, 64) float32; ``chi2``, ``scale`` (N,) float64; ``raw_seq_num``
        (N,) int64; ``status``, ``reason`` (N,) str; columns a run written before them lacks
        are NaN) and ``start``, ``stop``: the run's documents.

    Raises
    ------
    CDIValueError
        When the run is not a derived run.
    """
    run = _v3(_derived_run(client, derived_uid))
    md = run.metadata
    if md["start"].get(KIND) != DERIVED_KIND:
        raise CDIValueError(f"run {derived_uid!r} is not a derived reconstruction run")
    rows = ResultRows.from_columns(run[STREAM].read()) if STREAM in run else ResultRows.empty()
    return {**rows.to_dict(), "start": dict(md["start"]), "stop": dict(md.get("stop") or {})}


def load_volume(client, volume_uid: str) -> dict[str, Any]:
    """The 3D run of a rocking scan as numpy arrays.

    Returns
    -------
    dict
        ``amplitude``, ``phase`` (D, H, W) float32, ``support`` (D, H, W) bool,
        ``chi2_starts`` (N,) float32, ``rocking_angle`` (D,) float64, ``raw_seq_num`` (D,)
        int64, with a geometry ``lab_amplitude``, ``lab_phase`` (Z, Y, X) float32 and
        ``lab_support`` bool, ``chi2``, ``spread_amplitude``, ``spread_phase`` floats (keys of
        :data:`~cdi_beamline.results.VOLUME_ARRAY_DTYPES` and
        :data:`~cdi_beamline.results.VOLUME_SCALAR_DTYPES`; absent when the phasing failed),
        and ``start``, ``stop``: the run's documents (``stop[VOLUME_SUMMARY]``: status, reason).

    Raises
    ------
    CDIValueError
        When the run is not a 3D run.
    """
    run = _v3(_derived_run(client, volume_uid))
    md = run.metadata
    if md["start"].get(KIND) != VOLUME_KIND:
        raise CDIValueError(f"run {volume_uid!r} is not a 3D run of a rocking scan")
    result = VolumeResult.from_columns(run[STREAM].read()).to_dict() if STREAM in run else {}
    return {**result, "start": dict(md["start"]), "stop": dict(md.get("stop") or {})}


def load_raw_frames(
    client, raw_uid: str, image_key: str | None = None, stream: str = "primary"
) -> tuple[np.ndarray, np.ndarray, str]:
    """The detector frames of a raw run, for reprocessing.

    Returns
    -------
    frames : np.ndarray (N, H, W) float32
    seq_num : np.ndarray (N,) int64
    image_key : str
        The data key read (``image_key``, or the first 2D field of the stream).

    Raises
    ------
    CDIValueError
        No such stream, or no such (or no 2-D) image field.
    """
    run = _v3(client[raw_uid])
    if stream not in run:
        raise CDIValueError(f"raw run {raw_uid!r} has no stream {stream!r}")
    node = run[stream]
    data_keys = node.metadata.get("data_keys", {})
    key = find_image_key(data_keys, image_key)
    if key is None and image_key is None:
        raise CDIValueError(f"raw run {raw_uid!r}: no 2D image field in stream {stream!r}")
    if key is None:
        raise CDIValueError(
            f"raw run {raw_uid!r}: no field {image_key!r} in stream {stream!r} (has {sorted(data_keys)})"
        )
    frames = np.asarray(node[key].read(), dtype=np.float32)
    frames = frames.reshape(frames.shape[0], *frames.shape[-2:])
    seq_num = np.asarray(node["seq_num"].read(), dtype=np.int64) if "seq_num" in node else np.arange(1, len(frames) + 1)
    return frames, seq_num, key
