"""CXI 1.6 files: diffraction data with its detector mask in, reconstructions out.

CXI is the HDF5 layout of the Coherent X-ray Imaging Data Bank (spec: github.com/cxidb/CXI,
``cxi_file_format.tex``), which PyNX writes and bcdi and PyNX read. :func:`write_cxi` writes,
paths from the file's root, units SI as CXI requires (angles in degrees)::

    cxi_version                                   160
    entry_1/program_name, start_time
    entry_1/instrument_1/source_1/energy          photon energy, J
    entry_1/instrument_1/beam_1/incident_energy   J;  incident_wavelength: m
    entry_1/instrument_1/detector_1/data          intensity (H, W), a stack (N, H, W) or (D, H, W)
    entry_1/instrument_1/detector_1/mask          uint32 CXI pixel bits, 0 = good pixel
    entry_1/instrument_1/detector_1/distance      m;  x_pixel_size, y_pixel_size: m
    entry_1/instrument_1/detector_1/<angle>       degree (e.g. delta, gamma), units attribute
    entry_1/image_1/data                          complex object: (H, W) or a stack (N, H, W)
                                                  (dimensionality 2); (D, H, W) or (N, D, H, W) (3)
    entry_1/image_1/support                       uint8 0/1, the object's shape
    entry_1/image_1/mask                          uint32, CXI_PIXEL_INSIDE_SUPPORT inside the support
    entry_1/image_1/frame_index                   (N,) of a stack; data's ``axes`` = "frame_index:y:x"
    entry_1/image_1/is_fft_shifted = 0, data_space = "real", data_type = "electron density",
                                                  dimensionality = 2 | 3
    entry_1/image_1/instrument_1                  soft link to entry_1/instrument_1 (PyNX's place)
    entry_1/image_1/process_1/                    program, version, command, date; note_1: the
                                                  configuration (JSON); results/chi2 (N,) or ()
    entry_1/data_1/data                           soft link to image_1/data, or to the detector data
                                                  in a file without an object
    entry_1/data_2/data                           soft link to the detector data beside an object

A stack of 2D reconstructions is one stacked ``image_1`` (a CXI "scan" whose first axis is the
frame, named by the ``axes`` attribute), as PyNX stores its solutions and modes; a 3D object is
one volume. ``entry_1/data_1/data`` is thus the reconstruction, where bcdi and PyNX look for it.

Masks: inside the package a mask is bool, True = measured pixel. CXI marks properties of
pixels with bits, 0 = a good pixel. Written: a measured pixel is 0, an unmeasured one
:data:`PIXEL_IS_INVALID` (our masks do not say why a pixel is unmeasured). Read: a pixel is
measured when none of its bits is set but :data:`PIXEL_HAS_SIGNAL` (signal above background,
not a defect); invalid, saturated, hot, dead, shadowed, bad, missing, noisy pixels and bits
without a standard meaning are unmeasured, as PyNX reads them (> 0 = bad).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import CDIValueError

__all__ = [
    "CXI_VERSION",
    "GEOMETRY_FIELDS",
    "PIXEL_HAS_SIGNAL",
    "PIXEL_INSIDE_SUPPORT",
    "PIXEL_IS_INVALID",
    "CXIData",
    "cxi_mask",
    "measured_pixels",
    "read_cxi",
    "write_cxi",
]

CXI_VERSION = 160
"""``cxi_version`` written: CXI 1.6 (the version times 100)."""

PIXEL_IS_INVALID = 0x00000001
"""CXI mask bit: the pixel is invalid (how an unmeasured pixel of ours is written)."""
PIXEL_HAS_SIGNAL = 0x00001000
"""CXI mask bit: signal above background; the one bit that does not make a pixel unmeasured."""
PIXEL_INSIDE_SUPPORT = 0x00010000
"""CXI image mask bit: the pixel is inside the reconstruction's support."""

GEOMETRY_FIELDS: dict[str, str] = {
    "energy_kev": "photon energy, keV (stored as source_1/energy in J)",
    "distance_m": "sample-detector distance, m (detector_1/distance)",
    "pixel_size_m": "detector pixel size (y, x) or one number, m (detector_1/y_pixel_size, x_pixel_size)",
    "rocking_axis": "the rocking scan's rotation axis, a name such as y or x (sample_1/rocking_axis)",
}
"""Geometry keys of :func:`write_cxi` / :attr:`CXIData.geometry`; besides these, any key
``<name>_deg`` is an angle (a number or an array, degrees) stored as ``detector_1/<name>``."""

ENTRY = "entry_1"
INSTRUMENT = f"{ENTRY}/instrument_1"
DETECTOR = f"{INSTRUMENT}/detector_1"
IMAGE = f"{ENTRY}/image_1"
PROCESS = f"{IMAGE}/process_1"

_ELECTRON_VOLT = 1.602176634e-19  # J
_HC = 6.62607015e-34 * 299792458.0  # J m
_DEGREE = "degree"


@dataclass(frozen=True, eq=False)
class CXIData:
    """What a CXI file holds, whichever parts exist (None otherwise).

    Attributes
    ----------
    data : detector data (intensity) as stored: (H, W), (N, H, W) or (D, H, W)
    mask : bool like ``data`` (or its last two axes), True = measured pixel
    object : complex, (H, W) / (N, H, W) for ``ndim`` 2, (D, H, W) / (N, D, H, W) for 3
    support : bool, ``object``'s shape
    chi2 : float64, (N,) for a stack, () for one object
    ndim : the object's spatial dimensions (``image_1/dimensionality``, else ``object.ndim``)
    geometry : the :data:`GEOMETRY_FIELDS` and ``<angle>_deg`` found
    process : ``program``, ``version``, ``command``, ``date``, ``configuration`` (parsed JSON) found
    frame_index : (N,) int64 of a stack of objects
    """

    data: np.ndarray | None = None
    mask: np.ndarray | None = None
    object: np.ndarray | None = None
    support: np.ndarray | None = None
    chi2: np.ndarray | None = None
    ndim: int | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    process: dict[str, Any] = field(default_factory=dict)
    frame_index: np.ndarray | None = None


def cxi_mask(measured: np.ndarray) -> np.ndarray:
    """Our mask (True = measured) -> a CXI pixel mask (uint32: 0, or :data:`PIXEL_IS_INVALID`)."""
    return np.where(np.asarray(measured, bool), 0, PIXEL_IS_INVALID).astype(np.uint32)


def measured_pixels(bits: np.ndarray) -> np.ndarray:
    """A CXI pixel mask -> ours: True where no bit but :data:`PIXEL_HAS_SIGNAL` is set."""
    bits = np.asarray(bits)
    if bits.dtype == np.bool_:
        return ~bits
    if not np.issubdtype(bits.dtype, np.integer):
        if not np.issubdtype(bits.dtype, np.floating) or np.any(bits != np.round(bits)):
            raise CDIValueError(f"a CXI mask holds integer bits, got dtype {bits.dtype}")
        bits = bits.astype(np.int64)
    return (bits.astype(np.int64) & ~PIXEL_HAS_SIGNAL) == 0


def write_cxi(
    path: str | Path,
    *,
    data: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    object: np.ndarray | None = None,
    support: np.ndarray | None = None,
    chi2: np.ndarray | float | None = None,
    ndim: int = 2,
    frame_index: np.ndarray | None = None,
    geometry: Mapping[str, Any] | None = None,
    process: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
) -> None:
    """Write a CXI 1.6 file (the module's layout) at ``path`` (overwritten).

    Parameters
    ----------
    data : intensity (H, W), (N, H, W) or (D, H, W), stored as given (dtype kept)
    mask : bool, True = measured, ``data``'s shape or its last two axes (one detector mask)
    object : complex (*spatial) or a stack (N, *spatial); ``ndim`` = len(spatial), 2 or 3
    support : bool, ``object``'s shape
    chi2 : (N,) for a stack, a number for one object
    frame_index : (N,) of a stack: which input frame each object reconstructs
    geometry : :data:`GEOMETRY_FIELDS` and ``<angle>_deg`` keys (others refused)
    process : ``program``, ``version`` (default cdi-beamline and its version), ``command`` (default
        the process's command line), ``configuration`` (JSON-able: what ran)
    results : further per-object numbers stored beside chi2 in ``process_1/results``

    Raises
    ------
    CDIValueError
        nothing to write, shapes that disagree, a real object, an unknown geometry key.
    """
    import h5py

    if data is None and object is None:
        raise CDIValueError("write_cxi: give data and/or object")
    if ndim not in (2, 3):
        raise CDIValueError(f"write_cxi: ndim must be 2 or 3, got {ndim}")
    geometry = dict(geometry or {})
    unknown = [k for k in geometry if k not in GEOMETRY_FIELDS and not k.endswith("_deg")]
    if unknown:
        raise CDIValueError(
            f"write_cxi: unknown geometry field(s) {unknown}: expected {sorted(GEOMETRY_FIELDS)} or <angle>_deg"
        )
    if data is not None:
        data = np.asarray(data)
        if data.ndim not in (2, 3):
            raise CDIValueError(f"write_cxi: data must be (H, W), (N, H, W) or (D, H, W), got shape {data.shape}")
        if mask is not None and np.shape(mask) not in (data.shape, data.shape[-2:]):
            raise CDIValueError(f"write_cxi: mask shape {np.shape(mask)} does not match data {data.shape}")
    elif mask is not None:
        raise CDIValueError("write_cxi: a detector mask needs its data")
    if object is not None:
        object = np.asarray(object)
        if not np.iscomplexobj(object):
            raise CDIValueError(f"write_cxi: the object must be complex, got dtype {object.dtype}")
        if object.ndim not in (ndim, ndim + 1):
            raise CDIValueError(f"write_cxi: a {ndim}D object is {ndim}- or {ndim + 1}-dimensional, got {object.shape}")
        if support is not None and np.shape(support) != object.shape:
            raise CDIValueError(f"write_cxi: support shape {np.shape(support)} != object shape {object.shape}")
        stack = object.ndim == ndim + 1
        if chi2 is not None and np.shape(chi2) != (object.shape[:1] if stack else ()):
            raise CDIValueError(f"write_cxi: chi2 shape {np.shape(chi2)} does not fit object {object.shape}")
        if frame_index is not None and (not stack or np.shape(frame_index) != object.shape[:1]):
            raise CDIValueError(f"write_cxi: frame_index {np.shape(frame_index)} needs a stack of that many objects")
    elif support is not None or chi2 is not None:
        raise CDIValueError("write_cxi: support and chi2 belong to an object")

    process = {"program": "cdi-beamline", "version": __version__, **(process or {})}
    packed = {"compression": "gzip", "shuffle": True}
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "cdi-beamline"
        f.attrs["default"] = ENTRY
        f["cxi_version"] = np.int64(CXI_VERSION)
        f["number_of_entries"] = np.int64(1)
        entry = f.create_group(ENTRY)
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data_1"
        entry["program_name"] = f"{process['program']} {process['version']}"
        entry["start_time"] = _now()
        _write_instrument(f, geometry)
        if data is not None:
            det = f[DETECTOR]
            det.create_dataset("data", data=data, chunks=True, **packed)
            det["data"].attrs["axes"] = ("frame:" if data.ndim == 3 else "") + "y:x"
            if mask is not None:
                det.create_dataset("mask", data=cxi_mask(mask), chunks=True, **packed)
        if object is not None:
            image = entry.create_group("image_1")
            image.attrs["NX_class"] = "NXdata"
            image.attrs["signal"] = "data"
            axes = "z:y:x" if ndim == 3 else "y:x"
            image.create_dataset("data", data=object, chunks=True, **packed)
            if stack:
                image["data"].attrs["axes"] = f"frame_index:{axes}"
                image["frame_index"] = (
                    np.arange(len(object)) if frame_index is None else np.asarray(frame_index, np.int64)
                )
            else:
                image["data"].attrs["axes"] = axes
            if support is not None:
                inside = np.asarray(support, bool)
                image.create_dataset("support", data=inside.astype(np.uint8), chunks=True, **packed)
                bits = np.where(inside, PIXEL_INSIDE_SUPPORT, 0).astype(np.uint32)
                image.create_dataset("mask", data=bits, chunks=True, **packed)
            image["is_fft_shifted"] = np.int64(0)
            image["data_space"] = "real"
            image["data_type"] = "electron density"
            image["dimensionality"] = np.int64(ndim)
            image["instrument_1"] = h5py.SoftLink(f"/{INSTRUMENT}")
            _write_process(image.create_group("process_1"), process, chi2, results)
        _link_data(entry, "data_1", f"/{IMAGE}/data" if object is not None else f"/{DETECTOR}/data")
        if object is not None and data is not None:
            _link_data(entry, "data_2", f"/{DETECTOR}/data")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _link_data(entry, name: str, target: str) -> None:
    import h5py

    group = entry.create_group(name)
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "data"
    group["data"] = h5py.SoftLink(target)


def _write_instrument(f, geometry: Mapping[str, Any]) -> None:
    instrument = f.create_group(INSTRUMENT)
    instrument.attrs["NX_class"] = "NXinstrument"
    detector = instrument.create_group("detector_1")
    detector.attrs["NX_class"] = "NXdetector"
    if geometry.get("energy_kev") is not None:
        joule = float(geometry["energy_kev"]) * 1e3 * _ELECTRON_VOLT
        source = instrument.create_group("source_1")
        source.attrs["NX_class"] = "NXsource"
        source.attrs["note"] = "incident photon energy (CXI: source_1/energy)"
        _with_units(source, "energy", joule, "J")
        beam = instrument.create_group("beam_1")
        beam.attrs["NX_class"] = "NXbeam"
        _with_units(beam, "incident_energy", joule, "J")
        _with_units(beam, "incident_wavelength", _HC / joule, "m")
    if geometry.get("distance_m") is not None:
        _with_units(detector, "distance", float(geometry["distance_m"]), "m")
    if geometry.get("pixel_size_m") is not None:
        size = np.broadcast_to(np.asarray(geometry["pixel_size_m"], np.float64), (2,))
        _with_units(detector, "y_pixel_size", float(size[0]), "m")
        _with_units(detector, "x_pixel_size", float(size[1]), "m")
    if geometry.get("rocking_axis") is not None:
        f[f"{ENTRY}/sample_1/rocking_axis"] = str(geometry["rocking_axis"])
    for key, value in geometry.items():
        if key.endswith("_deg") and value is not None:
            _with_units(detector, key[: -len("_deg")], np.asarray(value, np.float64), _DEGREE)


def _with_units(group, name: str, value, units: str) -> None:
    group[name] = value
    group[name].attrs["units"] = units


def _write_process(group, process: Mapping[str, Any], chi2, results: Mapping[str, Any] | None) -> None:
    import sys

    group.attrs["NX_class"] = "NXprocess"
    group["program"] = str(process["program"])
    group["version"] = str(process["version"])
    group["command"] = str(process.get("command") or " ".join(sys.argv))
    group["date"] = _now()
    if process.get("configuration") is not None:
        note = group.create_group("note_1")
        note.attrs["NX_class"] = "NXnote"
        note["description"] = "configuration"
        note["type"] = "application/json"
        note["data"] = json.dumps(process["configuration"], default=str)
    out = group.create_group("results")
    out.attrs["NX_class"] = "NXcollection"
    if chi2 is not None:
        out["chi2"] = np.asarray(chi2, np.float64)
        out["chi2"].attrs["note"] = "sum over measured pixels of (|F(object)| - modulus)^2 / sum of modulus^2"
    for key, value in (results or {}).items():
        out[key] = np.asarray(value)


def read_cxi(path: str | Path) -> CXIData:
    """Read the parts of a CXI file that :class:`CXIData` names (PyNX's files too).

    Data: ``entry_1/instrument_1/detector_1/data``, else ``entry_1/data_1/data`` when it is
    real. Object: ``entry_1/image_1/data``. Support: ``image_1/support``, else the
    :data:`PIXEL_INSIDE_SUPPORT` bit of ``image_1/mask``. Geometry: ``entry_1/instrument_1``,
    else ``image_1/instrument_1`` (energy in J unless its ``units`` attribute says eV or keV).

    Raises
    ------
    CDIValueError
        missing, empty or not HDF5; no ``cxi_version`` or ``entry_1`` (not CXI); data and
        object both absent; a mask or support whose shape does not fit.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CDIValueError(f"no such file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CDIValueError(f"{path} is not a CXI file: not HDF5 ({exc})") from exc
    with f:
        if ENTRY not in f:
            what = "cxi_version but no entry_1" if "cxi_version" in f else "no cxi_version and no entry_1"
            raise CDIValueError(f"{path} is not a CXI file: {what}")
        data = _dataset(f, f"{DETECTOR}/data")
        if data is None:
            main = _dataset(f, f"{ENTRY}/data_1/data")
            data = main if main is not None and not np.iscomplexobj(main) else None
        mask = _dataset(f, f"{DETECTOR}/mask")
        if mask is not None:
            if data is None or mask.shape not in (data.shape, data.shape[-2:]):
                raise CDIValueError(f"{path}: {DETECTOR}/mask shape {mask.shape} does not fit the data")
            mask = measured_pixels(mask)
        obj = _dataset(f, f"{IMAGE}/data")
        if obj is not None and not np.iscomplexobj(obj):
            obj = None  # a real image_1 is not a reconstruction of ours (e.g. an assembled pattern)
        if data is None and obj is None:
            raise CDIValueError(f"{path}: a CXI file without detector data or a complex image_1/data")
        support, chi2, ndim, frame_index, process = None, None, None, None, {}
        if obj is not None:
            support = _read_support(f, obj.shape, path)
            dimensionality = _dataset(f, f"{IMAGE}/dimensionality")
            ndim = int(dimensionality) if dimensionality is not None else min(obj.ndim, 3)
            chi2 = _dataset(f, f"{PROCESS}/results/chi2")
            chi2 = None if chi2 is None else np.asarray(chi2, np.float64)
            frame_index = _dataset(f, f"{IMAGE}/frame_index")
            process = _read_process(f)
        geometry = _read_geometry(f)
    return CXIData(data, mask, obj, support, chi2, ndim, geometry, process, frame_index)


def _dataset(f, name: str) -> Any:
    import h5py

    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        return None
    value = node[()]
    return value.decode() if isinstance(value, bytes) else value


def _read_support(f, shape: tuple[int, ...], path: Path) -> np.ndarray | None:
    support = _dataset(f, f"{IMAGE}/support")
    if support is None:
        bits = _dataset(f, f"{IMAGE}/mask")
        if bits is None:
            return None
        bits = np.asarray(bits)
        support = (bits.astype(np.int64) & PIXEL_INSIDE_SUPPORT) != 0 if bits.max(initial=0) > 1 else bits
    support = np.asarray(support) != 0
    if support.shape != shape:
        raise CDIValueError(f"{path}: the support's shape {support.shape} != the object's {shape}")
    return support


def _read_process(f) -> dict[str, Any]:
    process: dict[str, Any] = {}
    for key in ("program", "version", "command", "date"):
        value = _dataset(f, f"{PROCESS}/{key}")
        if value is not None:
            process[key] = str(value)
    group = f.get(PROCESS)
    for name in group if group is not None else ():
        if name.startswith("note_") and _dataset(f, f"{PROCESS}/{name}/description") == "configuration":
            text = _dataset(f, f"{PROCESS}/{name}/data")
            try:
                process["configuration"] = json.loads(text)
            except (TypeError, ValueError):
                process["configuration"] = text
    return process


def _read_geometry(f) -> dict[str, Any]:
    geometry: dict[str, Any] = {}
    axis = _dataset(f, f"{ENTRY}/sample_1/rocking_axis")
    if axis is not None:
        geometry["rocking_axis"] = str(axis)
    instrument = f.get(INSTRUMENT)
    if instrument is None:
        instrument = f.get(f"{IMAGE}/instrument_1")
    if instrument is None:
        return geometry
    energy = instrument.get("source_1/energy")
    if energy is not None:
        scale = {"j": 1 / (1e3 * _ELECTRON_VOLT), "ev": 1e-3, "kev": 1.0}.get(_units(energy, "J").lower())
        if scale is not None:
            geometry["energy_kev"] = float(energy[()]) * scale
    detector = instrument.get("detector_1")
    if detector is None:
        return geometry
    if "distance" in detector:
        geometry["distance_m"] = float(detector["distance"][()])
    if "y_pixel_size" in detector and "x_pixel_size" in detector:
        geometry["pixel_size_m"] = (float(detector["y_pixel_size"][()]), float(detector["x_pixel_size"][()]))
    for name, node in detector.items():
        if _units(node, "") == _DEGREE:
            value = np.asarray(node[()], np.float64)
            geometry[f"{name}_deg"] = float(value) if value.ndim == 0 else value
    return geometry


def _units(node, default: str) -> str:
    units = node.attrs.get("units", default)
    return units.decode() if isinstance(units, bytes) else str(units)
