"""Reading diffraction patterns, masks and supports from files.

``read_array("scan.h5:/entry/data/data")`` — a path, optionally followed by ``:`` and the
dataset inside the file (HDF5 dataset path, or NPZ key). Formats by extension:
``.npy``, ``.npz`` (the only array, or ``data``, or ``file.npz:key``), ``.h5``/``.hdf5``/
``.nxs`` (dataset required unless the file holds exactly one dataset), ``.tif``/``.tiff``,
``.edf`` and whatever else fabio reads (multi-frame files become a stack); a whole ``.cxi``
file gives its detector data (:func:`cdi_beamline.cxi.read_cxi`).

``read_mask`` reads a detector mask as bool, True = measured, turning CXI's polarity
(bits set = bad, :func:`cdi_beamline.cxi.measured_pixels`) around.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import CDIValueError

__all__ = [
    "CXI_MASK",
    "as_patterns",
    "file_sha256",
    "mask_polarity",
    "read_array",
    "read_mask",
    "read_patterns",
    "split_dataset_path",
]

_HDF5 = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")
#: Where a CXI file keeps its detector's pixel mask (nonzero bits = bad pixel).
CXI_MASK = "entry_1/instrument_1/detector_1/mask"
_CXI_MASK_PATH = re.compile(r"^/?entry_\d+/instrument_\d+/detector_\d+/mask$")


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
        if ext == ".cxi" and dataset is None:
            return _read_cxi_data(path)
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


def _read_cxi_data(path: Path) -> np.ndarray:
    from .cxi import read_cxi

    data = read_cxi(path).data
    if data is None:
        raise CDIValueError(f"{path} holds no detector data (entry_1/instrument_1/detector_1/data or a real data_1)")
    return data


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
    return as_patterns(read_array(spec), spec)


def as_patterns(arr: np.ndarray, spec: str | Path) -> np.ndarray:
    """What :func:`read_patterns` makes of the array ``arr`` read from ``spec`` (named in errors)."""
    arr = np.asarray(arr)
    if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise CDIValueError(f"{spec}: patterns must be real numbers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise CDIValueError(f"{spec}: expected one pattern (H, W) or a stack (N, H, W), got shape {arr.shape}")
    return arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32, copy=False)


def read_mask(spec: str | Path, nonzero: Literal["measured", "bad"] | None = None) -> np.ndarray:
    """A detector mask as bool, True = measured pixel.

    ``nonzero`` says what the file's nonzero pixels mean; None decides by format: a CXI
    mask (a ``.cxi`` file, whose mask is read from :data:`CXI_MASK` unless a dataset is
    named, or any dataset ``entry_N/instrument_N/detector_N/mask``) marks bad pixels,
    anything else measured ones.

    Raises
    ------
    CDIValueError
        what :func:`read_array` raises, or the mask is not real numbers / booleans.
    """
    path, dataset = _mask_dataset(spec)
    nonzero = nonzero or mask_polarity(spec)
    arr = np.asarray(read_array(path if dataset is None else f"{path}:{dataset}"))
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise CDIValueError(f"{spec}: a mask must hold numbers or booleans, got dtype {arr.dtype}")
    if nonzero == "bad" and mask_polarity(spec) == "bad":
        from .cxi import measured_pixels

        return measured_pixels(arr)
    return (arr == 0) if nonzero == "bad" else (arr != 0)


def mask_polarity(spec: str | Path) -> Literal["measured", "bad"]:
    """What a nonzero pixel of the mask ``spec`` means by its format: ``bad`` for CXI, else ``measured``."""
    dataset = _mask_dataset(spec)[1]
    return "bad" if dataset is not None and _CXI_MASK_PATH.match(dataset) else "measured"


def _mask_dataset(spec: str | Path) -> tuple[Path, str | None]:
    path, dataset = split_dataset_path(spec)
    if dataset is None and path.suffix.lower() == ".cxi":
        dataset = CXI_MASK
    return path, dataset


def file_sha256(spec: str | Path) -> str:
    """sha256 (hex) of the file that ``spec`` names (the whole file, not only its dataset)."""
    digest = hashlib.sha256()
    with open(split_dataset_path(spec)[0], "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
