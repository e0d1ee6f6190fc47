"""The reconstruction worker: a thread that batches queued frames per raw run, runs the
Reconstructor and writes one derived run per raw run."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from ..config import LiveConfig
from ._derived import DerivedRun, ResultRows

__all__ = ["ReconstructionWorker", "FramePlan"]

logger = logging.getLogger(__name__)


class FramePlan:
    """Per raw run bookkeeping in the worker."""

    def __init__(self, raw_start: dict):
        self.raw_start = raw_start
        self.derived: DerivedRun | None = None
        self.image_key: str | None = None
        self.shape: tuple[int, int] | None = None
        self.pending: list[tuple[int, np.ndarray]] = []
        self.first_at = 0.0
        self.received = 0
        self.errors: list[str] = []


def uri_to_path(uri: str) -> Path:
    """``file://localhost/abs/path`` (or a plain path) -> Path."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else Path(uri)


def read_external(path: Path, dataset: str, start: int, stop: int, retries: int = 20) -> np.ndarray:
    """Frames ``start:stop`` of an HDF5 dataset being written (SWMR aware): (n, H, W)."""
    import h5py

    last: Exception | None = None
    for _ in range(retries):
        try:
            with h5py.File(path, "r", swmr=True, locking=False) as f:
                ds = f[dataset]
                ds.refresh()
                if ds.shape[0] >= stop:
                    out = np.asarray(ds[start:stop])
                    return out.reshape(stop - start, *out.shape[-2:])
                last = IndexError(f"{path.name}:{dataset} has {ds.shape[0]} frames, need {stop}")
        except (OSError, KeyError) as exc:
            last = exc
        time.sleep(0.05)
    raise OSError(f"cannot read frames {start}:{stop} of {path}:{dataset}: {last}")


class ReconstructionWorker:
    """Consume ``queue`` items and emit derived runs (runs in its own daemon thread).

    Items (tuples): ``("start", raw_start, shape|None)``, ``("frame", raw_uid, seq_num, frame)``,
    ``("external", raw_uid, path, dataset, index_start, index_stop, seq_start)``,
    ``("stop", raw_uid, raw_stop, dropped_seq_nums, note)``, ``("sync", threading.Event)``,
    ``("quit",)``.

    Parameters
    ----------
    reconstructor : object with ``reconstruct(frames (B,H,W), mask=, seed=)`` and ``describe()``
    emit : callable(name, doc)
        Receives every derived document.
    config : LiveConfig
    mask : (H, W) bool, optional
        True = measured pixel, passed to every reconstruction.
    """

    def __init__(
        self,
        reconstructor,
        emit: Callable[[str, dict], object],
        config: LiveConfig,
        work: queue.Queue,
        mask: np.ndarray | None = None,
    ):
        self.reconstructor = reconstructor
        self.emit = emit
        self.config = config
        self.queue = work
        self.mask = mask
        self.results_dir = Path(config.data_dir).expanduser().resolve() / "results"
        self.runs: dict[str, FramePlan] = {}
        self.derived_uids: dict[str, str] = {}
        self.stats: Counter = Counter()
        self.errors: list[str] = []
        self.stops: dict[str, dict] = {}
        self._describe: dict | None = None
        self.extra_metadata: dict = {}
        self._thread = threading.Thread(target=self._loop, name="cdi-reconstruction", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- metadata ------------------------------------------------------------------------
    def start_metadata(self, image_key: str | None) -> dict:
        """Start-document metadata of a derived run: engine description, live config, image key."""
        if self._describe is None:
            try:
                self._describe = dict(self.reconstructor.provenance())
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                logger.exception("Reconstructor.provenance() failed")
                self._describe = {"error": f"provenance() failed: {exc}"}
        return {
            "reconstructor": self._describe,
            "live": self.config.model_dump(mode="json"),
            "raw_image_key": image_key,
            "raw_stream": self.config.stream,
            **self.extra_metadata,
        }

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            timeout = self._next_deadline()
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                self._flush_due()
                continue
            try:
                if item[0] == "quit":
                    self._flush_all()
                    return
                self._handle(item)
                self._flush_due()
            except Exception as exc:  # noqa: BLE001 - the worker never dies
                logger.exception("live reconstruction worker: %s item failed", item[0])
                self.errors.append(f"{item[0]}: {type(exc).__name__}: {exc}")
                self.stats["worker_errors"] += 1
            finally:
                self.queue.task_done()

    def _next_deadline(self) -> float | None:
        waits = [p.first_at + self.config.max_wait_s - time.monotonic() for p in self.runs.values() if p.pending]
        return max(0.0, min(waits)) if waits else None

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "start":
            _, raw_start, image_key, shape = item
            plan = self.runs[raw_start["uid"]] = FramePlan(raw_start)
            plan.image_key, plan.shape = image_key, shape
            self.stats["runs"] += 1
            if shape is not None:
                self._derived(plan)
        elif kind == "shape":
            _, raw_uid, image_key, shape = item
            plan = self.runs.get(raw_uid)
            if plan is not None:
                plan.image_key = plan.image_key or image_key
                plan.shape = plan.shape or shape
                self._derived(plan)
        elif kind == "frame":
            _, raw_uid, seq_num, frame = item
            self._add(raw_uid, seq_num, frame)
        elif kind == "external":
            _, raw_uid, path, dataset, i0, i1, seq0 = item
            try:
                frames = read_external(path, dataset, i0, i1)
            except OSError as exc:
                plan = self.runs.get(raw_uid)
                if plan is not None:
                    plan.received += i1 - i0
                    self._append(
                        plan, ResultRows.failed(range(seq0, seq0 + i1 - i0), plan.shape or (1, 1), "error", str(exc))
                    )
                return
            for k, frame in enumerate(frames):
                self._add(raw_uid, seq0 + k, frame)
        elif kind == "stop":
            _, raw_uid, raw_stop, dropped, note = item
            plan = self.runs.pop(raw_uid, None)
            if plan is None:
                return
            self._flush(plan)
            self._derived(plan)
            if dropped:
                self._append(
                    plan,
                    ResultRows.failed(
                        dropped, plan.shape or (1, 1), "dropped", "queue full (policy 'drop'): frame not reconstructed"
                    ),
                )
            reason = "; ".join([note, *plan.errors[:3]]).strip("; ") if (note or plan.errors) else ""
            raw_status = raw_stop.get("exit_status", "success")
            stop = plan.derived.close(
                exit_status=raw_status if raw_status in ("success", "abort", "fail") else "fail",
                reason=reason,
                counts={"received": plan.received + len(dropped), "dropped": len(dropped)},
            )
            self.stops[raw_uid] = stop
        elif kind == "sync":
            self._flush_all()
            item[1].set()
        else:
            raise ValueError(f"unknown work item {kind!r}")

    def _derived(self, plan: FramePlan) -> DerivedRun:
        """The plan's derived run, started (start document emitted) on first use."""
        if plan.derived is None:
            md = self.start_metadata(plan.image_key)
            plan.derived = DerivedRun(plan.raw_start, self.emit, self.results_dir, md)
            self.derived_uids[plan.raw_start["uid"]] = plan.derived.uid
        return plan.derived

    def _add(self, raw_uid: str, seq_num: int, frame: np.ndarray) -> None:
        plan = self.runs.get(raw_uid)
        if plan is None:
            self.stats["orphan_frames"] += 1
            return
        if not plan.pending:
            plan.first_at = time.monotonic()
        plan.pending.append((int(seq_num), frame))
        plan.received += 1
        if len(plan.pending) >= self.config.batch_size:
            self._flush(plan)

    def _flush_due(self) -> None:
        now = time.monotonic()
        for plan in list(self.runs.values()):
            if plan.pending and now - plan.first_at >= self.config.max_wait_s:
                self._flush(plan)

    def _flush_all(self) -> None:
        for plan in list(self.runs.values()):
            self._flush(plan)

    def _flush(self, plan: FramePlan) -> None:
        if not plan.pending:
            return
        batch, plan.pending = plan.pending, []
        self._append(plan, self.reconstruct(batch, plan))

    def _append(self, plan: FramePlan, rows: ResultRows) -> None:
        try:
            self._derived(plan).append(rows)
            self.stats["rows"] += len(rows)
        except Exception as exc:  # noqa: BLE001 - recorded in the stop document
            logger.exception("writing results of run %s failed", plan.raw_start["uid"])
            plan.errors.append(f"result write failed: {type(exc).__name__}: {exc}")
            self.stats["write_errors"] += 1

    def reconstruct(self, batch: list[tuple[int, np.ndarray]], plan: FramePlan) -> ResultRows:
        """Reconstruct ``[(seq_num, frame), ...]``; frames of the wrong shape and a failing
        Reconstructor give flagged rows, never an exception."""
        arrays = [np.asarray(f) for _, f in batch]
        if plan.shape is None:
            plan.shape = next((a.shape for a in arrays if a.ndim == 2), (1, 1))
        shape = plan.shape
        good = [i for i, a in enumerate(arrays) if a.shape == shape]
        parts: dict[int, ResultRows] = {}
        for i, a in enumerate(arrays):
            if a.shape != shape:
                parts[i] = ResultRows.failed(
                    [batch[i][0]], shape, "bad", f"wrong shape {tuple(a.shape)}, expected {tuple(shape)}"
                )
        if good:
            seqs = [batch[i][0] for i in good]
            frames = np.stack([arrays[i] for i in good]).astype(np.float32, copy=False)
            try:
                out = self.reconstructor.reconstruct(frames, mask=self.mask, seed=self.config.seed)
                rows = ResultRows(seqs, out.amplitude, out.phase, out.support, out.chi2, out.status, out.reason)
                self.stats["batches"] += 1
            except Exception as exc:  # noqa: BLE001 - the scan goes on, the failure is recorded
                logger.exception("reconstruction of %d frames failed", len(good))
                msg = f"reconstruction failed: {type(exc).__name__}: {exc}"
                plan.errors.append(msg)
                self.errors.append(msg)
                self.stats["reconstruct_errors"] += 1
                rows = ResultRows.failed(seqs, shape, "error", msg)
            if len(good) == len(arrays):
                return rows
            for k, i in enumerate(good):
                parts[i] = _row(rows, k)
        return ResultRows.concat([parts[i] for i in range(len(batch))])


def _row(rows: ResultRows, k: int) -> ResultRows:
    return ResultRows(
        rows.raw_seq_num[k : k + 1],
        rows.amplitude[k : k + 1],
        rows.phase[k : k + 1],
        rows.support[k : k + 1],
        rows.chi2[k : k + 1],
        rows.status[k : k + 1],
        rows.reason[k : k + 1],
    )
