"""The per-run assembler: frames of one raw run in, result rows out (no thread, no clock)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import numpy as np

from ..config import PreprocessConfig
from ..errors import CDIValueError
from ..frames import saturation_level
from ..pipeline import validate_frame
from ..preprocess import Preprocessor
from ..results import PREPROCESS, ResultRows, Status
from ._items import Frames

__all__ = ["Engine", "KeepFrames", "PendingRows", "RunAssembler"]

logger = logging.getLogger(__name__)

KeepFrames = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], object]
"""``keep(seq_nums (B,), modulus (B, h, w), mask (h, w) or None)``: sees every frame that goes to the engine."""


class Engine(Protocol):
    """What the live path needs of a reconstruction engine (``cdi_beamline.pipeline.Reconstructor``)."""

    config: Any  # ``.batch_size``: frames per reconstruction

    def reconstruct(self, frames: np.ndarray, *, mask: np.ndarray | None = ..., seed: int | None = ...) -> Any: ...

    def provenance(self) -> dict: ...


class PendingRows:
    """Rows of a released batch still being reconstructed elsewhere: an engine with
    ``submit(frames, mask=, seed=) -> future`` (``cdi_beamline.callbacks.DaskEngine``) makes
    the assembler return these instead of :class:`ResultRows`.

    ``futures``: what they wait for (``done()``, ``result()``); :meth:`result` waits and gives
    the rows, built like a synchronous engine's (an engine failure gives ``error`` rows).
    """

    def __init__(self, futures: list, finish: Callable[[], ResultRows]):
        self.futures = futures
        self._finish = finish
        self._rows: ResultRows | None = None

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self) -> ResultRows:
        if self._rows is None:
            self._rows = self._finish()
        return self._rows

    @staticmethod
    def combine(parts: list[ResultRows | PendingRows]) -> ResultRows | PendingRows:
        """The parts' rows in ``raw_seq_num`` order: ResultRows now if none is pending."""
        if not any(isinstance(p, PendingRows) for p in parts):
            return ResultRows.concat(parts).sorted()  # type: ignore[arg-type]
        futures = [f for p in parts if isinstance(p, PendingRows) for f in p.futures]
        return PendingRows(
            futures,
            lambda: ResultRows.concat([p.result() if isinstance(p, PendingRows) else p for p in parts]).sorted(),
        )


class RunAssembler:
    """Collect the frames of one raw run into batches of ``reconstructor.config.batch_size``
    and turn them into :class:`~cdi_beamline.results.ResultRows`.

    Frames of the run's shape wait as (B, H, W) arrays; a full batch is reconstructed as one
    array (one ``reconstruct`` call, seed ``seed``). Frames of another shape cannot join the
    stack: they become ``bad`` rows at once, with the reason from
    :func:`cdi_beamline.pipeline.validate_frame`. Rows come out in raw ``seq_num`` order; a
    failing engine gives ``error`` rows, never an exception.

    With ``preprocess``, frames are raw counts: the run's one
    :class:`~cdi_beamline.preprocess.Preprocessor` (built when the frame shape is known; an
    automatic ROI chosen from the first batch that shows a peak, then kept) turns each
    released batch into the modulus on the phased grid (h, w) and its mask, which the engine
    gets (squared if its ``config.quantity`` is ``"intensity"``). Rows are then (h, w); frames
    it flags (no peak, NaN), frames with a measured ROI pixel at the engine's
    ``config.saturation`` level (then in raw counts, checked before the correction), and
    every frame of a run whose preprocessing cannot be set up (a dark of another shape, a ROI
    outside the frame...) are ``bad`` rows with the reason.

    Parameters
    ----------
    reconstructor : Engine
    shape : (H, W), optional
        The run's image shape (from the descriptor); else that of the first frames.
    mask : (H, W) bool, optional
        True = measured pixel, passed to every reconstruction; with ``preprocess``, the
        detector's mask on the raw grid (ANDed with the config's mask file).
    seed : int or None
        Seed of every batch's random starts.
    stats : Counter, optional
        Counts ``batches`` and ``reconstruct_errors`` here (shared with a worker).
    preprocess : PreprocessConfig, optional
        Raw counts to modulus, as above; None: frames go to the engine as they come.
    keep : KeepFrames, optional
        Called with the modulus of every batch before the engine phases it (the frames that
        the preprocessing flags are not passed): a rocking scan's 3D stack.
    """

    def __init__(
        self,
        reconstructor: Engine,
        shape: tuple[int, int] | None = None,
        *,
        mask: np.ndarray | None = None,
        seed: int | None = 0,
        stats: Counter | None = None,
        preprocess: PreprocessConfig | None = None,
        keep: KeepFrames | None = None,
    ):
        self.reconstructor = reconstructor
        self.keep = keep
        self.batch_size = int(reconstructor.config.batch_size)
        self.shape = shape
        self.mask = mask
        self.preprocess = preprocess
        self._preprocessor: Preprocessor | None = None
        self.preprocess_error = ""  # why the preprocessing could not be set up
        self.seed = seed
        self.stats = Counter() if stats is None else stats
        self.received = 0
        self.errors: list[str] = []
        self._frames: list[np.ndarray] = []  # (b, H, W) arrays waiting, in arrival order
        self._seqs: list[np.ndarray] = []
        self._failed: list[ResultRows] = []  # rows without reconstruction, released in seq order

    @property
    def waiting(self) -> int:
        """Frames (and failed rows) held until the next batch or :meth:`flush`."""
        return sum(len(f) for f in self._frames) + sum(len(r) for r in self._failed)

    def add(self, item: Frames) -> list[ResultRows | PendingRows]:
        """Take frames; returns the rows of every batch now full (often none)."""
        frames = item.frames
        self.received += len(frames)
        if self.shape is None and frames.ndim == 3:
            self.shape = (int(frames.shape[1]), int(frames.shape[2]))
        if frames.ndim == 3 and frames.shape[1:] == self.shape:
            self._frames.append(frames)
            self._seqs.append(item.seq_nums)
        else:
            reasons = [validate_frame(f, self.shape) or f"frame shape {np.shape(f)}" for f in frames]
            self._failed.append(ResultRows.failed(item.seq_nums, self._row_shape, "bad", reasons))
        out = []
        while sum(len(f) for f in self._frames) >= self.batch_size:
            out.append(self._release(self.batch_size))
        return out

    def fail(self, seq_nums: np.ndarray, status: Status, reason: str) -> None:
        """Record frames that get no reconstruction (unreadable, dropped); released in order."""
        self.received += len(seq_nums)
        self._failed.append(ResultRows.failed(seq_nums, self._row_shape, status, reason))

    def flush(self) -> ResultRows | PendingRows | None:
        """Reconstruct what waits now (a partial batch); None if nothing waits."""
        if not self.waiting:
            return None
        return self._release(sum(len(f) for f in self._frames))

    @property
    def preprocessor(self) -> Preprocessor | None:
        """The run's Preprocessor, built on first use once the frame shape is known (None
        without ``preprocess``, before the shape is known, or if it cannot be set up:
        :attr:`preprocess_error` says why)."""
        if self.preprocess is None or self.preprocess_error or self.shape is None:
            return self._preprocessor
        if self._preprocessor is None:
            try:
                self._preprocessor = Preprocessor(self.preprocess, mask=self.mask, shape=self.shape)
            except CDIValueError as exc:
                self.preprocess_error = f"preprocessing: {exc}"
                logger.error("%s", self.preprocess_error)
        return self._preprocessor

    def metadata(self) -> dict[str, Any]:
        """Derived start/stop metadata: ``{PREPROCESS: Preprocessor.record()}`` (the ROI once
        chosen), or the config and the error; empty without preprocessing."""
        if self.preprocess is None:
            return {}
        pre = self.preprocessor
        if pre is not None:
            return {PREPROCESS: pre.record()}
        config = self.preprocess.model_dump(mode="json")
        return {PREPROCESS: {"config": config, "error": self.preprocess_error or None}}

    @property
    def _row_shape(self) -> tuple[int, int]:
        pre = self.preprocessor
        if pre is not None and pre.grid is not None:
            return pre.grid  # the phased grid
        return self.shape or (1, 1)

    def _release(self, n: int) -> ResultRows | PendingRows:
        parts: list[ResultRows | PendingRows] = []
        last_seq = None
        if n:
            frames = self._frames[0] if len(self._frames) == 1 else np.concatenate(self._frames)
            seqs = np.concatenate(self._seqs)
            self._frames = [frames[n:]] if len(frames) > n else []
            self._seqs = [seqs[n:]] if len(seqs) > n else []
            parts.append(self._reconstruct(seqs[:n], frames[:n]))
            last_seq = seqs[n - 1] if self._frames else None
        if self._failed:
            failed = ResultRows.concat(self._failed)
            now = np.ones(len(failed), bool) if last_seq is None else failed.raw_seq_num <= last_seq
            parts.append(failed.take(np.flatnonzero(now)))
            self._failed = [failed.take(np.flatnonzero(~now))] if (~now).any() else []
        return PendingRows.combine(parts)

    def _reconstruct(self, seqs: np.ndarray, frames: np.ndarray) -> ResultRows | PendingRows:
        intensity = getattr(self.reconstructor.config, "quantity", "intensity") == "intensity"
        if self.preprocess is None:
            if self.keep is not None:
                self._keep(seqs, np.sqrt(np.clip(frames, 0, None)) if intensity else frames, self.mask)
            return self._engine(seqs, frames, self.mask)
        pre = self.preprocessor
        shape = self._row_shape
        if pre is None:
            return ResultRows.failed(seqs, shape, "bad", self.preprocess_error)
        try:
            out = pre.apply(frames)
        except CDIValueError as exc:  # frames the Preprocessor cannot take at all (not real counts)
            return ResultRows.failed(seqs, shape, "bad", f"preprocessing: {exc}")
        reason = self._saturated(frames, pre, out.reason)
        good = np.flatnonzero([not r for r in reason])
        flagged = np.flatnonzero([bool(r) for r in reason])
        parts: list[ResultRows | PendingRows] = [
            ResultRows.failed(seqs[flagged], shape, "bad", [reason[i] for i in flagged])
        ]
        if len(good):
            modulus = out.modulus[good]
            self._keep(seqs[good], modulus, out.mask)
            if intensity:
                modulus = np.square(modulus)
            parts.append(self._engine(seqs[good], modulus, out.mask))
        return PendingRows.combine(parts)

    def _keep(self, seqs: np.ndarray, modulus: np.ndarray, mask: np.ndarray | None) -> None:
        if self.keep is None:
            return
        try:
            self.keep(seqs, modulus, mask)
        except Exception as exc:  # noqa: BLE001 - the 2D rows go on
            logger.exception("keeping frames for the 3D stack failed")
            self.errors.append(f"3D stack: {type(exc).__name__}: {exc}")

    def _saturated(self, frames: np.ndarray, pre: Preprocessor, reason: list[str]) -> list[str]:
        """``reason`` with the frames that have a measured ROI pixel at the engine's
        ``config.saturation`` level flagged: checked on the raw counts (B, H, W), since the
        engine sees the corrected modulus."""
        saturation = getattr(self.reconstructor.config, "saturation", None)
        level = saturation_level(frames.dtype, saturation)
        if level is None or pre.roi is None:
            return reason
        y0, x0, h, w = pre.roi
        hot = frames[:, y0 : y0 + h, x0 : x0 + w] >= level
        if pre.measured is not None:
            hot &= pre.measured[y0 : y0 + h, x0 : x0 + w]
        n_hot = hot.sum(axis=(1, 2))
        why = f" (the {frames.dtype} maximum)" if saturation == "dtype" else ""
        return [
            r
            or (
                f"raw frame has {n} measured pixel(s) in the ROI at or above the saturation level {level:g}{why}"
                if n
                else ""
            )
            for r, n in zip(reason, n_hot.tolist())
        ]

    def _engine(self, seqs: np.ndarray, frames: np.ndarray, mask: np.ndarray | None) -> ResultRows | PendingRows:
        shape = self._row_shape
        submit = getattr(self.reconstructor, "submit", None)
        if submit is None:
            return self._rows(seqs, shape, lambda: self.reconstructor.reconstruct(frames, mask=mask, seed=self.seed))
        try:
            future = submit(frames, mask=mask, seed=self.seed)
        except Exception as exc:  # noqa: BLE001 - e.g. the cluster is gone: error rows, the scan goes on
            return self._rows(seqs, shape, partial(_raise, exc))
        return PendingRows([future], lambda: self._rows(seqs, shape, future.result))

    def _rows(self, seqs: np.ndarray, shape: tuple[int, int], result: Callable[[], Any]) -> ResultRows:
        """The (B, *shape) rows of ``result()``, the engine's output for the frames of ``seqs``;
        ``error`` rows if it raises."""
        try:
            out = result()
            self.stats["batches"] += 1
        except Exception as exc:  # noqa: BLE001 - the scan goes on, the failure is recorded
            logger.exception("reconstruction of %d frames failed", len(seqs))
            msg = f"reconstruction failed: {type(exc).__name__}: {exc}"
            self.errors.append(msg)
            self.stats["reconstruct_errors"] += 1
            return ResultRows.failed(seqs, shape, "error", msg)
        if out.amplitude.shape[1:] != shape:  # no frame was good: the engine gives (B, 0, 0) images
            return ResultRows.failed(seqs, shape, "bad", list(out.reason))
        return ResultRows.from_batch(seqs, out)


def _raise(exc: Exception):
    raise exc
