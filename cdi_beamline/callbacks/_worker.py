"""The reconstruction worker: a thread, a queue and the max-wait deadline around one
:class:`RunAssembler` and one :class:`DerivedRun` per raw run (and, for a rocking scan, a
:class:`VolumeStack` handed to :class:`VolumeJobs` at its stop)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import LiveConfig
from ..results import LIVE, RAW_IMAGE_KEY, RAW_STREAM, RECONSTRUCTOR, REPROCESSED, ResultRows
from ._assembler import Engine, PendingRows, RunAssembler
from ._derived import DerivedRun, Emit
from ._external import UnreadableFrames, read_stream_datum
from ._items import ExternalFrames, Frames, ImageSpec, Quit, RunStart, RunStop, Sync, Unreadable, WorkItem
from ._volume import PhaseVolume, VolumeJobs, VolumeStack

__all__ = ["ReconstructionWorker"]

logger = logging.getLogger(__name__)

RowsListener = Callable[[str, ResultRows], object]

POLL_S = 0.05
"""While batches are reconstructed elsewhere (an engine with ``submit``), how often the
thread looks for finished ones between items."""


@dataclass
class _Run:
    raw_start: dict
    assembler: RunAssembler
    image_key: str | None = None
    derived: DerivedRun | None = None
    waiting_since: float | None = None
    errors: list[str] = field(default_factory=list)
    volume: VolumeStack | None = None
    out: deque[ResultRows | PendingRows] = field(default_factory=deque)  # released, not yet written, in order


class ReconstructionWorker:
    """Consume work items (:mod:`._items`) and emit one derived run per raw run.

    :meth:`handle` does the work of one item; :meth:`flush_due` reconstructs the partial
    batches whose oldest frame waited ``config.max_wait_s`` (by ``clock``). :meth:`start`
    runs both in a daemon thread fed by :attr:`queue`; without it (reprocess, tests) the
    caller drives them. The thread never dies of an item: a failure is logged, counted in
    ``stats["worker_errors"]`` and kept in ``errors``.

    An engine with ``submit`` (:class:`cdi_beamline.callbacks.DaskEngine`) reconstructs
    batches elsewhere: released batches are written in order as they finish, at most the
    engine's ``max_in_flight`` at a time (then the thread waits, the queue fills, and
    ``LiveConfig.queue_policy`` applies); a stop, :class:`Sync` or :class:`Quit` waits for all.

    Parameters
    ----------
    reconstructor : Engine
        ``reconstruct(frames (B,H,W), mask=, seed=)``, ``provenance()`` and ``config.batch_size``.
    emit : callable(name, doc)
        Receives every derived document.
    config : LiveConfig
    mask : (H, W) bool, optional
        True = measured pixel, passed to every reconstruction.
    metadata : dict, optional
        Extra start metadata of every derived run (reprocess: ``reprocessed``, ``supersedes``).
    clock : callable () -> float
        Seconds, monotonic; the deadline's clock.
    phase_volume : PhaseVolume, optional
        How a rocking scan's volume is phased (default ``multistart`` on the engine's device);
        the 3D jobs run on :attr:`volumes`' thread, :class:`Sync` and :class:`Quit` wait for them.
    """

    def __init__(
        self,
        reconstructor: Engine,
        emit: Emit,
        config: LiveConfig,
        *,
        mask: np.ndarray | None = None,
        metadata: dict | None = None,
        clock: Callable[[], float] = time.monotonic,
        phase_volume: PhaseVolume | None = None,
    ):
        self.reconstructor = reconstructor
        self.emit = emit
        self.config = config
        self.mask = mask
        self.metadata = dict(metadata or {})
        self.clock = clock
        self.queue: queue.Queue[WorkItem] = queue.Queue(maxsize=config.queue_size)
        self.results_dir = Path(config.data_dir).expanduser().resolve() / "results"
        self.derived_uids: dict[str, str] = {}
        self.stops: dict[str, dict] = {}
        self.stats: Counter = Counter()
        self.errors: list[str] = []
        self._runs: dict[str, _Run] = {}
        self._provenance: dict | None = None
        self._listeners: list[RowsListener] = []
        self._thread = threading.Thread(target=self._loop, name="cdi-reconstruction", daemon=True)
        self.volumes = VolumeJobs(
            emit,
            self.results_dir,
            config.rocking,
            seed=config.seed,
            phase=phase_volume,
            device=getattr(reconstructor, "device", "cpu"),
            stats=self.stats,
        )

    def add_listener(self, listener: RowsListener) -> None:
        """Call ``listener(raw_uid, rows)`` (in the worker's thread) after rows are written."""
        self._listeners.append(listener)

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            timeout = self.next_deadline()
            if any(run.out for run in self._runs.values()):
                timeout = POLL_S if timeout is None else min(timeout, POLL_S)
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                self.flush_due()
                self._drain_all()
                continue
            try:
                if isinstance(item, Quit):
                    self.flush_all()
                    self.volumes.wait()
                    return
                self.handle(item)
                self.flush_due()
                self._drain_all()
            finally:
                self.queue.task_done()

    # -- driving -----------------------------------------------------------------------------
    def handle(self, item: WorkItem) -> None:
        """Do the work of one item; never raises (a failure is logged and counted)."""
        try:
            self._dispatch(item)
        except Exception as exc:  # noqa: BLE001 - the worker never dies
            logger.exception("live reconstruction worker: %s failed", type(item).__name__)
            self.errors.append(f"{type(item).__name__}: {type(exc).__name__}: {exc}")
            self.stats["worker_errors"] += 1

    def next_deadline(self) -> float | None:
        """Seconds until the oldest waiting frame is due (0 if overdue), None if none waits."""
        waits = [r.waiting_since for r in self._runs.values() if r.waiting_since is not None]
        return max(0.0, min(waits) + self.config.max_wait_s - self.clock()) if waits else None

    def flush_due(self) -> None:
        """Reconstruct the partial batches whose oldest frame waited ``max_wait_s``."""
        now = self.clock()
        for run in list(self._runs.values()):
            if run.waiting_since is not None and now - run.waiting_since >= self.config.max_wait_s:
                self._flush(run)

    def flush_all(self) -> None:
        """Reconstruct every partial batch now, and write every batch's rows (waits for them)."""
        for run in list(self._runs.values()):
            self._flush(run)
        for run in list(self._runs.values()):
            self._drain(run, wait=True)

    # -- items -------------------------------------------------------------------------------
    def _dispatch(self, item: WorkItem) -> None:
        if isinstance(item, RunStart):
            volume = self.volumes.stack(item.raw_start)
            self._runs[item.raw_uid] = _Run(
                dict(item.raw_start),
                RunAssembler(
                    self.reconstructor,
                    mask=self.mask,
                    seed=self.config.seed,
                    stats=self.stats,
                    preprocess=self.config.preprocess,
                    keep=None if volume is None else volume.add,
                ),
                volume=volume,
            )
            self.stats["runs"] += 1
        elif isinstance(item, ImageSpec):
            run = self._runs.get(item.raw_uid)
            if run is not None:
                run.image_key = run.image_key or item.image_key
                run.assembler.shape = run.assembler.shape or item.shape
                self._derived(run)
        elif isinstance(item, Frames):
            self._add(item.raw_uid, item)
        elif isinstance(item, ExternalFrames):
            self._external(item)
        elif isinstance(item, Unreadable):
            self._fail(item.raw_uid, item.seq_nums, item.reason)
        elif isinstance(item, RunStop):
            self._stop(item)
        elif isinstance(item, Sync):
            self.flush_all()
            self.volumes.wait()
            item.done.set()
        elif isinstance(item, Quit):
            self.flush_all()
            self.volumes.wait()
        else:
            raise TypeError(f"unknown work item {item!r}")

    def _add(self, raw_uid: str, item: Frames) -> None:
        run = self._runs.get(raw_uid)
        if run is None:
            self.stats["orphan_frames"] += len(item.seq_nums)
            return
        for rows in run.assembler.add(item):
            self._write(run, rows)
        self._mark(run)

    def _external(self, item: ExternalFrames) -> None:
        """Read the frames where the detector wrote them (retried while the file is being
        written); frames that cannot be read become ``bad`` rows with the reader's reason."""
        if item.raw_uid not in self._runs:
            self.stats["orphan_frames"] += len(item.seq_nums)
            return
        try:
            frames = read_stream_datum(item.stream_resource, item.data_key, item.stream_datum)
        except UnreadableFrames as exc:
            self.stats["unreadable_frames"] += len(item.seq_nums)
            self._fail(item.raw_uid, item.seq_nums, str(exc))
            return
        self._add(item.raw_uid, Frames(item.raw_uid, item.seq_nums, frames))

    def _fail(self, raw_uid: str, seq_nums: np.ndarray, reason: str) -> None:
        run = self._runs.get(raw_uid)
        if run is None:
            self.stats["orphan_frames"] += len(seq_nums)
            return
        run.assembler.fail(seq_nums, "bad", reason)
        self._mark(run)

    def _stop(self, item: RunStop) -> None:
        run = self._runs.pop(item.raw_uid, None)
        if run is None:
            return
        if item.dropped:
            run.assembler.fail(
                np.asarray(item.dropped), "dropped", "queue full (policy 'drop'): frame not reconstructed"
            )
        self._flush(run)
        self._drain(run, wait=True)
        derived = self._derived(run)
        notes = [item.note, *run.assembler.errors[:3], *run.errors[:3]]
        self.stops[item.raw_uid] = derived.close(
            exit_status=item.raw_stop.get("exit_status", "success"),
            reason="; ".join(n for n in notes if n),
            counts={"received": run.assembler.received},
            metadata=run.assembler.metadata(),
        )
        if run.volume is not None:
            metadata = {RAW_IMAGE_KEY: run.image_key, **run.assembler.metadata()}
            if REPROCESSED in self.metadata:
                metadata[REPROCESSED] = self.metadata[REPROCESSED]
            self.volumes.submit(run.volume, item.positions, metadata)

    # -- helpers -------------------------------------------------------------------------------
    def _mark(self, run: _Run) -> None:
        if not run.assembler.waiting:
            run.waiting_since = None
        elif run.waiting_since is None:
            run.waiting_since = self.clock()

    def _flush(self, run: _Run) -> None:
        rows = run.assembler.flush()
        run.waiting_since = None
        if rows is not None:
            self._write(run, rows)

    def _drain(self, run: _Run, *, wait: bool = False, limit: int | None = None) -> None:
        """Write the run's released rows in order: those ready (all, waiting, with ``wait``;
        at most ``limit`` batches)."""
        written = 0
        while run.out and (limit is None or written < limit):
            head = run.out[0]
            if isinstance(head, PendingRows) and not (wait or head.done()):
                return
            rows = head.result() if isinstance(head, PendingRows) else head
            run.out.popleft()
            self._store(run, rows)
            written += 1

    def _drain_all(self) -> None:
        for run in list(self._runs.values()):
            self._drain(run)

    def _throttle(self) -> None:
        """Wait for the oldest batches while the engine's ``max_in_flight`` are being reconstructed."""
        limit = getattr(self.reconstructor, "max_in_flight", None)
        if limit is None:
            return
        runs = list(self._runs.values())
        while sum(isinstance(r, PendingRows) for run in runs for r in run.out) >= limit:
            self._drain(next(run for run in runs if run.out), wait=True, limit=1)

    def _derived(self, run: _Run) -> DerivedRun:
        """The run's derived run, started (start document emitted) on first use."""
        if run.derived is None:
            metadata = {**self.start_metadata(run.image_key), **run.assembler.metadata()}
            run.derived = DerivedRun(run.raw_start, self.emit, self.results_dir, metadata)
            self.derived_uids[run.raw_start["uid"]] = run.derived.uid
        return run.derived

    def start_metadata(self, image_key: str | None) -> dict:
        """Start-document metadata of a derived run: engine description, live config, image key."""
        if self._provenance is None:
            try:
                self._provenance = dict(self.reconstructor.provenance())
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                logger.exception("Reconstructor.provenance() failed")
                self._provenance = {"error": f"provenance() failed: {exc}"}
        return {
            RECONSTRUCTOR: self._provenance,
            LIVE: self.config.model_dump(mode="json"),
            RAW_IMAGE_KEY: image_key,
            RAW_STREAM: self.config.stream,
            **self.metadata,
        }

    def _write(self, run: _Run, rows: ResultRows | PendingRows) -> None:
        """Queue released rows behind the run's earlier ones; write what is ready."""
        run.out.append(rows)
        self._drain(run)
        self._throttle()

    def _store(self, run: _Run, rows: ResultRows) -> None:
        try:
            self._derived(run).append(rows)
            self.stats["rows"] += len(rows)
        except Exception as exc:  # noqa: BLE001 - recorded in the stop document
            logger.exception("writing results of run %s failed", run.raw_start["uid"])
            run.errors.append(f"result write failed: {type(exc).__name__}: {exc}")
            self.stats["write_errors"] += 1
            return
        for listener in self._listeners:
            try:
                listener(run.raw_start["uid"], rows)
            except Exception:  # noqa: BLE001 - a plot must not stop the worker
                logger.exception("rows listener %r failed", listener)
                self.stats["listener_errors"] += 1
