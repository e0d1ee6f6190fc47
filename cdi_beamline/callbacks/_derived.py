"""The derived run of one raw run: documents from ``event_model.compose_run``, result arrays
appended to one HDF5 file in batches and referenced by StreamResource/StreamDatum ranges."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from event_model import compose_run

from .. import __version__
from ..fourier import FFT_CONVENTION
from ..store import DERIVED_KIND

__all__ = ["DerivedRun", "ResultRows"]

Emit = Callable[[str, dict], Any]

# external arrays: (data key, numpy dtype in the file)
_ARRAYS = (("amplitude", "<f4"), ("phase", "<f4"), ("support", "|u1"))


class ResultRows:
    """A batch of per-frame results, numpy, one row per raw frame.

    Attributes
    ----------
    raw_seq_num : (B,) int
    amplitude, phase : (B, H, W) float32
    support : (B, H, W) bool
    chi2 : (B,) float64, nan where no reconstruction
    status, reason : list[str] of length B (``"ok" | "bad" | "error" | "dropped"``)
    """

    def __init__(self, raw_seq_num, amplitude, phase, support, chi2, status, reason):
        self.raw_seq_num = np.asarray(raw_seq_num, dtype=np.int64)
        self.amplitude = np.asarray(amplitude, dtype=np.float32)
        self.phase = np.asarray(phase, dtype=np.float32)
        self.support = np.asarray(support, dtype=bool)
        self.chi2 = np.asarray(chi2, dtype=np.float64)
        self.status = [str(s) for s in status]
        self.reason = [str(r) for r in reason]
        b = len(self.raw_seq_num)
        if not (
            len(self.amplitude)
            == len(self.phase)
            == len(self.support)
            == len(self.chi2)
            == len(self.status)
            == len(self.reason)
            == b
        ):
            raise ValueError("ResultRows: every field needs one row per frame")

    def __len__(self) -> int:
        return len(self.raw_seq_num)

    @classmethod
    def failed(cls, raw_seq_num, shape: tuple[int, int], status: str, reason: str) -> ResultRows:
        """Rows for frames without a reconstruction: NaN images, empty support, NaN chi²."""
        b = len(raw_seq_num)
        nan = np.full((b, *shape), np.nan, np.float32)
        return cls(
            raw_seq_num, nan, nan.copy(), np.zeros((b, *shape), bool), np.full(b, np.nan), [status] * b, [reason] * b
        )

    @classmethod
    def concat(cls, parts: list[ResultRows]) -> ResultRows:
        return cls(
            np.concatenate([p.raw_seq_num for p in parts]),
            np.concatenate([p.amplitude for p in parts]),
            np.concatenate([p.phase for p in parts]),
            np.concatenate([p.support for p in parts]),
            np.concatenate([p.chi2 for p in parts]),
            [s for p in parts for s in p.status],
            [r for p in parts for r in p.reason],
        )


class DerivedRun:
    """Compose and emit the derived run of one raw run.

    ``start`` is emitted at construction; the descriptor, the HDF5 file and the three
    StreamResources at the first :meth:`append` (when the image shape is known); each
    :meth:`append` writes its rows to HDF5, then one EventPage (chi2, raw_seq_num, status,
    reason) and one StreamDatum per array over the rows' range; :meth:`close` emits stop
    with the counts.

    Parameters
    ----------
    raw_start : dict
        The raw run's start document (``uid`` becomes ``parent_uid``).
    emit : callable(name, doc)
        Where documents go (a TiledWriter, a SpoolingWriter, a list's append...).
    results_dir : path
        The HDF5 file ``<derived uid>.h5`` is created there.
    metadata : dict
        Extra start metadata: ``reconstructor`` (``Reconstructor.describe()``), ``live``...
    """

    def __init__(self, raw_start: dict, emit: Emit, results_dir: str | Path, metadata: dict | None = None):
        self.emit = emit
        self.raw_uid = raw_start["uid"]
        md = {
            "parent_uid": self.raw_uid,
            "cdi_kind": DERIVED_KIND,
            "plan_name": "cdi_reconstruction",
            "software": {"cdi_beamline": __version__},
            "fft_convention": FFT_CONVENTION,
            **(metadata or {}),
        }
        if "scan_id" in raw_start:
            md["scan_id"] = raw_start["scan_id"]
        self._bundle = compose_run(metadata=md)
        self.start = self._bundle.start_doc
        self.uid = self.start["uid"]
        self.path = Path(results_dir).resolve() / f"{self.uid}.h5"
        self.counts: Counter = Counter()
        self.chi2: list[float] = []
        self._desc = None
        self._datum: dict[str, Any] = {}
        self._n = 0
        self.emit("start", self.start)

    def _open(self, shape: tuple[int, int]) -> None:
        h, w = shape
        data_keys = {
            key: {"source": "cdi_beamline", "dtype": "array", "dtype_numpy": dt, "shape": [h, w], "external": "STREAM:"}
            for key, dt in _ARRAYS
        }
        data_keys.update(
            chi2={"source": "cdi_beamline", "dtype": "number", "shape": [], "dtype_numpy": "<f8"},
            raw_seq_num={"source": "cdi_beamline", "dtype": "integer", "shape": [], "dtype_numpy": "<i8"},
            status={"source": "cdi_beamline", "dtype": "string", "shape": []},
            reason={"source": "cdi_beamline", "dtype": "string", "shape": []},
        )
        self._desc = self._bundle.compose_descriptor(
            name="primary",
            data_keys=data_keys,
            hints={"cdi": {"fields": ["amplitude", "phase", "chi2"]}},
        )
        self.emit("descriptor", self._desc.descriptor_doc)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.path, "w", libver="latest", locking=False) as f:
            for key, dt in _ARRAYS:
                f.create_dataset(key, shape=(0, h, w), maxshape=(None, h, w), dtype=dt, chunks=(1, h, w))
        for key, _ in _ARRAYS:
            bundle = self._bundle.compose_stream_resource(
                mimetype="application/x-hdf5",
                uri=self.path.as_uri(),
                data_key=key,
                parameters={"dataset": key, "chunk_shape": [1, h, w], "swmr": False},
            )
            self.emit("stream_resource", bundle.stream_resource_doc)
            self._datum[key] = bundle.compose_stream_datum
        self.shape = (h, w)

    def append(self, rows: ResultRows) -> None:
        """Write a batch of results (all of one image shape)."""
        b = len(rows)
        if b == 0:
            return
        if self._desc is None:
            self._open(rows.amplitude.shape[-2:])
        if rows.amplitude.shape[-2:] != self.shape:
            raise ValueError(f"result shape {rows.amplitude.shape[-2:]} differs from the run's {self.shape}")
        n0 = self._n
        with h5py.File(self.path, "a", locking=False) as f:
            for key, arr in (
                ("amplitude", rows.amplitude),
                ("phase", rows.phase),
                ("support", rows.support.astype(np.uint8)),
            ):
                ds = f[key]
                ds.resize(n0 + b, axis=0)
                ds[n0 : n0 + b] = arr
        now = time.time()
        data = {
            "chi2": [float(c) for c in rows.chi2],
            "raw_seq_num": [int(s) for s in rows.raw_seq_num],
            "status": list(rows.status),
            "reason": list(rows.reason),
        }
        page = self._desc.compose_event_page(data=data, timestamps={k: [now] * b for k in data}, time=[now] * b)
        self.emit("event_page", page)
        seq = {"start": page["seq_num"][0], "stop": page["seq_num"][-1] + 1}
        for key, _ in _ARRAYS:
            self.emit(
                "stream_datum",
                self._datum[key](
                    indices={"start": n0, "stop": n0 + b}, seq_nums=seq, descriptor=self._desc.descriptor_doc
                ),
            )
        self._n += b
        for s, c in zip(rows.status, rows.chi2):
            self.counts["reconstructed" if s == "ok" else s] += 1
            if s == "ok":
                self.chi2.append(float(c))

    def close(self, exit_status: str = "success", reason: str = "", counts: dict | None = None) -> dict:
        """Emit the stop document; ``counts`` (received, dropped, errors...) are recorded in it."""
        all_counts = {"reconstructed": 0, "bad": 0, "error": 0, "dropped": 0, **self.counts, **(counts or {})}
        all_counts["flagged"] = all_counts["bad"] + all_counts["error"]
        stop = self._bundle.compose_stop(exit_status=exit_status, reason=reason, validate=False)
        stop["cdi_counts"] = {k: int(v) for k, v in all_counts.items()}
        if self.chi2:
            stop["cdi_chi2"] = {"mean": float(np.mean(self.chi2)), "max": float(np.max(self.chi2))}
        self.emit("stop", stop)
        return stop
