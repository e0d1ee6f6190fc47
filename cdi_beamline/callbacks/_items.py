"""The work items the callback (RunEngine thread) puts on the worker's queue: typed, frozen."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExternalFrames", "Frames", "ImageSpec", "Quit", "RunStart", "RunStop", "Sync", "WorkItem"]


@dataclass(frozen=True, eq=False)
class RunStart:
    """A raw run began (its start document)."""

    raw_start: dict[str, Any]

    @property
    def raw_uid(self) -> str:
        return str(self.raw_start["uid"])


@dataclass(frozen=True, eq=False)
class ImageSpec:
    """The raw run's image field and its shape (H, W), from the descriptor (None: unknown)."""

    raw_uid: str
    image_key: str
    shape: tuple[int, int] | None


@dataclass(frozen=True, eq=False)
class Frames:
    """Frames of a raw run, one array: ``frames`` (B, H, W), ``seq_nums`` (B,) int64."""

    raw_uid: str
    seq_nums: np.ndarray
    frames: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq_nums", np.asarray(self.seq_nums, np.int64).reshape(-1))
        object.__setattr__(self, "frames", np.asarray(self.frames))
        if len(self.frames) != len(self.seq_nums):
            raise ValueError(f"Frames: {len(self.frames)} frames but {len(self.seq_nums)} seq_nums")


@dataclass(frozen=True, eq=False)
class ExternalFrames:
    """Frames ``start:stop`` of an HDF5 dataset written by the detector (StreamDatum)."""

    raw_uid: str
    path: Path
    dataset: str
    start: int
    stop: int
    seq_start: int

    @property
    def seq_nums(self) -> np.ndarray:
        return np.arange(self.seq_start, self.seq_start + self.stop - self.start, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class RunStop:
    """A raw run ended: its stop document, the seq_nums dropped on a full queue, a note."""

    raw_uid: str
    raw_stop: dict[str, Any]
    dropped: tuple[int, ...] = ()
    note: str = ""


@dataclass(frozen=True, eq=False)
class Sync:
    """Reconstruct everything queued so far, then set ``done``."""

    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, eq=False)
class Quit:
    """Reconstruct everything queued so far, then end the worker thread."""


WorkItem = RunStart | ImageSpec | Frames | ExternalFrames | RunStop | Sync | Quit
