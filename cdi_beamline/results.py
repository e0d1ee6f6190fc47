"""The derived run's schema: what a reconstruction run holds and how its keys are spelled.

Writer (:mod:`cdi_beamline.callbacks`), reader (:mod:`cdi_beamline.tiled`), reprocess and
plots import these names; no other module spells a key of the derived run. numpy only: this
module sits below the engine, so it takes a reconstruction batch duck-typed
(:class:`BatchLike`).

A derived run (one per raw run) is

- a start document with ``cdi_kind`` = :data:`DERIVED_KIND`, ``parent_uid`` = the raw run's
  uid, the engine's description, the live configuration, the raw image key;
- one descriptor of the stream :data:`STREAM` whose data keys are :func:`data_keys`: the
  images :data:`ARRAY_DTYPES` live in an HDF5 file (StreamResource/StreamDatum), the
  scalars :data:`SCALAR_DTYPES` in EventPages, one row per raw frame;
- a stop document with the counts (:data:`COUNTS`) and the chi² summary.
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
    "CHI2_SUMMARY",
    "COUNTS",
    "DERIVED_KIND",
    "HINTS",
    "INHERITED_START_KEYS",
    "KIND",
    "LIVE",
    "PARENT_UID",
    "PROCESSED",
    "RAW_IMAGE_KEY",
    "RAW_STREAM",
    "RECONSTRUCTOR",
    "RAW_SEQ_NUM",
    "REPROCESSED",
    "RESULT_KEYS",
    "ResultRows",
    "SCALAR_DTYPES",
    "STATUSES",
    "STREAM",
    "SUPERSEDES",
    "Status",
    "counts",
    "data_keys",
    "find_image_key",
    "image_shape",
    "uri_to_path",
]

Status = Literal["ok", "bad", "error", "dropped"]
"""Per-frame outcome: ``ok`` reconstructed; ``bad`` the frame was refused (invalid input);
``error`` the reconstruction failed; ``dropped`` never reconstructed (queue full)."""

STATUSES: tuple[Status, ...] = get_args(Status)

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

RAW_STREAM = "raw_stream"
"""Start key: the raw run's stream whose frames were reconstructed."""

REPROCESSED = "reprocessed"
"""Start key: True in a derived run rebuilt from the raw run's stored frames."""

SUPERSEDES = "supersedes"
"""Start key of a reprocessed run: uids of the derived runs of the same raw run before it."""

COUNTS = "cdi_counts"
"""Stop key: ``{"received", "reconstructed", "bad", "error", "dropped", "flagged"}`` frame counts."""

CHI2_SUMMARY = "cdi_chi2"
"""Stop key: ``{"mean", "max"}`` chi² of the frames reconstructed ``ok``."""

# --- the stream ------------------------------------------------------------------------------

STREAM = "primary"
"""Name of the derived run's one stream."""

ARRAY_DTYPES: dict[str, str] = {"amplitude": "<f4", "phase": "<f4", "support": "|u1"}
"""Per-frame images (H, W), stored in the result HDF5 file: key -> numpy dtype in the file."""

RAW_SEQ_NUM = "raw_seq_num"
"""Per-frame key: the raw event's ``seq_num`` that the row reconstructs."""

SCALAR_DTYPES: dict[str, str] = {"chi2": "<f8", RAW_SEQ_NUM: "<i8", "status": "<U", "reason": "<U"}
"""Per-frame scalars, stored in EventPages: key -> numpy dtype (``<U``: a string)."""

RESULT_KEYS: tuple[str, ...] = (*ARRAY_DTYPES, *SCALAR_DTYPES)
"""Every per-frame column of a derived run; :func:`cdi_beamline.tiled.load_results` returns
these (plus ``start`` and ``stop``)."""

_EVENT_DTYPE = {"<f8": "number", "<i8": "integer", "<U": "string"}


def data_keys(shape: tuple[int, int], source: str = "cdi_beamline") -> dict[str, dict]:
    """The descriptor's data keys of a derived run of ``shape`` (H, W) images."""
    h, w = shape
    keys = {
        key: {"source": source, "dtype": "array", "dtype_numpy": dt, "shape": [h, w], "external": "STREAM:"}
        for key, dt in ARRAY_DTYPES.items()
    }
    for key, dt in SCALAR_DTYPES.items():
        keys[key] = {"source": source, "dtype": _EVENT_DTYPE[dt], "shape": []}
        if dt != "<U":
            keys[key]["dtype_numpy"] = dt
    return keys


HINTS = {"cdi": {"fields": ["amplitude", "phase", "chi2"]}}
"""Descriptor hints: what a generic viewer should show."""


def counts(stop: Mapping[str, Any]) -> dict[str, int]:
    """The frame counts of a derived stop document (zeros where missing)."""
    c = dict(stop.get(COUNTS) or {})
    return {k: int(c.get(k, 0)) for k in ("received", "reconstructed", "bad", "error", "dropped", "flagged")}


# --- rows --------------------------------------------------------------------------------------


class BatchLike(Protocol):
    """What a reconstruction batch gives per frame (``cdi_beamline.pipeline.ReconstructionBatch``)."""

    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray
    chi2: np.ndarray
    status: list[str]
    reason: list[str]


@dataclass(frozen=True, eq=False)
class ResultRows:
    """Per-frame results, one row per raw frame, numpy, in the dtypes of the derived run.

    Attributes
    ----------
    raw_seq_num : (B,) int64
    amplitude, phase : (B, H, W) float32
    support : (B, H, W) bool
    chi2 : (B,) float64, NaN where no reconstruction
    status : (B,) str, one of :data:`STATUSES`
    reason : (B,) str, "" or why the frame is not ``ok``
    """

    raw_seq_num: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray
    chi2: np.ndarray
    status: np.ndarray
    reason: np.ndarray

    def __post_init__(self) -> None:
        coerce = {
            "raw_seq_num": lambda x: np.asarray(x, np.int64).reshape(-1),
            "amplitude": lambda x: np.asarray(x, np.float32),
            "phase": lambda x: np.asarray(x, np.float32),
            "support": lambda x: np.asarray(x, bool),
            "chi2": lambda x: np.asarray(x, np.float64).reshape(-1),
            "status": lambda x: np.asarray(x, str).reshape(-1),
            "reason": lambda x: np.asarray(x, str).reshape(-1),
        }
        for key, fn in coerce.items():
            object.__setattr__(self, key, fn(getattr(self, key)))
        n = len(self.raw_seq_num)
        if any(len(getattr(self, key)) != n for key in coerce):
            raise ValueError("ResultRows: every column needs one row per frame")
        if self.amplitude.ndim != 3 or not (self.amplitude.shape == self.phase.shape == self.support.shape):
            raise ValueError(f"ResultRows: images must be (B, H, W) alike, got {self.amplitude.shape}")
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
        """Rows of a reconstruction batch whose frames had these raw ``seq_num``."""
        return cls(
            np.asarray(raw_seq_num),
            np.asarray(batch.amplitude),
            np.asarray(batch.phase),
            np.asarray(batch.support),
            np.asarray(batch.chi2),
            np.asarray(batch.status, str),
            np.asarray(batch.reason, str),
        )

    @classmethod
    def failed(
        cls,
        raw_seq_num: Sequence[int] | np.ndarray,
        shape: tuple[int, int],
        status: Status,
        reason: str | Sequence[str],
    ) -> ResultRows:
        """Rows of frames without a reconstruction: NaN images, empty support, NaN chi²."""
        b = len(raw_seq_num)
        nan = np.full((b, *shape), np.nan, np.float32)
        reasons = [reason] * b if isinstance(reason, str) else list(reason)
        return cls(
            np.asarray(raw_seq_num),
            nan,
            nan,
            np.zeros((b, *shape), bool),
            np.full(b, np.nan),
            np.asarray([status] * b, str),
            np.asarray(reasons, str),
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
        """The images, key -> (B, H, W) array in the file's dtype (:data:`ARRAY_DTYPES`)."""
        return {key: getattr(self, key).astype(dt, copy=False) for key, dt in ARRAY_DTYPES.items()}

    def event_data(self) -> dict[str, list]:
        """The scalars as EventPage columns (JSON-able lists)."""
        return {key: getattr(self, key).tolist() for key in SCALAR_DTYPES}

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> ResultRows:
        """Rows from a mapping of the :data:`RESULT_KEYS` columns (a table read from Tiled)."""
        return cls(**{key: np.asarray(columns[key]) for key in RESULT_KEYS})

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
