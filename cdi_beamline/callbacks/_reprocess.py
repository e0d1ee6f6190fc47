"""Rebuild the derived run of a raw run stored in Tiled (after a worker failure, or with a
different configuration)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..config import LiveConfig
from ..errors import CDIRuntimeError
from ..results import REPROCESSED, SUPERSEDES
from ..tiled import derived_runs, load_raw_frames
from ._assembler import Engine
from ._items import Frames, ImageSpec, RunStart, RunStop
from ._volume import rocking_motor
from ._worker import ReconstructionWorker

__all__ = ["reprocess"]


def reprocess(
    client,
    raw_uid: str,
    reconstructor: Engine,
    writer: Callable[[str, dict], object],
    config: LiveConfig | None = None,
    mask: np.ndarray | None = None,
) -> dict:
    """Reconstruct every frame of raw run ``raw_uid`` again and emit a new derived run.

    The frames are read back from Tiled (``config.image_key``, ``config.stream``) and go
    through the same worker as live frames (same batches of ``reconstructor.config.batch_size``,
    same seed), driven here without its thread. The new start document says
    ``reprocessed: True`` and lists the derived runs it ``supersedes``; the raw run is not touched.
    A rocking scan (``config.rocking``) also gets a new 3D run, its angles read from the raw
    stream's motor column; this returns once it is written.

    Returns
    -------
    dict
        The new derived run's stop document (``run_start`` is its uid, ``cdi_counts``...).
    """
    config = config or LiveConfig()
    frames, seq_num, key = load_raw_frames(client, raw_uid, config.image_key, config.stream)
    raw_start = dict(client[raw_uid].metadata["start"])
    raw_stop = dict(client[raw_uid].metadata.get("stop") or {"exit_status": "success"})
    previous = [r.metadata["start"]["uid"] for r in derived_runs(client, raw_uid)]
    worker = ReconstructionWorker(
        reconstructor, writer, config, mask=mask, metadata={REPROCESSED: True, SUPERSEDES: previous}
    )
    shape = (int(frames.shape[1]), int(frames.shape[2]))
    for item in (RunStart(raw_start), ImageSpec(raw_uid, key, shape), Frames(raw_uid, seq_num, frames)):
        worker.handle(item)
    worker.handle(RunStop(raw_uid, raw_stop, positions=_positions(client, raw_uid, raw_start, config)))
    worker.volumes.wait()
    if worker.errors:
        raise CDIRuntimeError(f"reprocess of {raw_uid}: {worker.errors[0]}")
    return worker.stops[raw_uid]


def _positions(client, raw_uid: str, raw_start: dict, config: LiveConfig) -> dict[int, float]:
    """seq_num -> the rocking motor's reading in the raw stream (empty if not a rocking scan
    or the stream has no such column)."""
    motor = rocking_motor(raw_start, config.rocking)
    stream = client[raw_uid][config.stream]
    if motor is None or motor not in stream:
        return {}
    values = np.asarray(stream[motor].read(), np.float64).reshape(-1)
    seqs = np.asarray(stream["seq_num"].read(), np.int64) if "seq_num" in stream else np.arange(1, len(values) + 1)
    return dict(zip(seqs.tolist(), values.tolist()))
