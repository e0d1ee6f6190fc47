"""The derived run of one raw run: documents from ``event_model.compose_run``, result arrays
appended to one HDF5 file in batches and referenced by StreamResource/StreamDatum ranges."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from event_model import compose_run

from .. import __version__
from ..fourier import FFT_CONVENTION
from ..results import (
    ARRAY_DTYPES,
    CHI2_SUMMARY,
    COUNTS,
    DERIVED_KIND,
    HINTS,
    INHERITED_START_KEYS,
    KIND,
    PARENT_UID,
    STREAM,
    ResultRows,
    data_keys,
    row_shapes,
    status_counts,
)

__all__ = ["DerivedRun", "Emit"]

Emit = Callable[[str, Any], Any]


def hdf5_stream_resources(bundle, emit: Emit, path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, Callable]:
    """Emit one StreamResource per dataset ``key`` of the HDF5 file ``path`` (rows of
    ``shapes[key]``, one chunk a row) for the run ``bundle``; returns each key's
    ``compose_stream_datum``."""
    datum = {}
    for key, shape in shapes.items():
        resource = bundle.compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=path.as_uri(),
            data_key=key,
            parameters={"dataset": key, "chunk_shape": [1, *shape], "swmr": False},
        )
        emit("stream_resource", resource.stream_resource_doc)
        datum[key] = resource.compose_stream_datum
    return datum


class DerivedRun:
    """Compose and emit the derived run of one raw run.

    ``start`` is emitted at construction; the descriptor, the HDF5 file and one
    StreamResource per image key at the first :meth:`append` (when the image shape is known);
    each :meth:`append` writes its rows to HDF5, then one EventPage of the scalars and one
    StreamDatum per image key over the rows' range; :meth:`close` emits stop with the counts.

    Parameters
    ----------
    raw_start : dict
        The raw run's start document (``uid`` becomes ``parent_uid``).
    emit : callable(name, doc)
        Where documents go (a SpoolingWriter, a list's append...).
    results_dir : path
        The HDF5 file ``<derived uid>.h5`` is created there.
    metadata : dict
        Extra start metadata: ``reconstructor`` (``Reconstructor.provenance()``), ``live``...
    """

    def __init__(self, raw_start: dict, emit: Emit, results_dir: str | Path, metadata: dict | None = None):
        self._bundle: Any
        self.emit = emit
        self.raw_uid = raw_start["uid"]
        md = {
            PARENT_UID: self.raw_uid,
            KIND: DERIVED_KIND,
            "plan_name": DERIVED_KIND,
            "software": {"cdi_beamline": __version__},
            "fft_convention": FFT_CONVENTION,
            **(metadata or {}),
        }
        md.update({key: raw_start[key] for key in INHERITED_START_KEYS if key in raw_start})
        self._bundle = compose_run(metadata=md)
        self.start = self._bundle.start_doc
        self.uid = self.start["uid"]
        self.path = Path(results_dir).resolve() / f"{self.uid}.h5"
        self.status: list[str] = []
        self.chi2: list[float] = []
        self.shape: tuple[int, int] | None = None
        self._desc: Any = None
        self._datum: dict[str, Any] = {}
        self._n = 0
        self.emit("start", self.start)

    def _open(self, shape: tuple[int, int]) -> None:
        self._desc = self._bundle.compose_descriptor(name=STREAM, data_keys=data_keys(shape), hints=HINTS)
        self.emit("descriptor", self._desc.descriptor_doc)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shapes = row_shapes(shape)
        with h5py.File(self.path, "w", libver="latest", locking=False) as f:
            for key, dt in ARRAY_DTYPES.items():
                s = shapes[key]
                f.create_dataset(key, shape=(0, *s), maxshape=(None, *s), dtype=dt, chunks=(1, *s))
        self._datum.update(
            hdf5_stream_resources(self._bundle, self.emit, self.path, {k: shapes[k] for k in ARRAY_DTYPES})
        )
        self.shape = (int(shape[0]), int(shape[1]))

    def append(self, rows: ResultRows) -> None:
        """Write rows (images of the run's shape; the first rows fix it)."""
        b = len(rows)
        if b == 0:
            return
        if self._desc is None:
            self._open(rows.shape)
        if rows.shape != self.shape:
            raise ValueError(f"result shape {rows.shape} differs from the run's {self.shape}")
        n0 = self._n
        with h5py.File(self.path, "a", locking=False) as f:
            for key, arr in rows.arrays().items():
                ds = f[key]
                ds.resize(n0 + b, axis=0)
                ds[n0 : n0 + b] = arr
        now = time.time()
        data = rows.event_data()
        page = self._desc.compose_event_page(data=data, timestamps={k: [now] * b for k in data}, time=[now] * b)
        self.emit("event_page", page)
        seq = {"start": page["seq_num"][0], "stop": page["seq_num"][-1] + 1}
        for key in ARRAY_DTYPES:
            self.emit(
                "stream_datum",
                self._datum[key](
                    indices={"start": n0, "stop": n0 + b}, seq_nums=seq, descriptor=self._desc.descriptor_doc
                ),
            )
        self._n += b
        self.status += rows.status.tolist()
        self.chi2 += rows.chi2[rows.status == "ok"].tolist()

    def close(
        self, exit_status: str = "success", reason: str = "", counts: dict | None = None, metadata: dict | None = None
    ) -> dict:
        """Emit the stop document; ``counts`` (received...) are recorded in it beside the rows',
        ``metadata`` (e.g. the preprocessing record with the run's ROI) as stop keys."""
        all_counts = {**status_counts(self.status), **(counts or {})}
        status = exit_status if exit_status in ("success", "abort", "fail") else "fail"
        stop: dict[str, Any] = dict(self._bundle.compose_stop(exit_status=status, reason=reason, validate=False))
        stop.update(metadata or {})
        stop[COUNTS] = {k: int(v) for k, v in all_counts.items()}
        if self.chi2:
            stop[CHI2_SUMMARY] = {"mean": float(np.mean(self.chi2)), "max": float(np.max(self.chi2))}
        self.emit("stop", stop)
        return stop
