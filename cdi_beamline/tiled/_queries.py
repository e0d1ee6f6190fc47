"""Reading runs back from Tiled: derived runs of a raw run, their results, the raw frames."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CDIValueError
from ..results import DERIVED_KIND, KIND, PARENT_UID, STREAM, ResultRows, find_image_key

__all__ = ["derived_runs", "load_raw_frames", "load_results"]


def derived_runs(client, raw_uid: str | None = None) -> list:
    """Derived (reconstruction) runs, oldest first; only those of ``raw_uid`` if given."""
    from tiled.queries import Key

    results = client.search(Key(f"start.{KIND}") == DERIVED_KIND)
    if raw_uid is not None:
        results = results.search(Key(f"start.{PARENT_UID}") == raw_uid)
    runs = [results[uid] for uid in results]
    return sorted(runs, key=lambda r: r.metadata["start"]["time"])


def _v3(run):
    # a run's client may come back in the v2 (databroker) flavour once ``.v2`` was used
    return getattr(run, "v3", run)


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
    run = _v3(client[derived_uid])
    md = run.metadata
    if md["start"].get(KIND) != DERIVED_KIND:
        raise CDIValueError(f"run {derived_uid!r} is not a derived reconstruction run")
    rows = ResultRows.from_columns(run[STREAM].read()) if STREAM in run else ResultRows.empty()
    return {**rows.to_dict(), "start": dict(md["start"]), "stop": dict(md.get("stop") or {})}


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
