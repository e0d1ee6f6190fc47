"""Reading diffraction patterns, masks and supports from files.

``read_array("scan.h5:/entry/data/data")`` — a path, optionally followed by ``:`` and the
dataset inside the file (HDF5 dataset path, or NPZ key). Formats by extension:
``.npy``, ``.npz`` (the only array, or ``data``, or ``file.npz:key``), ``.h5``/``.hdf5``/
``.nxs`` (dataset required unless the file holds exactly one dataset), ``.tif``/``.tiff``,
``.edf`` and whatever else fabio reads (multi-frame files become a stack).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import CDIValueError

__all__ = ["read_array", "read_patterns", "split_dataset_path"]

_HDF5 = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")


def split_dataset_path(spec: str | Path) -> tuple[Path, str | None]:
    """``"a/b.h5:/entry/data"`` -> (Path("a/b.h5"), "/entry/data"); no dataset -> None."""
    text = str(spec)
    for ext in (*_HDF5, ".npz"):
        key = ext + ":"
        pos = text.lower().find(key)
        if pos >= 0:
            return Path(text[: pos + len(ext)]), text[pos + len(key) :] or None
    return Path(text), None


def read_array(spec: str | Path) -> np.ndarray:
    """Read one array (any rank) from ``spec``.

    Raises
    ------
    CDIValueError
        one line naming the file: missing, unreadable, empty or corrupt, no such dataset,
        or a choice of dataset needed.
    """
    path, dataset = split_dataset_path(spec)
    if not path.is_file():
        raise CDIValueError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise CDIValueError(f"{path} is empty (0 bytes)")
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            return np.load(path, allow_pickle=False)
        if ext == ".npz":
            return _read_npz(path, dataset)
        if ext in _HDF5:
            return _read_hdf5(path, dataset)
    except CDIValueError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # numpy's and h5py's for corrupt files
        raise CDIValueError(f"cannot read {path} as {ext[1:]}: {_one_line(exc)}") from exc
    import fabio

    try:
        img = fabio.open(str(path))
        if img.nframes > 1:
            return np.stack([img.getframe(i).data for i in range(img.nframes)])
        return np.asarray(img.data)
    except Exception as exc:  # fabio raises many kinds for unknown formats
        raise CDIValueError(f"cannot read {path} (extension {ext!r}): {_one_line(exc)}") from exc


def _read_npz(path: Path, dataset: str | None) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if dataset is None:
            if len(keys) == 1:
                dataset = keys[0]
            elif "data" in keys:
                dataset = "data"
            else:
                raise CDIValueError(f"{path} holds arrays {keys}: choose one with {path}:NAME")
        if dataset not in keys:
            raise CDIValueError(f"{path} has no array {dataset!r}; it holds {keys}")
        return z[dataset]


def _read_hdf5(path: Path, dataset: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if dataset is None:
            found: list[str] = []
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
            if len(found) != 1:
                raise CDIValueError(f"{path} holds {len(found)} datasets: give one as {path}:/path/to/dataset")
            dataset = found[0]
        node = f.get(dataset)
        if not isinstance(node, h5py.Dataset):
            raise CDIValueError(f"{path} has no dataset {dataset!r}")
        return node[()]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_patterns(spec: str | Path) -> np.ndarray:
    """Patterns (N, H, W) (one pattern becomes N=1); refuses other ranks. Integer counts keep
    their dtype (its maximum marks saturated pixels: :func:`cdi_beamline.frames.saturation_level`),
    other reals become float32."""
    arr = np.asarray(read_array(spec))
    if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise CDIValueError(f"{spec}: patterns must be real numbers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise CDIValueError(f"{spec}: expected one pattern (H, W) or a stack (N, H, W), got shape {arr.shape}")
    return arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32, copy=False)
