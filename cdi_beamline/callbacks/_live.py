"""LiveReconstruction: the Bluesky callback (RunEngine thread side)."""

from __future__ import annotations

import logging
import math
import queue
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from event_model import DocumentRouter

from ..config import LiveConfig
from ..results import find_image_key, image_shape, uri_to_path
from ._assembler import Engine
from ._items import ExternalFrames, Frames, ImageSpec, Quit, RunStart, RunStop, Sync, WorkItem
from ._worker import ReconstructionWorker, RowsListener

__all__ = ["LiveReconstruction"]

logger = logging.getLogger(__name__)


@dataclass
class _RawRun:
    uid: str
    image_key: str | None = None
    descriptors: set[str] = field(default_factory=set)
    dropped: list[int] = field(default_factory=list)
    note: str = ""
    warned: bool = False


class LiveReconstruction(DocumentRouter):
    """Bluesky callback that reconstructs every detector frame of a scan, live.

    In the RunEngine thread it only finds frames (in events and event pages, or as
    StreamDatum ranges of an external HDF5 file) and puts them on the worker's bounded
    queue as typed items (:mod:`cdi_beamline.callbacks`' ``Frames``...): O(1) per document,
    and it never raises into the RunEngine (a failure is logged and counted in
    ``stats["callback_errors"]``). A :class:`ReconstructionWorker` thread batches the frames
    of each raw run and emits one derived run per raw run to ``writer``.

    Parameters
    ----------
    reconstructor : Engine
        E.g. ``cdi_beamline.pipeline.Reconstructor``; its ``config.batch_size`` is the batch.
    writer : callable(name, doc), optional
        Receives the derived documents (e.g. :func:`cdi_beamline.tiled.make_writer`); by
        default they are only kept in ``documents``.
    config : LiveConfig, optional
        Image key, stream, max wait, queue size and policy, seed, data directory.
    mask : (H, W) bool array, optional
        True = measured pixel, applied to every frame.

    Examples
    --------
    >>> cb = LiveReconstruction(Reconstructor(), make_writer(client, spool))  # doctest: +SKIP
    >>> RE.subscribe(cb); RE(count([det], 100)); cb.flush()                   # doctest: +SKIP
    """

    def __init__(
        self,
        reconstructor: Engine,
        writer: Callable[[str, dict], Any] | None = None,
        config: LiveConfig | None = None,
        *,
        mask: np.ndarray | None = None,
    ):
        self.config = config or LiveConfig()
        self.reconstructor = reconstructor
        self.documents: list[tuple[str, dict]] = []
        self._writer = writer
        self.worker = ReconstructionWorker(reconstructor, self._emit, self.config, mask=mask)
        self.worker.start()
        self._runs: dict[str, _RawRun] = {}
        self._desc: dict[str, _RawRun] = {}
        self._resources: dict[str, dict] = {}
        self.stats: Counter = Counter()

    # -- output --------------------------------------------------------------------------
    def _emit(self, name: str, doc: dict) -> None:
        if self._writer is None:
            self.documents.append((name, doc))
            return
        try:
            self._writer(name, doc)
        except Exception:  # noqa: BLE001 - a writer failure must not stop the worker
            logger.exception("derived %s document could not be written", name)
            self.stats["emit_errors"] += 1

    def add_listener(self, listener: RowsListener) -> None:
        """Call ``listener(raw_uid, rows)`` in the worker's thread for every batch of results."""
        self.worker.add_listener(listener)

    # -- RunEngine side --------------------------------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False):
        try:
            return super().__call__(name, doc, validate)
        except Exception:  # noqa: BLE001 - never abort the scan
            logger.exception("LiveReconstruction failed on a %s document", name)
            self.stats["callback_errors"] += 1
            return name, doc

    def start(self, doc):
        self._runs[doc["uid"]] = _RawRun(doc["uid"])
        self.stats["runs"] += 1
        self._put(RunStart(doc))

    def descriptor(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None or doc.get("name") != self.config.stream:
            return
        key = find_image_key(doc.get("data_keys", {}), self.config.image_key)
        if key is None:
            what = f"image field {self.config.image_key!r}" if self.config.image_key else "2D image field"
            run.note = f"no {what} in stream {self.config.stream!r}"
            logger.warning("LiveReconstruction: %s (fields %s)", run.note, sorted(doc.get("data_keys", {})))
            return
        run.image_key = key
        run.descriptors.add(doc["uid"])
        self._desc[doc["uid"]] = run
        dims = image_shape(doc["data_keys"][key])
        self._put(ImageSpec(run.uid, key, (dims[0], dims[1]) if len(dims) == 2 else None))

    def event(self, doc):
        run = self._desc.get(doc["descriptor"])
        if run is None or run.image_key not in doc["data"]:
            return
        frame = np.asarray(doc["data"][run.image_key])
        self._put_frames(run, Frames(run.uid, [doc["seq_num"]], frame[np.newaxis]))

    def event_page(self, doc):
        run = self._desc.get(doc["descriptor"])
        if run is None or run.image_key not in doc["data"]:
            return
        seqs, frames = doc["seq_num"], doc["data"][run.image_key]
        try:
            self._put_frames(run, Frames(run.uid, seqs, np.asarray(frames)))
        except ValueError:  # frames of different shapes: one item each
            for seq, frame in zip(seqs, frames):
                self._put_frames(run, Frames(run.uid, [seq], np.asarray(frame)[np.newaxis]))

    def stream_resource(self, doc):
        self._resources[doc["uid"]] = doc

    def stream_datum(self, doc):
        run = self._desc.get(doc["descriptor"])
        res = self._resources.get(doc["stream_resource"])
        if run is None or res is None or res["data_key"] != run.image_key:
            return
        dataset = res["parameters"].get("dataset", "data")
        i0, i1 = doc["indices"]["start"], doc["indices"]["stop"]
        item = ExternalFrames(run.uid, uri_to_path(res["uri"]), dataset, i0, i1, doc["seq_nums"]["start"] or 1)
        self._put_frames(run, item)

    def stop(self, doc):
        run = self._runs.pop(doc["run_start"], None)
        if run is None:
            return
        for uid in run.descriptors:
            self._desc.pop(uid, None)
        self._resources = {k: v for k, v in self._resources.items() if v.get("run_start") not in (run.uid, None)}
        self._put(RunStop(run.uid, doc, tuple(run.dropped), run.note))

    # -- queue policy --------------------------------------------------------------------
    def _put(self, item: WorkItem) -> None:
        self.worker.queue.put(item)  # control items always wait for room

    def _put_frames(self, run: _RawRun, item: Frames | ExternalFrames) -> None:
        seqs = item.seq_nums
        self.stats["frames"] += len(seqs)
        if self.config.queue_policy == "block":
            self.worker.queue.put(item)
            return
        try:
            self.worker.queue.put_nowait(item)
        except queue.Full:
            run.dropped.extend(int(s) for s in seqs)
            self.stats["dropped"] += len(seqs)
            if not run.warned:
                run.warned = True
                logger.warning(
                    "LiveReconstruction: queue full (%d), dropping frames of run %s (counted)",
                    self.config.queue_size,
                    run.uid,
                )

    # -- control -------------------------------------------------------------------------
    def flush(self, timeout: float | None = None, *, delivered: bool = True) -> bool:
        """Wait until every queued frame is reconstructed and its results are emitted and,
        with ``delivered``, in Tiled (the writer's ``flush``, when it has one); True if done."""
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        item = Sync()
        self.worker.queue.put(item)
        done = item.done.wait(timeout)
        flush_writer = getattr(self._writer, "flush", None)
        if done and delivered and flush_writer is not None:
            done = bool(flush_writer(max(0.0, deadline - time.monotonic())))
        return done

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued work and stop the worker thread."""
        self.worker.queue.put(Quit())
        self.worker.join(timeout)

    def derived_uid(self, raw_uid: str) -> str | None:
        """The uid of the derived run of ``raw_uid`` (None if not started here)."""
        return self.worker.derived_uids.get(raw_uid)
