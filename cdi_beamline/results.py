"""The derived run's schema: what a reconstruction run holds and how its keys are spelled.

Writer (:mod:`cdi_beamline.callbacks`), reader (:mod:`cdi_beamline.tiled`), reprocess and
plots import these names; no other module spells a key of the derived run. numpy only: this
module sits below the engine, so it takes a reconstruction batch duck-typed
(:class:`BatchLike`).

A derived run (one per raw run) is

- a start document with ``cdi_kind`` = :data:`DERIVED_KIND`, ``parent_uid`` = the raw run's
  uid, the engine's description, the live configuration, the raw image key (and, phased from
  raw counts, the preprocessing record :data:`PREPROCESS`);
- one descriptor of the stream :data:`STREAM` whose data keys are :func:`data_keys`: the
  arrays :data:`ARRAY_DTYPES` (images, and the decimated chi² history) live in an HDF5 file
  (StreamResource/StreamDatum), the scalars :data:`SCALAR_DTYPES` in EventPages, one row
  per raw frame;
- a stop document with the counts (:data:`COUNTS`), the chi² summary and, phased from raw
  counts, the preprocessing record with the run's ROI (:data:`PREPROCESS`).

A rocking scan also gets a 3D derived run (:data:`VOLUME_KIND`), in the same container and
linked the same way (``parent_uid``):

- a start document with ``cdi_kind`` = :data:`VOLUME_KIND`, the rocking record
  :data:`ROCKING` (motor, step, frames used, config) and the geometry given :data:`GEOMETRY`;
- one event of the stream :data:`STREAM`: the arrays :data:`VOLUME_ARRAY_DTYPES` in an HDF5
  file, the scalars :data:`VOLUME_SCALAR_DTYPES` in the event (no event when phasing failed);
- a stop document with :data:`VOLUME_SUMMARY`: status (``ok`` or ``error``), reason, chi².
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args
from urllib.parse import unquote, urlparse

import numpy as np

__all__ = [
    "ARRAY_DTYPES",
    "BatchLike",
    "CHI2_HISTORY_LENGTH",
    "CHI2_SUMMARY",
    "COUNTS",
    "DERIVED_KIND",
    "HINTS",
    "INHERITED_START_KEYS",
    "KIND",
    "LIVE",
    "PARENT_UID",
    "PREPROCESS",
    "PROCESSED",
    "RAW_IMAGE_KEY",
    "RAW_STREAM",
    "RECONSTRUCTOR",
    "RAW_SEQ_NUM",
    "RECONSTRUCTED",
    "REPROCESSED",
    "RESULT_KEYS",
    "ResultRows",
    "ROCKING",
    "SCALAR_DTYPES",
    "STATUSES",
    "STREAM",
    "SUPERSEDES",
    "Status",
    "GEOMETRY",
    "VOLUME_ARRAY_DTYPES",
    "VOLUME_KIND",
    "VOLUME_SCALAR_DTYPES",
    "VOLUME_SUMMARY",
    "VolumeResult",
    "VolumeStatus",
    "volume_data_keys",
    "volume_summary",
    "counts",
    "data_keys",
    "decimate_history",
    "history_iterations",
    "row_shapes",
    "find_image_key",
    "format_counts",
    "image_shape",
    "status_counts",
    "uri_to_path",
]

Status = Literal["ok", "low_signal", "not_converged", "bad", "error", "dropped"]
"""Per-frame outcome, with a reason string for all but ``ok``:

- ``ok``: reconstructed, and the reconstruction passed the quality checks;
- ``low_signal``: reconstructed, not converged, and the brightest pixel holds too few counts
  (``ReconstructorConfig.quality.min_peak_counts``): the frame holds little but noise;
- ``not_converged``: reconstructed, but chi² is above ``quality.max_chi2`` or the support
  grew to its bound (``quality.max_support_fill`` of Support 2);
- ``bad``: the frame was refused (invalid input); ``error``: the reconstruction failed;
  ``dropped``: never reconstructed (queue full).

Flagged frames are stored like the others; only ``bad``, ``error`` and ``dropped`` rows have
NaN images."""

STATUSES: tuple[Status, ...] = get_args(Status)

RECONSTRUCTED: tuple[Status, ...] = ("ok", "low_signal", "not_converged")
"""Statuses of the rows that hold a reconstruction."""

# --- start / stop metadata -----------------------------------------------------------------

KIND = "cdi_kind"
"""Start key naming what kind of run this is."""

DERIVED_KIND = "cdi_reconstruction"
"""Value of ``start[KIND]`` in every derived run (search key for all results); also its plan name."""

PARENT_UID = "parent_uid"
"""Start key: uid of the raw run the derived run reconstructs."""

PROCESSED = "processed"
"""The container, at the run catalog's root, that holds every derived run. Raw scans stay the
root's own runs, so ``catalog[-1]``, ``catalog[scan_id]`` and a search by scan_id return the
scan a user took; a facility's processed data likewise lives apart from its raw data."""

INHERITED_START_KEYS: tuple[str, ...] = (
    "scan_id",
    "tiled_access_tags",
    "data_session",
    "proposal",
    "cycle",
    "beamline_id",
    "facility",
)
"""Start keys copied from the raw run into its derived run: the scan number, and the
access-control and session keys a facility's Tiled policies act on (``tiled_access_tags``
becomes the derived node's access tags, as for the raw run)."""

RAW_IMAGE_KEY = "raw_image_key"
"""Start key: data key of the raw run's detector image that was reconstructed."""

RECONSTRUCTOR = "reconstructor"
"""Start key: the engine's provenance (``Reconstructor.provenance()``: the configuration that
ran under ``"config"``, weights, versions); enough to rebuild the engine."""

LIVE = "live"
"""Start key: the live configuration (``LiveConfig`` dump: seed, queue policy, ...)."""

PREPROCESS = "preprocess"
"""Start and stop key of a run phased from raw counts: the preprocessing record
(``Preprocessor.record()``: config, frame shape, ``roi`` (y0, x0, h, w), binning, phased
grid, where dark, flat and mask came from and their sha256), or ``{"config", "error"}`` when
the preprocessing could not be set up. One ROI per run: in the start it is the fixed ROI, or
None while an automatic one is not yet chosen (the start is written before the first frame);
the stop holds the run's ROI as chosen."""

RAW_STREAM = "raw_stream"
"""Start key: the raw run's stream whose frames were reconstructed."""

REPROCESSED = "reprocessed"
"""Start key: True in a derived run rebuilt from the raw run's stored frames."""

SUPERSEDES = "supersedes"
"""Start key of a reprocessed run: uids of the derived runs of the same raw run before it."""

COUNTS = "cdi_counts"
"""Stop key: frame counts ``{"received", "reconstructed", "flagged", <each status>}``;
``reconstructed`` counts the rows of :data:`RECONSTRUCTED` statuses, ``flagged`` the rows
neither ``ok`` nor ``dropped``."""

CHI2_SUMMARY = "cdi_chi2"
"""Stop key: ``{"mean", "max"}`` chi² of the frames reconstructed ``ok``."""

# --- the stream ------------------------------------------------------------------------------

STREAM = "primary"
"""Name of the derived run's one stream."""

ARRAY_DTYPES: dict[str, str] = {
    "amplitude": "<f4",
    "phase": "<f4",
    "support": "|u1",
    "start_amplitude": "<f4",
    "start_phase": "<f4",
    "chi2_history": "<f4",
}
"""Per-frame arrays, stored in the result HDF5 file: key -> numpy dtype in the file; their
per-row shapes are :func:`row_shapes`. ``amplitude``, ``phase``, ``support``: the result (H, W);
``start_amplitude``, ``start_phase``: the initial estimate before refinement (the CNN's, or the
nearest neighbour's, inside its support: the object refinement starts from; NaN for random and
given-support starts), on the data's scale like the result; ``chi2_history``: (:data:`CHI2_HISTORY_LENGTH`,) chi² at the iterations
:func:`history_iterations` of the run's iteration count (first: the start's chi²)."""

CHI2_HISTORY_LENGTH = 64
"""Points of the stored chi² history (decimated from the iterations that ran)."""

RAW_SEQ_NUM = "raw_seq_num"
"""Per-frame key: the raw event's ``seq_num`` that the row reconstructs."""

SCALAR_DTYPES: dict[str, str] = {"chi2": "<f8", "scale": "<f8", RAW_SEQ_NUM: "<i8", "status": "<U", "reason": "<U"}
"""Per-frame scalars, stored in EventPages: key -> numpy dtype (``<U``: a string). ``scale``
is the object's normalisation: refinement runs on ``modulus / scale`` (``scale`` =
sqrt(Σ measured intensity)) and the object is multiplied by it on return."""

RESULT_KEYS: tuple[str, ...] = (*ARRAY_DTYPES, *SCALAR_DTYPES)
"""Every per-frame column of a derived run; :func:`cdi_beamline.tiled.load_results` returns
these (plus ``start`` and ``stop``)."""

_EVENT_DTYPE = {"<f8": "number", "<i8": "integer", "<U": "string"}

# --- the 3D run of a rocking scan ---------------------------------------------------------------

VOLUME_KIND = "cdi_volume"
"""Value of ``start[KIND]`` (and the plan name) of the 3D derived run of a rocking scan; it
tells a 3D run from the 2D per-frame runs (:data:`DERIVED_KIND`)."""

ROCKING = "rocking"
"""Start key of a 3D run: ``{"motor", "step_deg", "depth", "frames_received", "brightest_seq_num",
"missing_seq_nums", "config"}``: the rocking axis, the angle step (median of the readings),
frames in the volume and received, the brightest frame (the volume's centre), the seq_nums of
the window with no frame (masked planes), and the ``RockingConfig`` dump."""

GEOMETRY = "geometry"
"""Start key of a 3D run: the geometry fields the raw run's start document gave
(``RockingConfig.geometry_keys``: energy, detector distance, pixel size, detector angles)."""

VOLUME_SUMMARY = "cdi_volume"
"""Stop key of a 3D run: ``{"status", "reason", "chi2", "seconds", "postprocess", "engine"}``:
``ok`` or ``error`` (and why), the chi² of the phased object (NaN on error), the phasing's wall
time, what post-processing the arrays had (``twinned``, ``ramp_rad_per_voxel``, ``offset``,
``unwrapped``, ``lab``: the lab axes or why not, ``lab_voxel_nm``; or ``{"error"}``), and the
schedule and backend that ran (:func:`volume_summary`)."""

VOLUME_ARRAY_DTYPES: dict[str, str] = {
    "amplitude": "<f4",
    "phase": "<f4",
    "support": "|u1",
    "chi2_starts": "<f4",
    "rocking_angle": "<f8",
    "raw_seq_num": "<i8",
    "lab_amplitude": "<f4",
    "lab_phase": "<f4",
    "lab_support": "|u1",
}
"""Arrays of the 3D run's one event, in its HDF5 file: ``amplitude``, ``phase``, ``support``
(D, H, W) on the detector-conjugate grid (D along the rocking axis, frames in scan order;
``phase`` post-processed as :data:`VOLUME_SUMMARY` ``["postprocess"]`` says: twin, ramp
removed, 0 at the crystal's centre, unwrapped); ``chi2_starts`` (N,) chi² of every start;
``rocking_angle`` (D,) degrees (NaN where not read) and ``raw_seq_num`` (D,) of each plane;
only with a whole geometry (:data:`GEOMETRY`): ``lab_amplitude``, ``lab_phase``,
``lab_support`` (Z, Y, X) on orthogonal lab axes, cubic voxels of
``postprocess["lab_voxel_nm"]``."""

VOLUME_SCALAR_DTYPES: dict[str, str] = {"chi2": "<f8", "spread_amplitude": "<f8", "spread_phase": "<f8"}
"""Scalars of the 3D run's event: chi² (eq. 5) of the averaged object, and the rms spread of
the kept starts about their mean over the support (amplitude relative to the mean amplitude,
phase in radians)."""


VolumeStatus = Literal["ok", "error"]
"""Outcome of a 3D job: ``ok`` (phased and written) or ``error`` (with a reason)."""


def volume_summary(
    status: VolumeStatus,
    reason: str = "",
    chi2: float = float("nan"),
    seconds: float = float("nan"),
    postprocess: Mapping[str, Any] | None = None,
    engine: str = "",
) -> dict[str, Any]:
    """The value of :data:`VOLUME_SUMMARY` in a 3D run's stop document."""
    return {
        "status": status,
        "reason": reason,
        "chi2": float(chi2),
        "seconds": float(seconds),
        "postprocess": dict(postprocess or {}),
        "engine": engine,
    }


@dataclass(frozen=True, eq=False)
class VolumeResult:
    """The one event of a 3D run, numpy (keys :data:`VOLUME_ARRAY_DTYPES`,
    :data:`VOLUME_SCALAR_DTYPES`).

    Attributes
    ----------
    amplitude, phase : (D, H, W) float32;  support : (D, H, W) bool
    chi2_starts : (N,) float32;  rocking_angle : (D,) float64;  raw_seq_num : (D,) int64
    chi2, spread_amplitude, spread_phase : float
    lab_amplitude, lab_phase : (Z, Y, X) float32, lab_support : (Z, Y, X) bool, or None
    """

    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray
    chi2_starts: np.ndarray
    rocking_angle: np.ndarray
    raw_seq_num: np.ndarray
    chi2: float
    spread_amplitude: float
    spread_phase: float
    lab_amplitude: np.ndarray | None = None
    lab_phase: np.ndarray | None = None
    lab_support: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays it holds, key -> array in the file's dtype (``support`` as bool)."""
        out = {}
        for key, dt in VOLUME_ARRAY_DTYPES.items():
            value = getattr(self, key)
            if value is not None:
                out[key] = np.asarray(value, bool if dt == "|u1" else dt)
        return out

    def event_data(self) -> dict[str, list]:
        """The scalars as EventPage columns of one row."""
        return {key: [float(getattr(self, key))] for key in VOLUME_SCALAR_DTYPES}

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> VolumeResult:
        """The result from the columns of the 3D run's stream (a table read from Tiled: one row)."""
        values: dict[str, Any] = {key: float(np.asarray(columns[key])[0]) for key in VOLUME_SCALAR_DTYPES}
        for key, dt in VOLUME_ARRAY_DTYPES.items():
            if key in columns:
                values[key] = np.asarray(columns[key])[0].astype(bool if dt == "|u1" else dt)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """``{key: value}`` of every array it holds and every scalar."""
        return {**self.arrays(), **{key: float(getattr(self, key)) for key in VOLUME_SCALAR_DTYPES}}


def volume_data_keys(shapes: Mapping[str, Sequence[int]], source: str = "cdi_beamline") -> dict[str, dict]:
    """The descriptor's data keys of a 3D run whose arrays (keys of :data:`VOLUME_ARRAY_DTYPES`)
    have ``shapes`` (key -> shape)."""
    keys = {
        key: {
            "source": source,
            "dtype": "array",
            "dtype_numpy": VOLUME_ARRAY_DTYPES[key],
            "shape": list(shape),
            "external": "STREAM:",
        }
        for key, shape in shapes.items()
    }
    for key, dt in VOLUME_SCALAR_DTYPES.items():
        keys[key] = {"source": source, "dtype": _EVENT_DTYPE[dt], "shape": [], "dtype_numpy": dt}
    return keys


def row_shapes(shape: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Per-row shape of each :data:`ARRAY_DTYPES` key for ``shape`` (H, W) images."""
    return {key: (CHI2_HISTORY_LENGTH,) if key == "chi2_history" else tuple(shape) for key in ARRAY_DTYPES}


def history_iterations(iterations: int) -> np.ndarray:
    """(:data:`CHI2_HISTORY_LENGTH`,) int: the iterations (0-based) whose chi² the stored
    history holds, evenly spread from the first to the last (repeated when fewer ran)."""
    if iterations < 1:
        return np.zeros(CHI2_HISTORY_LENGTH, np.int64)
    return np.round(np.linspace(0, iterations - 1, CHI2_HISTORY_LENGTH)).astype(np.int64)


def decimate_history(history: np.ndarray) -> np.ndarray:
    """(B, T) chi² per iteration -> (B, :data:`CHI2_HISTORY_LENGTH`) float32 at
    :func:`history_iterations` ``(T)``; NaN rows when T is 0."""
    history = np.asarray(history, np.float32)
    if history.shape[1] == 0:
        return np.full((len(history), CHI2_HISTORY_LENGTH), np.nan, np.float32)
    return history[:, history_iterations(history.shape[1])]


def data_keys(shape: tuple[int, int], source: str = "cdi_beamline") -> dict[str, dict]:
    """The descriptor's data keys of a derived run of ``shape`` (H, W) images."""
    keys = {
        key: {"source": source, "dtype": "array", "dtype_numpy": dt, "shape": list(s), "external": "STREAM:"}
        for (key, dt), s in zip(ARRAY_DTYPES.items(), row_shapes(shape).values())
    }
    for key, dt in SCALAR_DTYPES.items():
        keys[key] = {"source": source, "dtype": _EVENT_DTYPE[dt], "shape": []}
        if dt != "<U":
            keys[key]["dtype_numpy"] = dt
    return keys


HINTS = {"cdi": {"fields": ["amplitude", "phase", "chi2"]}}
"""Descriptor hints: what a generic viewer should show."""


def counts(stop: Mapping[str, Any]) -> dict[str, int]:
    """The frame counts (:data:`COUNTS`) of a derived stop document, zeros where missing."""
    c = dict(stop.get(COUNTS) or {})
    return {k: int(c.get(k, 0)) for k in ("received", "reconstructed", "flagged", *STATUSES)}


def status_counts(status: Iterable[str]) -> dict[str, int]:
    """Rows per status, every status of :data:`STATUSES` (in that order), and the totals of
    :data:`COUNTS`: ``reconstructed`` and ``flagged``."""
    tally: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for s in status:
        tally[str(s)] += 1
    return {
        **tally,
        "reconstructed": sum(tally[s] for s in RECONSTRUCTED),
        "flagged": sum(n for s, n in tally.items() if s not in ("ok", "dropped")),
    }


def format_counts(c: Mapping[str, int]) -> str:
    """``ok 71, low_signal 82, not_converged 48`` (statuses with rows only; "no frames" if none)."""
    return ", ".join(f"{s} {int(c.get(s, 0))}" for s in STATUSES if c.get(s)) or "no frames"


# --- rows --------------------------------------------------------------------------------------


class BatchLike(Protocol):
    """What a reconstruction batch gives per frame (``cdi_beamline.pipeline.ReconstructionBatch``)."""

    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray
    start_amplitude: np.ndarray
    start_phase: np.ndarray
    chi2: np.ndarray
    chi2_history: np.ndarray
    scale: np.ndarray
    status: list[str]
    reason: list[str]


_COERCE = {
    "raw_seq_num": lambda x: np.asarray(x, np.int64).reshape(-1),
    "amplitude": lambda x: np.asarray(x, np.float32),
    "phase": lambda x: np.asarray(x, np.float32),
    "support": lambda x: np.asarray(x, bool),
    "start_amplitude": lambda x: np.asarray(x, np.float32),
    "start_phase": lambda x: np.asarray(x, np.float32),
    "chi2_history": lambda x: np.asarray(x, np.float32).reshape(-1, CHI2_HISTORY_LENGTH),
    "chi2": lambda x: np.asarray(x, np.float64).reshape(-1),
    "scale": lambda x: np.asarray(x, np.float64).reshape(-1),
    "status": lambda x: np.asarray(x, str).reshape(-1),
    "reason": lambda x: np.asarray(x, str).reshape(-1),
}
_IMAGES = ("amplitude", "phase", "support", "start_amplitude", "start_phase")


@dataclass(frozen=True, eq=False)
class ResultRows:
    """Per-frame results, one row per raw frame, numpy, in the dtypes of the derived run.

    Attributes
    ----------
    raw_seq_num : (B,) int64
    amplitude, phase : (B, H, W) float32
    support : (B, H, W) bool
    start_amplitude, start_phase : (B, H, W) float32, the initial estimate (NaN without one)
    chi2_history : (B, :data:`CHI2_HISTORY_LENGTH`) float32, decimated (:func:`decimate_history`)
    chi2 : (B,) float64, NaN where no reconstruction
    scale : (B,) float64, the object's normalisation (NaN where no reconstruction)
    status : (B,) str, one of :data:`STATUSES`
    reason : (B,) str, "" or why the frame is not ``ok``
    """

    raw_seq_num: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray
    start_amplitude: np.ndarray
    start_phase: np.ndarray
    chi2_history: np.ndarray
    chi2: np.ndarray
    scale: np.ndarray
    status: np.ndarray
    reason: np.ndarray

    def __post_init__(self) -> None:
        for key, fn in _COERCE.items():
            object.__setattr__(self, key, fn(getattr(self, key)))
        n = len(self.raw_seq_num)
        if any(len(getattr(self, key)) != n for key in _COERCE):
            raise ValueError("ResultRows: every column needs one row per frame")
        shapes = {getattr(self, key).shape for key in _IMAGES}
        if self.amplitude.ndim != 3 or len(shapes) != 1:
            raise ValueError(f"ResultRows: images must be (B, H, W) alike, got {sorted(shapes)}")
        unknown = set(self.status.tolist()) - set(STATUSES)
        if unknown:
            raise ValueError(f"ResultRows: unknown status {sorted(unknown)}; expected one of {STATUSES}")

    def __len__(self) -> int:
        return len(self.raw_seq_num)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return (int(self.amplitude.shape[1]), int(self.amplitude.shape[2]))

    @classmethod
    def from_batch(cls, raw_seq_num: Sequence[int] | np.ndarray, batch: BatchLike) -> ResultRows:
        """Rows of a reconstruction batch whose frames had these raw ``seq_num`` (its chi²
        history decimated)."""
        return cls(
            raw_seq_num=np.asarray(raw_seq_num),
            amplitude=batch.amplitude,
            phase=batch.phase,
            support=batch.support,
            start_amplitude=batch.start_amplitude,
            start_phase=batch.start_phase,
            chi2_history=decimate_history(batch.chi2_history),
            chi2=batch.chi2,
            scale=batch.scale,
            status=np.asarray(batch.status, str),
            reason=np.asarray(batch.reason, str),
        )

    @classmethod
    def failed(
        cls,
        raw_seq_num: Sequence[int] | np.ndarray,
        shape: tuple[int, int],
        status: Status,
        reason: str | Sequence[str],
    ) -> ResultRows:
        """Rows of frames without a reconstruction: NaN images and numbers, empty support."""
        b = len(raw_seq_num)
        nan = np.full((b, *shape), np.nan, np.float32)
        reasons = [reason] * b if isinstance(reason, str) else list(reason)
        return cls(
            raw_seq_num=np.asarray(raw_seq_num),
            amplitude=nan,
            phase=nan,
            support=np.zeros((b, *shape), bool),
            start_amplitude=nan,
            start_phase=nan,
            chi2_history=np.full((b, CHI2_HISTORY_LENGTH), np.nan, np.float32),
            chi2=np.full(b, np.nan),
            scale=np.full(b, np.nan),
            status=np.asarray([status] * b, str),
            reason=np.asarray(reasons, str),
        )

    @classmethod
    def empty(cls, shape: tuple[int, int] = (0, 0)) -> ResultRows:
        return cls.failed([], shape, "ok", [])

    @classmethod
    def concat(cls, parts: Iterable[ResultRows]) -> ResultRows:
        """Rows of ``parts`` one after the other (images of one shape)."""
        parts = list(parts)
        return cls(**{key: np.concatenate([getattr(p, key) for p in parts]) for key in RESULT_KEYS})

    def take(self, index: np.ndarray | Sequence[int]) -> ResultRows:
        """The rows at ``index``, in that order."""
        idx = np.asarray(index, np.int64)
        return ResultRows(**{key: getattr(self, key)[idx] for key in RESULT_KEYS})

    def sorted(self) -> ResultRows:
        """The rows in raw ``seq_num`` order."""
        return self.take(np.argsort(self.raw_seq_num, kind="stable"))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays, key -> (B, ...) in the file's dtype (:data:`ARRAY_DTYPES`)."""
        return {key: getattr(self, key).astype(dt, copy=False) for key, dt in ARRAY_DTYPES.items()}

    def event_data(self) -> dict[str, list]:
        """The scalars as EventPage columns (JSON-able lists)."""
        return {key: getattr(self, key).tolist() for key in SCALAR_DTYPES}

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> ResultRows:
        """Rows from a mapping of the :data:`RESULT_KEYS` columns (a table read from Tiled);
        columns that a run written before them lacks are NaN."""
        n, shape = len(columns[RAW_SEQ_NUM]), np.shape(columns["amplitude"])[1:]
        blank = cls.failed(np.zeros(n), (int(shape[0]), int(shape[1])), "ok", "").to_dict()
        return cls(**{key: np.asarray(columns[key]) if key in columns else blank[key] for key in RESULT_KEYS})

    def to_dict(self) -> dict[str, np.ndarray]:
        """``{key: column}`` for every key of :data:`RESULT_KEYS`."""
        return {key: getattr(self, key) for key in RESULT_KEYS}


# --- raw runs: which field is the image, where is its file ------------------------------------


def image_shape(data_key: Mapping[str, Any]) -> tuple[int, ...]:
    """The image dims of a descriptor's data key, leading/trailing unit or unknown dims dropped."""
    return tuple(int(s) for s in data_key.get("shape", []) if s not in (1, None))


def find_image_key(data_keys: Mapping[str, Mapping[str, Any]], image_key: str | None = None) -> str | None:
    """``image_key`` if the descriptor has it, else the first array field with a 2-D shape
    (unit dimensions ignored), else None."""
    if image_key is not None:
        return image_key if image_key in data_keys else None
    for key, dk in data_keys.items():
        if len(image_shape(dk)) == 2 and dk.get("dtype", "array") == "array":
            return key
    return None


def uri_to_path(uri: str) -> Path:
    """``file://localhost/abs/path`` (or a plain path) -> Path."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else Path(uri)
