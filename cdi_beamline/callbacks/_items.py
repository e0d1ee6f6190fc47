"""The work items the callback (RunEngine thread) puts on the worker's queue: typed, frozen."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ExternalFrames", "Frames", "ImageSpec", "Quit", "RunStart", "RunStop", "Sync", "Unreadable", "WorkItem"]


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
    """Frames a detector wrote to file(s), announced by one StreamDatum: the (normalized)
    ``stream_resource`` document, the descriptor's ``data_key`` entry of its frames and the
    ``stream_datum`` document (rows ``indices``, raw ``seq_nums``)."""

    raw_uid: str
    stream_resource: dict[str, Any]
    data_key: dict[str, Any]
    stream_datum: dict[str, Any]

    @property
    def seq_nums(self) -> np.ndarray:
        """(n,) int64: the datum's seq_nums, or rows + 1 where it gives none."""
        seq, rows = self.stream_datum["seq_nums"], self.stream_datum["indices"]
        n = int(rows["stop"]) - int(rows["start"])
        first = int(seq["start"]) if int(seq["stop"]) > int(seq["start"]) else int(rows["start"]) + 1
        return np.arange(first, first + n, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Unreadable:
    """Frames announced in the raw run that cannot be reconstructed: recorded ``bad`` with ``reason``."""

    raw_uid: str
    seq_nums: np.ndarray
    reason: str


@dataclass(frozen=True, eq=False)
class RunStop:
    """A raw run ended: its stop document, the seq_nums dropped on a full queue, a note, and
    the rocking motor's reading of each event (seq_num -> value) when it is a rocking scan."""

    raw_uid: str
    raw_stop: dict[str, Any]
    dropped: tuple[int, ...] = ()
    note: str = ""
    positions: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Sync:
    """Reconstruct everything queued so far, then set ``done``."""

    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, eq=False)
class Quit:
    """Reconstruct everything queued so far, then end the worker thread."""


WorkItem = RunStart | ImageSpec | Frames | ExternalFrames | Unreadable | RunStop | Sync | Quit
