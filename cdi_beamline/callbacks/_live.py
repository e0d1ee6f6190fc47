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
from ..results import find_image_key, image_shape
from ._assembler import Engine
from ._dask import DaskCluster
from ._external import normalizer
from ._items import ExternalFrames, Frames, ImageSpec, Quit, RunStart, RunStop, Sync, Unreadable, WorkItem
from ._volume import PhaseVolume, rocking_motor
from ._worker import ReconstructionWorker, RowsListener

__all__ = ["LiveReconstruction"]

logger = logging.getLogger(__name__)


@dataclass
class _RawRun:
    uid: str
    normalizer: Any = None  # RunNormalizer: Resource/Datum and old stream documents -> StreamResource/StreamDatum
    image_key: str | None = None
    data_key: dict = field(default_factory=dict)  # the image's descriptor entry (normalized)
    descriptors: set[str] = field(default_factory=set)
    resources: dict[str, dict] = field(default_factory=dict)  # StreamResource uid -> document
    refs: dict[str, int] = field(default_factory=dict)  # Datum id -> seq_num of the event naming it
    datums: set[str] = field(default_factory=set)  # Datum ids received
    delivered: set[str] = field(default_factory=set)  # StreamDatum uids of the image put on the queue
    dropped: list[int] = field(default_factory=list)
    note: str = ""
    normalizer_error: str = ""
    warned: bool = False
    motor: str | None = None  # the rocking motor of a rocking scan
    positions: dict[int, float] = field(default_factory=dict)  # seq_num -> its reading


class LiveReconstruction(DocumentRouter):
    """Bluesky callback that reconstructs every detector frame of a scan, live.

    In the RunEngine thread it only finds frames and puts them on the worker's bounded
    queue as typed items (:mod:`cdi_beamline.callbacks`' ``Frames``...): O(1) per document,
    and it never raises into the RunEngine (a failure is logged and counted in
    ``stats["callback_errors"]``). A :class:`ReconstructionWorker` thread reads external
    frames, batches the frames of each raw run and emits one derived run per raw run to
    ``writer``.

    Document styles: frames inline in events and event pages; StreamResource/StreamDatum
    (ophyd-async: HDF5, TIFF/JPEG/NPY sequences); legacy Resource/Datum (ophyd area
    detectors, ``ophyd.sim``), turned into StreamResource/StreamDatum by one
    bluesky-tiled-plugins ``RunNormalizer`` per raw run. External frames are read where the
    detector wrote them (:func:`cdi_beamline.callbacks.read_stream_datum`); an event whose
    Datum never came, like a file that cannot be read, gives ``bad`` rows with the reason.

    Parameters
    ----------
    reconstructor : Engine
        E.g. ``cdi_beamline.pipeline.Reconstructor``; its ``config.batch_size`` is the batch.
        With ``config.cluster``, its ``config`` runs on that Dask cluster (a
        :class:`DaskEngine`; a LocalCluster started here is closed by :meth:`close`).
    writer : callable(name, doc), optional
        Receives the derived documents (e.g. :func:`cdi_beamline.tiled.make_writer`); by
        default they are only kept in ``documents``.
    config : LiveConfig, optional
        Image key, stream, max wait, queue size and policy, seed, data directory.
    mask : (H, W) bool array, optional
        True = measured pixel, applied to every frame.
    phase_volume : PhaseVolume, optional
        How a rocking scan's volume is phased (``LiveConfig.rocking``); default ``multistart``.

    A rocking scan (``LiveConfig.rocking``) also gets a 3D derived run after its stop
    document: the motor's readings are collected here and handed over with the stop.

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
        phase_volume: PhaseVolume | None = None,
    ):
        self.config = config or LiveConfig()
        self.reconstructor = reconstructor
        self.documents: list[tuple[str, dict]] = []
        self._writer = writer
        self.cluster = DaskCluster(self.config.cluster) if self.config.cluster is not None else None
        engine = reconstructor if self.cluster is None else self.cluster.engine(reconstructor.config)
        self.worker = ReconstructionWorker(engine, self._emit, self.config, mask=mask, phase_volume=phase_volume)
        self.worker.start()
        self._runs: dict[str, _RawRun] = {}
        self._desc: dict[str, _RawRun] = {}
        self._resource_runs: dict[str, _RawRun] = {}  # Resource uid -> run (Datum documents name no run)
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
        run = _RawRun(doc["uid"], motor=rocking_motor(doc, self.config.rocking))
        run.normalizer = normalizer(lambda name, d: self._normalized(run, name, d))
        self._runs[run.uid] = run
        self.stats["runs"] += 1
        self._put(RunStart(doc))
        self._normalize(run, "start", doc)

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
        run.data_key = dict(doc["data_keys"][key])
        run.descriptors.add(doc["uid"])
        self._desc[doc["uid"]] = run
        dims = image_shape(doc["data_keys"][key])
        self._put(ImageSpec(run.uid, key, (dims[0], dims[1]) if len(dims) == 2 else None))
        self._normalize(run, "descriptor", doc)

    def event(self, doc):
        run = self._desc.get(doc["descriptor"])
        if run is not None and run.motor in doc["data"]:
            self._positions(run, [doc["seq_num"]], [doc["data"][run.motor]])
        if run is None or run.image_key not in doc["data"]:
            return
        value = doc["data"][run.image_key]
        if isinstance(value, str):  # a Datum id: the frame is in a file
            run.refs[value] = doc["seq_num"]
            self._normalize(run, "event", doc)
            return
        self._put_frames(run, Frames(run.uid, [doc["seq_num"]], np.asarray(value)[np.newaxis]))

    def event_page(self, doc):
        run = self._desc.get(doc["descriptor"])
        if run is not None and run.motor in doc["data"]:
            self._positions(run, doc["seq_num"], doc["data"][run.motor])
        if run is None or run.image_key not in doc["data"]:
            return
        seqs, frames = doc["seq_num"], doc["data"][run.image_key]
        if frames and isinstance(frames[0], str):  # Datum ids
            run.refs.update(zip(frames, seqs))
            self._normalize(run, "event_page", doc)
            return
        try:
            self._put_frames(run, Frames(run.uid, seqs, np.asarray(frames)))
        except ValueError:  # frames of different shapes: one item each
            for seq, frame in zip(seqs, frames):
                self._put_frames(run, Frames(run.uid, [seq], np.asarray(frame)[np.newaxis]))

    def _positions(self, run: _RawRun, seq_nums: list, values: list) -> None:
        """Record the rocking motor's readings; one that is not a number is counted, not raised."""
        try:
            run.positions.update((int(s), float(v)) for s, v in zip(seq_nums, values))
        except (TypeError, ValueError):
            self.stats["unreadable_positions"] += 1

    def resource(self, doc):
        run = self._runs.get(doc.get("run_start", "")) or self._latest_run()
        if run is not None:
            self._resource_runs[doc["uid"]] = run
            self._normalize(run, "resource", doc)

    def datum(self, doc):
        run = self._resource_runs.get(doc["resource"])
        if run is not None:
            run.datums.add(doc["datum_id"])
            self._normalize(run, "datum", doc)

    def datum_page(self, doc):
        run = self._resource_runs.get(doc["resource"])
        if run is not None:
            run.datums.update(doc["datum_id"])
            self._normalize(run, "datum_page", doc)

    def stream_resource(self, doc):
        run = self._runs.get(doc.get("run_start", "")) or self._latest_run()
        if run is not None:
            self._normalize(run, "stream_resource", doc)

    def stream_datum(self, doc):
        run = self._desc.get(doc["descriptor"])
        if run is not None:
            self._normalize(run, "stream_datum", doc)

    def _normalized(self, run: _RawRun, name: str, doc: dict) -> None:
        """The run's normalizer's output: the image's data key, StreamResources, StreamDatums."""
        if name == "descriptor":
            if doc["uid"] in run.descriptors and run.image_key in doc["data_keys"]:
                run.data_key = doc["data_keys"][run.image_key]
        elif name == "stream_resource":
            run.resources[doc["uid"]] = doc
        elif name == "stream_datum":
            res = run.resources.get(doc["stream_resource"])
            if doc["descriptor"] not in run.descriptors:
                return
            if res is None:  # its frames may be the image's: say so in the derived stop document
                self.stats["unknown_stream_resource"] += 1
                run.note = f"StreamDatum naming an unknown StreamResource {doc['stream_resource']!r} ignored"
                return
            if res["data_key"] != run.image_key:
                return
            run.delivered.add(doc["uid"])
            self._put_frames(run, ExternalFrames(run.uid, res, run.data_key, doc))

    def stop(self, doc):
        run = self._runs.pop(doc["run_start"], None)
        if run is None:
            return
        self._normalize(run, "stop", doc)  # StreamDatums of events that came before their Datum
        self._unresolved(run)
        for uid in run.descriptors:
            self._desc.pop(uid, None)
        self._resource_runs = {k: r for k, r in self._resource_runs.items() if r is not run}
        self._put(RunStop(run.uid, doc, tuple(run.dropped), run.note, run.positions))

    def _normalize(self, run: _RawRun, name: str, doc: dict) -> None:
        """Feed the run's normalizer; a failure is counted and kept for the frames it costs."""
        try:
            run.normalizer(name, doc)
        except Exception as exc:  # noqa: BLE001 - inline frames do not need it; lost external ones are recorded
            self.stats["normalizer_errors"] += 1
            run.normalizer_error = f"{type(exc).__name__}: {exc}"
            logger.warning("LiveReconstruction: RunNormalizer failed on a %s document: %s", name, exc)

    def _unresolved(self, run: _RawRun) -> None:
        """Record the frames whose events named a Datum that gave no StreamDatum (``bad``)."""
        unconverted = f"Datum not converted to a StreamDatum ({run.normalizer_error or 'no reason given'})"
        missing: dict[str, list[int]] = {"no Datum document": [], unconverted: []}
        for datum_id, seq in run.refs.items():
            if datum_id not in run.delivered:
                missing["no Datum document" if datum_id not in run.datums else unconverted].append(seq)
        for reason, seqs in missing.items():
            if seqs:
                self.stats["unresolved"] += len(seqs)
                self._put(Unreadable(run.uid, np.asarray(seqs, np.int64), f"event names a Datum: {reason}"))

    def _latest_run(self) -> _RawRun | None:
        return next(reversed(self._runs.values()), None)

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
        """Finish the queued work, stop the worker thread (and the Dask client of ``config.cluster``)."""
        self.worker.queue.put(Quit())
        self.worker.join(timeout)
        if self.cluster is not None:
            self.cluster.close()

    def derived_uid(self, raw_uid: str) -> str | None:
        """The uid of the derived run of ``raw_uid`` (None if not started here)."""
        return self.worker.derived_uids.get(raw_uid)

    def volume_uid(self, raw_uid: str) -> str | None:
        """The uid of the 3D run of the rocking scan ``raw_uid`` (None if none was started here)."""
        return self.worker.volumes.uids.get(raw_uid)
