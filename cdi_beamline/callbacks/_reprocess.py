"""Rebuild the derived run of a raw run stored in Tiled (after a worker failure, or with a
different configuration)."""

from __future__ import annotations

import queue
from collections.abc import Callable

from ..config import LiveConfig
from ..store import derived_runs, load_raw_frames
from ._worker import ReconstructionWorker

__all__ = ["reprocess"]


def reprocess(
    client,
    raw_uid: str,
    reconstructor,
    writer: Callable[[str, dict], object],
    config: LiveConfig | None = None,
    image_key: str | None = None,
    mask=None,
) -> dict:
    """Reconstruct every frame of raw run ``raw_uid`` again and emit a new derived run.

    The frames are read back from Tiled and go through the same worker code as live
    frames (same batching, same seed). The new start document says ``reprocessed: True``
    and lists the derived runs it ``supersedes``; the raw run is not touched.

    Returns
    -------
    dict
        The new derived run's stop document (``run_start`` is its uid, ``cdi_counts``...).
    """
    config = config or LiveConfig()
    frames, seq_num, key = load_raw_frames(client, raw_uid, image_key or config.image_key, config.stream)
    raw_start = dict(client[raw_uid].metadata["start"])
    raw_stop = dict(client[raw_uid].metadata.get("stop") or {"exit_status": "success"})
    previous = [r.metadata["start"]["uid"] for r in derived_runs(client, raw_uid)]
    worker = ReconstructionWorker(reconstructor, writer, config, queue.Queue(), mask=mask)
    worker.extra_metadata = {"reprocessed": True, "supersedes": previous}
    worker._handle(("start", raw_start, key, tuple(frames.shape[-2:])))
    for seq, frame in zip(seq_num, frames):
        worker._handle(("frame", raw_uid, int(seq), frame))
    worker._handle(("stop", raw_uid, raw_stop, [], ""))
    return worker.stops[raw_uid]
