"""The HDF5 layout of simulated data sets (``cdi-beamline simulate``).

Datasets: ``modulus`` (N, 64, 64) float32, ``amplitude`` and ``phase`` (N, 32, 32) float32
(radians), ``support`` (N, 32, 32) bool, ``mask`` (N, 64, 64) bool (only when pixels are
masked), ``params/<name>`` per-pattern generator parameters (N,) float32 and
``params/rotation`` (N, 3, 3). Root attributes: ``config`` (SimulationConfig JSON),
``version`` (package), ``fft_convention``, ``seed``, ``n``, ``generator``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..config.simulation import OBJECT_SIZE, PATTERN_SIZE, SimulationConfig
from ..errors import CDIValueError

__all__ = ["H5Writer", "write_h5", "read_h5", "read_h5_metadata"]

#: Per-pattern shape and dtype of each main dataset.
LAYOUT = {
    "modulus": ((PATTERN_SIZE, PATTERN_SIZE), np.float32),
    "amplitude": ((OBJECT_SIZE, OBJECT_SIZE), np.float32),
    "phase": ((OBJECT_SIZE, OBJECT_SIZE), np.float32),
    "support": ((OBJECT_SIZE, OBJECT_SIZE), np.bool_),
    "mask": ((PATTERN_SIZE, PATTERN_SIZE), np.bool_),
}
GENERATOR = "cdi_beamline.physics.simulate_batch"


def _arrays(batch_or_arrays) -> dict[str, np.ndarray]:
    if hasattr(batch_or_arrays, "to_numpy"):
        return batch_or_arrays.to_numpy()
    if isinstance(batch_or_arrays, Mapping):
        return {k: np.asarray(v) for k, v in batch_or_arrays.items()}
    raise TypeError(f"expected a SimulatedBatch or a mapping of arrays, got {type(batch_or_arrays).__name__}")


class H5Writer:
    """Write a data set of ``n`` patterns chunk by chunk (``append``), then ``close``.

    Parameters
    ----------
    path : str or Path
        Output file (overwritten).
    n : int
        Total number of patterns that will be appended.
    config : SimulationConfig or None
        Stored as the ``config`` attribute (JSON); None when the generator is unknown.
    seed : int or None
        Stored as the ``seed`` attribute (-1 when None).
    """

    def __init__(self, path, n: int, config: SimulationConfig | None = None, *, seed: int | None = None):
        import h5py

        from .. import __version__
        from ..fourier import FFT_CONVENTION

        if n < 1:
            raise CDIValueError(f"n: the number of patterns must be >= 1, got {n}")
        self.path, self.n, self._filled = Path(path), int(n), 0
        self._names: set[str] = set()
        self._file = h5py.File(self.path, "w")
        attrs = self._file.attrs
        attrs["config"] = json.dumps(None if config is None else config.model_dump(mode="json"))
        attrs["version"] = __version__
        attrs["fft_convention"] = FFT_CONVENTION
        attrs["seed"] = -1 if seed is None else int(seed)
        attrs["n"] = self.n
        attrs["generator"] = GENERATOR

    def append(self, batch_or_arrays) -> None:
        """Write the next patterns (a SimulatedBatch or a dict like ``SimulatedBatch.to_numpy()``)."""
        arrays = _arrays(batch_or_arrays)
        missing = [k for k in ("modulus", "amplitude", "phase", "support") if k not in arrays]
        if missing:
            raise CDIValueError(f"missing datasets {missing}")
        m = arrays["modulus"].shape[0]
        if self._filled + m > self.n:
            raise CDIValueError(f"too many patterns: {self._filled} + {m} > n = {self.n}")
        if self._filled and set(arrays) != self._names:
            raise CDIValueError(f"datasets changed between chunks: {sorted(self._names)} -> {sorted(arrays)}")
        for name, arr in arrays.items():
            known = self._file[name].shape[1:] if self._filled else LAYOUT.get(name, (arr.shape[1:],))[0]
            if arr.shape != (m, *known):
                raise CDIValueError(f"{name}: expected shape {(m, *known)}, got {arr.shape}")
        if not self._filled:
            for name, arr in arrays.items():
                dtype = LAYOUT[name][1] if name in LAYOUT else np.float32
                chunk = (max(1, min(self.n, 64 if arr.ndim > 1 else 4096)), *arr.shape[1:])
                self._file.create_dataset(name, shape=(self.n, *arr.shape[1:]), dtype=dtype, chunks=chunk)
            self._names = set(arrays)
        for name, arr in arrays.items():
            self._file[name][self._filled : self._filled + m] = arr
        self._filled += m

    def close(self) -> None:
        """Close the file; raises if fewer than ``n`` patterns were appended."""
        if self._file:
            filled = self._filled
            self._file.close()
            if filled != self.n:
                raise CDIValueError(f"only {filled} of n = {self.n} patterns were written to {self.path}")

    def __enter__(self) -> H5Writer:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._file:
            self._file.close()


def write_h5(path, batch_or_arrays, config: SimulationConfig | None = None, *, seed: int | None = None) -> Path:
    """Write one SimulatedBatch (or its ``to_numpy()`` dict) to ``path``; returns the path."""
    arrays = _arrays(batch_or_arrays)
    if "modulus" not in arrays:
        raise CDIValueError("missing datasets ['modulus']")
    try:
        with H5Writer(path, arrays["modulus"].shape[0], config, seed=seed) as w:
            w.append(arrays)
    except ValueError:
        Path(path).unlink(missing_ok=True)
        raise
    return Path(path)


def read_h5(path, *, start: int = 0, stop: int | None = None, params: bool = True) -> dict[str, np.ndarray]:
    """Read patterns ``start:stop`` of a simulated data set.

    Returns
    -------
    dict
        ``modulus`` (N, 64, 64), ``amplitude``, ``phase`` (N, 32, 32), ``support``, ``mask``
        when present, and ``params/<name>`` when ``params``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CDIValueError(f"no such simulated data set: {path}")
    with h5py.File(path, "r") as f:
        if "modulus" not in f:
            raise CDIValueError(f"{path}: not a simulated data set (no 'modulus' dataset)")
        out = {k: f[k][start:stop] for k in LAYOUT if k in f}
        if params and "params" in f:
            out.update({f"params/{k}": v[start:stop] for k, v in f["params"].items()})
    return out


def read_h5_metadata(path) -> dict:
    """Root attributes of a simulated data set: config (dict), version, fft_convention, seed, n."""
    import h5py

    with h5py.File(path, "r") as f:
        meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    meta["config"] = json.loads(meta["config"])
    return meta
