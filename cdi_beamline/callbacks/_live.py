"""LiveReconstruction: the Bluesky callback (RunEngine thread side)."""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from event_model import DocumentRouter

from ..config import LiveConfig
from ._worker import ReconstructionWorker, uri_to_path

__all__ = ["LiveReconstruction", "find_image_key"]

logger = logging.getLogger(__name__)


def _image_dims(data_key: dict) -> list[int]:
    return [s for s in data_key.get("shape", []) if s not in (1, None)]


def find_image_key(data_keys: dict[str, dict], image_key: str | None = None) -> str | None:
    """``image_key`` if the descriptor has it, else the first field with a 2D shape
    (leading unit dimensions ignored), else None."""
    if image_key is not None:
        return image_key if image_key in data_keys else None
    for key, dk in data_keys.items():
        if len(_image_dims(dk)) == 2 and dk.get("dtype", "array") == "array":
            return key
    return None


class _RawRun:
    __slots__ = ("uid", "image_key", "descriptors", "dropped", "note", "warned")

    def __init__(self, uid: str):
        self.uid = uid
        self.image_key: str | None = None
        self.descriptors: set[str] = set()
        self.dropped: list[int] = []
        self.note = ""
        self.warned = False


class LiveReconstruction(DocumentRouter):
    """Bluesky callback that reconstructs every detector frame of a scan, live.

    In the RunEngine thread it only finds frames (in events, or as StreamDatum ranges of an
    external HDF5 file) and puts them on a bounded queue: O(1) per document, and it never
    raises into the RunEngine (errors are logged and counted in ``stats``). A worker thread
    batches the frames of each raw run, runs the Reconstructor and emits one derived run per
    raw run to ``writer`` (see :class:`~cdi_beamline.callbacks.DerivedRun`).

    Parameters
    ----------
    reconstructor : Reconstructor, ReconstructorConfig or None
        An engine with ``reconstruct(frames (B,H,W), mask=, seed=)`` and ``describe()``;
        a config (or None: defaults) builds ``cdi_beamline.pipeline.Reconstructor``.
    writer : callable(name, doc), optional
        Receives the derived documents (e.g. :func:`cdi_beamline.store.make_writer`); by
        default they are only kept in ``documents``.
    config : LiveConfig, optional
        Image key, batch size, max wait, queue size and policy, seed, data directory; any
        LiveConfig field may also be given as a keyword (``batch_size=8``...).
    device : str
        Device of a Reconstructor built here.
    mask : (H, W) bool array, optional
        True = measured pixel, applied to every frame.

    Examples
    --------
    >>> cb = LiveReconstruction(ReconstructorConfig(), writer=make_writer(client, spool))  # doctest: +SKIP
    >>> RE.subscribe(cb); RE(count([det], 100)); cb.flush()                                # doctest: +SKIP
    """

    def __init__(
        self,
        reconstructor: Any = None,
        writer: Callable[[str, dict], Any] | None = None,
        config: LiveConfig | None = None,
        *,
        device: str = "auto",
        mask: np.ndarray | None = None,
        **overrides: Any,
    ):
        base = config.model_dump() if config is not None else {}
        self.config = LiveConfig.build(**{**base, **overrides})
        if reconstructor is None or not hasattr(reconstructor, "reconstruct"):
            from ..pipeline import Reconstructor

            reconstructor = Reconstructor(reconstructor, device=device)
        self.reconstructor = reconstructor
        self.documents: list[tuple[str, dict]] = []
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.queue_size)
        self.worker = ReconstructionWorker(reconstructor, self._emit, self.config, self._queue, mask=mask)
        self.worker.start()
        self._runs: dict[str, _RawRun] = {}
        self._desc: dict[str, _RawRun] = {}
        self._resources: dict[str, dict] = {}
        self._last_run: _RawRun | None = None
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

    # -- RunEngine side --------------------------------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False):
        try:
            return super().__call__(name, doc, validate)
        except Exception:  # noqa: BLE001 - never abort the scan
            logger.exception("LiveReconstruction failed on a %s document", name)
            self.stats["callback_errors"] += 1
            return name, doc

    def start(self, doc):
        run = self._runs[doc["uid"]] = _RawRun(doc["uid"])
        self._last_run = run
        self.stats["runs"] += 1
        # image key and shape are learnt from the descriptor; the derived run starts now
        self._put(("start", doc, None, None))

    def descriptor(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None or doc.get("name") != self.config.stream:
            return
        key = find_image_key(doc.get("data_keys", {}), self.config.image_key)
        if key is None:
            run.note = (
                f"no image field {self.config.image_key!r} in stream {self.config.stream!r}"
                if self.config.image_key
                else f"no 2D image field in stream {self.config.stream!r}"
            )
            logger.warning("LiveReconstruction: %s (fields %s)", run.note, sorted(doc.get("data_keys", {})))
            return
        run.image_key = key
        run.descriptors.add(doc["uid"])
        self._desc[doc["uid"]] = run
        dims = _image_dims(doc["data_keys"][key])
        self._put(("shape", run.uid, key, tuple(int(d) for d in dims)))

    def event(self, doc):
        run = self._desc.get(doc["descriptor"])
        if run is None:
            return
        frame = doc["data"].get(run.image_key)
        if frame is None:
            return
        self._put_frame(run, ("frame", run.uid, doc["seq_num"], frame), [doc["seq_num"]])

    def event_page(self, doc):
        run = self._desc.get(doc["descriptor"])
        if run is None or run.image_key not in doc["data"]:
            return
        for seq, frame in zip(doc["seq_num"], doc["data"][run.image_key]):
            self._put_frame(run, ("frame", run.uid, seq, frame), [seq])

    def stream_resource(self, doc):
        self._resources[doc["uid"]] = doc

    def stream_datum(self, doc):
        run = self._desc.get(doc["descriptor"])
        res = self._resources.get(doc["stream_resource"])
        if run is None or res is None or res["data_key"] != run.image_key:
            return
        i0, i1 = doc["indices"]["start"], doc["indices"]["stop"]
        seq0 = doc["seq_nums"]["start"] or 1
        seqs = list(range(seq0, seq0 + (i1 - i0)))
        item = ("external", run.uid, uri_to_path(res["uri"]), res["parameters"].get("dataset", "data"), i0, i1, seq0)
        self._put_frame(run, item, seqs)

    def stop(self, doc):
        run = self._runs.pop(doc["run_start"], None)
        if run is None:
            return
        for uid in run.descriptors:
            self._desc.pop(uid, None)
        self._resources = {k: v for k, v in self._resources.items() if v.get("run_start") not in (run.uid, None)}
        self._put(("stop", run.uid, doc, list(run.dropped), run.note))

    # -- queue policy --------------------------------------------------------------------
    def _put(self, item: tuple) -> None:
        self._queue.put(item)  # control items always wait for room

    def _put_frame(self, run: _RawRun, item: tuple, seqs: list[int]) -> None:
        self.stats["frames"] += len(seqs)
        if self.config.queue_policy == "block":
            self._queue.put(item)
            return
        try:
            self._queue.put_nowait(item)
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
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame is reconstructed and written; True if done."""
        done = threading.Event()
        self._queue.put(("sync", done))
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued work and stop the worker thread."""
        self._queue.put(("quit",))
        self.worker.join(timeout)

    def derived_uid(self, raw_uid: str) -> str | None:
        """The uid of the derived run of ``raw_uid`` (None if not started here)."""
        return self.worker.derived_uids.get(raw_uid)

    def counts(self, raw_uid: str) -> dict | None:
        """The counts recorded in the derived stop document of ``raw_uid`` (after its stop)."""
        stop = self.worker.stops.get(raw_uid)
        return None if stop is None else dict(stop["cdi_counts"])
