"""3D at the end of a rocking scan: the run's phased frames stacked into a volume, phased
with several random starts on a thread of its own, written as a 3D derived run.

The worker thread keeps each rocking run's frames as the engine gets them (the modulus on
the run's one ROI, :class:`VolumeStack`); at the run's stop it hands the stack to
:class:`VolumeJobs`, whose thread builds the volume (:meth:`VolumeStack.volume`: the
``RockingConfig.depth`` frames around the brightest), phases it (:func:`phase_volume`:
``cdi_beamline.phasing.multistart``) and emits the 3D run, while the worker goes on with
the next scan's frames.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from event_model import compose_run

from .. import __version__
from ..config import BraggGeometry, ConfigError, RockingConfig
from ..fourier import FFT_CONVENTION
from ..phasing import multistart, postprocess
from ..results import (
    GEOMETRY,
    INHERITED_START_KEYS,
    KIND,
    PARENT_UID,
    ROCKING,
    STREAM,
    VOLUME_ARRAY_DTYPES,
    VOLUME_KIND,
    VOLUME_SUMMARY,
    VolumeResult,
    VolumeStatus,
    volume_data_keys,
    volume_summary,
)
from ._derived import Emit, hdf5_stream_resources

__all__ = ["PhaseVolume", "PhasedVolume", "Volume", "VolumeJobs", "VolumeStack", "phase_volume", "rocking_motor"]

logger = logging.getLogger(__name__)

_SEPARATORS = ("_", "-", ".")


def rocking_motor(start: Mapping[str, Any], config: RockingConfig) -> str | None:
    """The rocking motor of a raw run, from its start document, or None if the run is not a
    rocking scan (see :class:`~cdi_beamline.config.RockingConfig`)."""
    motors, detectors = start.get("motors") or [], start.get("detectors") or []
    if not config.enabled or len(motors) != 1 or not detectors:
        return None
    motor = str(motors[0])
    last = motor
    for sep in _SEPARATORS:
        last = last.rsplit(sep, 1)[-1]
    names = {m.lower() for m in config.motors}
    return motor if motor.lower() in names or last.lower() in names else None


@dataclass(frozen=True)
class Volume:
    """The volume of a rocking scan, ready to phase (D along the rocking axis).

    modulus : (D, H, W) float32, centred on the brightest frame along D
    mask : (D, H, W) bool, True = measured (False on the planes of missing frames)
    seq_nums : (D,) int64, the raw frame of each plane
    angles : (D,) float64, the motor's reading at each plane (NaN where none was read)
    brightest : int, seq_num of the brightest frame
    received : int, frames with data the run gave
    missing : tuple of int, seq_nums of the window that had no frame
    """

    modulus: np.ndarray
    mask: np.ndarray
    seq_nums: np.ndarray
    angles: np.ndarray
    brightest: int
    received: int
    missing: tuple[int, ...]

    @property
    def step(self) -> float:
        """Median step of the rocking angle (degrees; NaN if fewer than two readings)."""
        steps = np.diff(self.angles)
        steps = steps[np.isfinite(steps)]
        return float(np.median(steps)) if steps.size else float("nan")


class VolumeStack:
    """The frames of one rocking scan as they were phased (modulus on the run's ROI).

    :meth:`add` is the :class:`RunAssembler`'s ``keep`` hook (the worker thread); frames
    that are not finite, or not of the first frames' shape, are left out (a gap).
    """

    def __init__(self, raw_start: Mapping[str, Any], motor: str, config: RockingConfig):
        self.raw_start = dict(raw_start)
        self.motor = motor
        self.config = config
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def add(self, seq_nums: np.ndarray, modulus: np.ndarray, mask: np.ndarray | None) -> None:
        """Keep frames (B,) seq_nums, (B, h, w) modulus and their (h, w) mask (None: all measured)."""
        modulus = np.asarray(modulus, np.float32)
        good = np.isfinite(modulus).all(axis=(1, 2))
        if self._parts and modulus.shape[1:] != self._parts[0][1].shape[1:]:
            good[:] = False
        if good.any():
            mask = None if mask is None else np.asarray(mask, bool).copy()
            self._parts.append((np.asarray(seq_nums, np.int64)[good], modulus[good].copy(), mask))

    def volume(self, positions: Mapping[int, float]) -> Volume | str:
        """The ``config.depth`` frames around the brightest (seq_nums contiguous; a missing
        frame is a masked plane), with their angles from ``positions`` (seq_num -> reading);
        or why there is none (too few frames)."""
        received = sum(len(s) for s, _, _ in self._parts)
        if received < self.config.min_frames:
            return (
                f"{received} frames with data, {self.config.min_frames} needed for a 3D reconstruction "
                "(RockingConfig.min_frames)"
            )
        seqs = np.concatenate([s for s, _, _ in self._parts])
        power = np.concatenate([_power(m, pmask) for _, m, pmask in self._parts])
        brightest = int(seqs[np.argmax(power)])
        lo, hi = int(seqs.min()), int(seqs.max())
        depth = min(self.config.depth, hi - lo + 1)
        first = min(max(brightest - depth // 2, lo), hi - depth + 1)
        window = np.arange(first, first + depth, dtype=np.int64)
        h, w = self._parts[0][1].shape[1:]
        modulus = np.zeros((depth, h, w), np.float32)
        mask = np.zeros((depth, h, w), bool)
        present = np.zeros(depth, bool)
        for s, m, pmask in self._parts:
            inside = (s >= first) & (s < first + depth)
            planes = s[inside] - first
            modulus[planes] = m[inside]
            mask[planes] = True if pmask is None else pmask
            present[planes] = True
        angles = np.array([positions.get(int(s), np.nan) for s in window], np.float64)
        missing = tuple(int(s) for s in window[~present])
        return Volume(modulus, mask, window, angles, brightest, received, missing)


def _power(modulus: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(B,) measured intensity of each frame: the sum of ``modulus**2`` over ``mask``."""
    power = np.square(modulus, dtype=np.float64)
    return (power if mask is None else power * mask).sum(axis=(1, 2))


@dataclass(frozen=True)
class PhasedVolume:
    """A phased volume, numpy.

    object : (D, H, W) complex64, on the data's scale;  support : (D, H, W) bool
    chi2 : float, of the object;  chi2_starts : (N,) float32, of every start
    spread_amplitude, spread_phase : float, rms spread of the kept starts
    schedule, backend : str, what ran
    """

    object: np.ndarray
    support: np.ndarray
    chi2: float
    chi2_starts: np.ndarray
    spread_amplitude: float
    spread_phase: float
    schedule: str
    backend: str


PhaseVolume = Callable[[Volume, RockingConfig, int | None], PhasedVolume]
"""``phase(volume, config, seed) -> PhasedVolume``: how a volume is phased (:func:`phase_volume`)."""


def phase_volume(volume: Volume, config: RockingConfig, seed: int | None, device: Any = "cpu") -> PhasedVolume:
    """Phase ``volume`` with ``config.starts`` random starts in one batch, keeping the
    ``config.keep`` of lowest chi² aligned and averaged (``cdi_beamline.phasing.multistart``),
    on ``device``."""
    result = multistart(
        torch.from_numpy(volume.modulus).to(device),
        mask=torch.from_numpy(volume.mask).to(device),
        config=config.refine,
        starts=config.starts,
        keep=config.keep,
        seed=0 if seed is None else seed,
    )
    return PhasedVolume(
        object=result.object.cpu().numpy(),
        support=result.support.cpu().numpy().astype(bool),
        chi2=float(result.chi2),
        chi2_starts=result.chi2_starts.numpy(),
        spread_amplitude=float(result.spread_amplitude),
        spread_phase=float(result.spread_phase),
        schedule=str(result.schedule),
        backend=str(result.backend),
    )


@dataclass(frozen=True)
class _Job:
    stack: VolumeStack
    positions: Mapping[int, float]
    metadata: dict[str, Any]


class VolumeJobs:
    """The 3D jobs of a live session, one after another on a daemon thread of their own.

    Parameters
    ----------
    emit : callable(name, doc)
        Receives the 3D runs' documents (thread-safe across runs: a SpoolingWriter).
    results_dir : path
        The HDF5 file ``<uid>.h5`` of each 3D run is written there.
    config : RockingConfig
    seed : int or None
        Seed of the random starts.
    phase : PhaseVolume, optional
        How a volume is phased; default :func:`phase_volume` on ``device``.
    device : torch device of the default ``phase``.
    stats : Counter, optional
        Counts ``volumes``, ``volume_errors``, ``volumes_skipped`` here (shared with the worker).
    """

    def __init__(
        self,
        emit: Emit,
        results_dir: str | Path,
        config: RockingConfig,
        *,
        seed: int | None = 0,
        phase: PhaseVolume | None = None,
        device: Any = "cpu",
        stats: Counter | None = None,
    ):
        self.emit = emit
        self.results_dir = Path(results_dir)
        self.config = config
        self.seed = seed
        self.phase: PhaseVolume = phase or (lambda v, c, s: phase_volume(v, c, s, device))
        self.stats = Counter() if stats is None else stats
        self.uids: dict[str, str] = {}  # raw uid -> 3D run uid
        self.skipped: dict[str, str] = {}  # raw uid -> why no 3D run
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._thread: threading.Thread | None = None

    def stack(self, raw_start: Mapping[str, Any]) -> VolumeStack | None:
        """A stack for the raw run if it is a rocking scan, else None."""
        motor = rocking_motor(raw_start, self.config)
        return None if motor is None else VolumeStack(raw_start, motor, self.config)

    def submit(self, stack: VolumeStack, positions: Mapping[int, float], metadata: Mapping[str, Any]) -> None:
        """Queue the 3D job of a stopped run; ``positions`` seq_num -> motor reading,
        ``metadata`` more start keys of the 3D run (the preprocessing record...)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cdi-volume", daemon=True)
            self._thread.start()
        self._queue.put(_Job(stack, dict(positions), dict(metadata)))

    def wait(self) -> None:
        """Return when every queued 3D job is done."""
        self._queue.join()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                self.run(job.stack, job.positions, job.metadata)
            except Exception:  # noqa: BLE001 - the thread never dies
                logger.exception("3D job of run %s failed", job.stack.raw_start.get("uid"))
                self.stats["volume_errors"] += 1
            finally:
                self._queue.task_done()

    def run(self, stack: VolumeStack, positions: Mapping[int, float], metadata: Mapping[str, Any]) -> str | None:
        """Build, phase, post-process and write the 3D run of one stopped rocking scan, in
        the caller's thread; returns its uid, or None when there are too few frames (logged)."""
        raw_uid = str(stack.raw_start["uid"])
        volume = stack.volume(positions)
        if isinstance(volume, str):
            logger.warning("rocking scan %s: no 3D reconstruction: %s", raw_uid, volume)
            self.skipped[raw_uid] = volume
            self.stats["volumes_skipped"] += 1
            return None
        given = {
            field: stack.raw_start[key] for field, key in self.config.geometry_keys.items() if key in stack.raw_start
        }
        rocking = {
            "motor": stack.motor,
            "step_deg": volume.step,
            "depth": len(volume.seq_nums),
            "frames_received": volume.received,
            "brightest_seq_num": volume.brightest,
            "missing_seq_nums": list(volume.missing),
            "config": self.config.model_dump(mode="json"),
        }
        run = _VolumeRun(stack.raw_start, self.emit, self.results_dir, {ROCKING: rocking, GEOMETRY: given, **metadata})
        self.uids[raw_uid] = run.uid
        t0 = time.perf_counter()
        try:
            phased = self.phase(volume, self.config, self.seed)
        except Exception as exc:  # noqa: BLE001 - recorded in the 3D run, the session goes on
            logger.exception("3D phasing of rocking scan %s failed", raw_uid)
            self.stats["volume_errors"] += 1
            why = f"3D phasing failed: {type(exc).__name__}: {exc}"
            run.close("error", why, seconds=time.perf_counter() - t0)
            return run.uid
        seconds = time.perf_counter() - t0
        result, done = _postprocessed(volume, phased, given)
        engine = f"{phased.schedule} on {phased.backend}"
        try:
            run.write(result)
        except Exception as exc:  # noqa: BLE001 - as above
            logger.exception("writing the 3D run of rocking scan %s failed", raw_uid)
            self.stats["volume_errors"] += 1
            why = f"3D result write failed: {type(exc).__name__}: {exc}"
            run.close("error", why, phased.chi2, seconds, done, engine)
            return run.uid
        self.stats["volumes"] += 1
        run.close("ok", "", phased.chi2, seconds, done, engine)
        return run.uid


def _postprocessed(volume: Volume, phased: PhasedVolume, given: Mapping[str, Any]) -> tuple[VolumeResult, dict]:
    """The 3D run's event and what post-processing its arrays had: twin, phase ramp, offset
    at the crystal's centre, unwrapping (``cdi_beamline.phasing.postprocess``), and orthogonal
    lab axes when ``given`` holds a whole :class:`~cdi_beamline.config.BraggGeometry` (the
    rocking step from the readings). A post-processing that fails leaves the phase as phased
    and says why."""
    result = VolumeResult(
        amplitude=np.abs(phased.object),
        phase=np.angle(phased.object),
        support=phased.support,
        chi2_starts=phased.chi2_starts,
        rocking_angle=volume.angles,
        raw_seq_num=volume.seq_nums,
        chi2=phased.chi2,
        spread_amplitude=phased.spread_amplitude,
        spread_phase=phased.spread_phase,
    )
    geometry, why_not = None, "no geometry given"
    if given:
        try:
            geometry = BraggGeometry.build(**given, rocking_step_deg=volume.step)
        except ConfigError as exc:
            why_not = " ".join(str(exc).split())
    try:
        pp = postprocess(phased.object, phased.support, geometry=geometry)
    except Exception as exc:  # noqa: BLE001 - the phased object is still stored
        logger.exception("3D post-processing failed")
        return result, {"error": f"{type(exc).__name__}: {exc}"}
    done: dict[str, Any] = {
        "twinned": pp.twinned,
        "ramp_rad_per_voxel": [float(r) for r in pp.ramp],
        "offset": pp.offset,
        "unwrapped": True,
        "lab_voxel_nm": pp.lab_voxel_nm,
        "lab": why_not if geometry is None else "orthogonal lab axes (z, y, x)",
    }
    result = replace(
        result,
        amplitude=pp.amplitude,
        phase=pp.phase,
        support=pp.support,
        lab_amplitude=pp.lab_amplitude,
        lab_phase=pp.lab_phase,
        lab_support=pp.lab_support,
    )
    return result, done


class _VolumeRun:
    """The documents of one 3D run: start at construction, then (:meth:`write`) one event
    whose arrays are in ``<uid>.h5`` (StreamResource/StreamDatum), and the stop."""

    def __init__(self, raw_start: Mapping[str, Any], emit: Emit, results_dir: Path, metadata: Mapping[str, Any]):
        self.emit = emit
        md = {
            PARENT_UID: raw_start["uid"],
            KIND: VOLUME_KIND,
            "plan_name": VOLUME_KIND,
            "software": {"cdi_beamline": __version__},
            "fft_convention": FFT_CONVENTION,
            **metadata,
        }
        md.update({key: raw_start[key] for key in INHERITED_START_KEYS if key in raw_start})
        self._bundle: Any = compose_run(metadata=md)
        self.uid = self._bundle.start_doc["uid"]
        self.path = results_dir.resolve() / f"{self.uid}.h5"
        self.emit("start", self._bundle.start_doc)

    def write(self, result: VolumeResult) -> None:
        arrays = result.arrays()
        shapes = {key: tuple(a.shape) for key, a in arrays.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.path, "w", libver="latest", locking=False) as f:
            for key, a in arrays.items():
                f.create_dataset(key, data=a.astype(VOLUME_ARRAY_DTYPES[key])[np.newaxis])
        desc = self._bundle.compose_descriptor(name=STREAM, data_keys=volume_data_keys(shapes))
        self.emit("descriptor", desc.descriptor_doc)
        datums = hdf5_stream_resources(self._bundle, self.emit, self.path, {k: shapes[k] for k in arrays}).values()
        now = time.time()
        data = result.event_data()
        page = desc.compose_event_page(data=data, timestamps={k: [now] for k in data}, time=[now])
        self.emit("event_page", page)
        for compose in datums:
            self.emit(
                "stream_datum",
                compose(
                    indices={"start": 0, "stop": 1}, seq_nums={"start": 1, "stop": 2}, descriptor=desc.descriptor_doc
                ),
            )

    def close(
        self,
        status: VolumeStatus,
        reason: str = "",
        chi2: float = float("nan"),
        seconds: float = float("nan"),
        postprocess: Mapping[str, Any] | None = None,
        engine: str = "",
    ) -> None:
        """Emit the stop: :func:`~cdi_beamline.results.volume_summary` of these under
        :data:`VOLUME_SUMMARY`, the exit status ``fail`` unless ``status`` is ``ok``."""
        exit_status = "success" if status == "ok" else "fail"
        stop: dict[str, Any] = dict(self._bundle.compose_stop(exit_status=exit_status, reason=reason, validate=False))
        stop[VOLUME_SUMMARY] = volume_summary(status, reason, chi2, seconds, postprocess, engine)
        self.emit("stop", stop)
