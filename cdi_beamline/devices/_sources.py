"""Frame sources: plain-Python replay of diffraction patterns (no Bluesky, no Tango).

Every source serves detector *intensities* (counts, float32, centred patterns) through one
small interface, so that the ophyd, ophyd-async and Tango detectors can wrap any of them:

    src.n_frames        int, or None for an endless source (``len(src)`` then raises TypeError)
    src.frame(i)        (H, W) float32 intensities of frame ``i``
    src.shape           (H, W)
    src.mask            (H, W) bool, True = measured pixel; None = every pixel measured
    src.angles          (n_frames,) rocking angle θ in degrees per frame, or None
    src.provenance()    JSON-able dict: what the source is, for start documents
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CDIValueError

__all__ = [
    "FrameSource",
    "FrameCursor",
    "SyntheticSource",
    "FileSource",
    "ApsRockingSource",
    "make_source",
    "APS_WHITEFIELD_LEVEL",
    "DEFAULT_SOURCE",
]

APS_DATA_FILE = "aps34idc_S0054_rocking_201x128x128.npz"
#: Flat-field normalisation (counts) of the APS 34-ID-C reference correction; see the
#: PROVENANCE.md shipped beside the data.
APS_WHITEFIELD_LEVEL = 14672.484
#: What the replay detectors serve when not told: the measured APS scan, flat-field corrected.
DEFAULT_SOURCE = "aps34idc"


class FrameSource:
    """Base of the frame sources: indexing, validation and iteration."""

    n_frames: int | None = None
    shape: tuple[int, int] = (0, 0)
    mask: np.ndarray | None = None
    angles: np.ndarray | None = None

    def __len__(self) -> int:
        if self.n_frames is None:
            raise TypeError(f"{type(self).__name__} is endless: it has no len(); use n_frames")
        return self.n_frames

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as (H, W) float32 intensities."""
        return self._frame(self._check_index(i))

    def __iter__(self):
        i = 0
        while self.n_frames is None or i < self.n_frames:
            yield self.frame(i)
            i += 1

    def provenance(self) -> dict[str, Any]:
        raise NotImplementedError

    def _frame(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _check_index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            raise IndexError(f"frame index must be >= 0, got {i}")
        if self.n_frames is not None and i >= self.n_frames:
            raise IndexError(f"frame {i} out of range: {type(self).__name__} has {self.n_frames} frames")
        return i


class FrameCursor:
    """Reads a source in order: frame 0, 1, ... and round again from 0 at the end of a
    finite source. The one replay order of every detector (ophyd, ophyd-async, Tango).

    Thread-safe: Tango commands and ophyd-async acquisitions may advance it from other
    threads.

    Parameters
    ----------
    source : FrameSource
        The frames to replay.
    """

    def __init__(self, source: FrameSource):
        self.source = source
        self._lock = threading.Lock()
        self._next = 0

    def rewind(self) -> None:
        """Start again at frame 0."""
        with self._lock:
            self._next = 0

    def advance(self) -> int:
        """The index of the next frame (wrapped into the source); moves the cursor past it."""
        with self._lock:
            n = self.source.n_frames
            i = self._next if n is None else self._next % n
            self._next = i + 1
            return i

    def read(self) -> tuple[int, np.ndarray]:
        """The next frame's index and (H, W) float32 intensities."""
        i = self.advance()
        return i, self.source.frame(i)


def _check_mask(mask: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise CDIValueError(f"{what}: mask shape {mask.shape} does not match frame shape {tuple(shape)}")
    return mask.astype(bool)


class SyntheticSource(FrameSource):
    """Patterns from the simulator (``cdi_beamline.physics.simulate_batch``), made on the fly.

    Frames are generated ``chunk`` at a time (the last one cached); frame ``i`` depends only
    on ``(seed, chunk, i)``, so two sources with the same arguments serve identical frames,
    read in any order.

    Parameters
    ----------
    n : int or None
        Number of frames; None for an endless source.
    config : SimulationConfig, optional
        The simulator's configuration (its default when None).
    seed : int
        Base seed; chunk ``k`` is simulated with a seed derived from ``(seed, k)``.
    photons : float, optional
        Expected photons per pattern: Poisson counts (sets ``config.detector.photons``).
        None: the config's detector (noiseless intensities ``modulus**2`` by default).
    mask : bool
        True: the beamstop and module gaps of ``cdi-beamline simulate --mask``
        (``DEFAULT_MASK``); masked pixels read 0. False: the config's detector mask, if any.
    chunk : int
        Frames simulated per call of the simulator (at most ``n``).
    device : str
        Torch device of the simulator.
    """

    def __init__(
        self,
        n: int | None = None,
        config=None,
        seed: int = 0,
        photons: float | None = None,
        mask: bool = False,
        chunk: int = 256,
        device: str = "cpu",
    ):
        if n is not None and int(n) < 1:
            raise CDIValueError(f"SyntheticSource: n must be >= 1 or None (endless), got {n}")
        if int(chunk) < 1:
            raise CDIValueError(f"SyntheticSource: chunk must be >= 1, got {chunk}")
        # the simulator imports torch: load it only when a synthetic source is made
        from ..config import DEFAULT_MASK, SimulationConfig
        from ..physics import detector_mask, simulate_batch

        config = SimulationConfig() if config is None else config
        detector = config.detector.model_dump()
        detector.update({"photons": photons} if photons is not None else {})
        detector.update(DEFAULT_MASK if mask else {})
        self.config = SimulationConfig.build(**{**config.model_dump(), "detector": detector})
        self._simulate = simulate_batch
        self.n_frames = None if n is None else int(n)
        self.seed = int(seed)
        self.chunk = int(chunk) if n is None else min(int(chunk), int(n))
        self.device = device
        self._lock = threading.Lock()  # Tango and ophyd-async may read from other threads
        self._cached: tuple[int, np.ndarray] | None = None
        self.shape = tuple(self._chunk(0).shape[-2:])
        measured = detector_mask(self.config.detector, "cpu")
        self.mask = None if measured is None else measured.numpy()

    def chunk_seed(self, k: int) -> int:
        """The simulator seed of chunk ``k`` (frames ``k*chunk .. (k+1)*chunk - 1``)."""
        return int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0])

    def _chunk(self, k: int) -> np.ndarray:
        with self._lock:
            if self._cached is not None and self._cached[0] == k:
                return self._cached[1]
            chunk_seed = self.chunk_seed(k)
            batch = self._simulate(self.chunk, self.config, seed=chunk_seed, device=self.device)
            intensity = (batch.modulus.double() ** 2).cpu().numpy()
            if self.config.detector.photons is not None:
                intensity = np.round(intensity)  # counts: undo sqrt's float rounding
            intensity = intensity.astype(np.float32)
            self._cached = (k, intensity)
            return intensity

    def _frame(self, i: int) -> np.ndarray:
        return self._chunk(i // self.chunk)[i % self.chunk].copy()

    def provenance(self) -> dict[str, Any]:
        return {
            "source": "synthetic",
            "n_frames": self.n_frames,
            "shape": list(self.shape),
            "seed": self.seed,
            "photons": self.config.detector.photons,
            "masked": self.mask is not None,
            "chunk": self.chunk,
            "simulation_config": self.config.model_dump(mode="json"),
        }


class FileSource(FrameSource):
    """Frames from a file: the HDF5 written by ``cdi-beamline simulate`` (dataset ``modulus``,
    squared to intensities) or a stack of intensities in .npy, .npz or .h5/.hdf5.

    Parameters
    ----------
    path : str or Path
        The file. Its stack is read into memory once.
    dataset : str, optional
        Dataset (HDF5) or key (.npz) to read. Default: ``modulus`` when present (squared),
        else ``intensity`` or ``data``, else the only array in the file. A dataset named
        ``modulus`` is always squared; anything else is taken as intensities.

    A 2D array is one frame. A ``mask`` dataset/key, (H, W) or one identical (H, W) per
    frame, becomes :attr:`mask`.
    """

    def __init__(self, path: str | Path, dataset: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CDIValueError(f"FileSource: no such file {self.path}")
        stack, name, mask = self._read(self.path, dataset)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3 or 0 in stack.shape:
            raise CDIValueError(f"FileSource: {self.path}:{name} has shape {stack.shape}; expected (N, H, W) or (H, W)")
        if not np.issubdtype(stack.dtype, np.number) or np.iscomplexobj(stack):
            raise CDIValueError(f"FileSource: {self.path}:{name} has dtype {stack.dtype}; expected real numbers")
        stack = stack.astype(np.float32)
        self.squared = name.split("/")[-1] == "modulus"
        self.frames = stack**2 if self.squared else stack
        self.dataset = name
        self.n_frames = len(self.frames)
        self.shape = tuple(self.frames.shape[1:])
        self.mask = self._mask(mask)

    @staticmethod
    def _read(path: Path, dataset: str | None) -> tuple[np.ndarray, str, np.ndarray | None]:
        """The chosen stack, its name and the file's mask (or None); reads nothing else."""
        suffix = path.suffix.lower()
        if suffix == ".npy":
            if dataset is not None:
                raise CDIValueError(f"FileSource: {path} is a .npy file; it has no dataset {dataset!r}")
            return np.load(path, allow_pickle=False), "data", None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                name = FileSource._choose(path, list(z.files), dataset)
                return z[name], name, z["mask"] if "mask" in z.files else None
        if suffix in (".h5", ".hdf5", ".nxs"):
            import h5py

            with h5py.File(path, "r") as f:
                names: list[str] = []
                f.visititems(
                    lambda key, obj: names.append(key) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None
                )
                name = FileSource._choose(path, names, dataset)
                masks = [k for k in names if k.split("/")[-1] == "mask"]
                return f[name][()], name, f[masks[0]][()] if len(masks) == 1 else None
        raise CDIValueError(
            f"FileSource: unsupported file type {path.suffix!r} for {path}; use .h5, .hdf5, .npy or .npz"
        )

    @staticmethod
    def _choose(path: Path, names: list[str], dataset: str | None) -> str:
        if dataset is not None:
            if dataset.strip("/") not in names:
                raise CDIValueError(f"FileSource: {path} has no dataset {dataset!r}; it has {sorted(names)}")
            return dataset.strip("/")
        for preferred in ("modulus", "intensity", "data"):
            hits = [k for k in names if k.split("/")[-1] == preferred]
            if len(hits) == 1:
                return hits[0]
        stacks = [k for k in names if k.split("/")[-1] != "mask"]
        if len(stacks) != 1:
            raise CDIValueError(f"FileSource: {path} holds several arrays {sorted(names)}; choose one with dataset=")
        return stacks[0]

    def _mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        mask = np.asarray(mask).astype(bool)
        if mask.ndim == 3:
            if not (mask == mask[:1]).all():
                raise CDIValueError(
                    f"FileSource: {self.path}: per-frame masks differ; a replay source serves one (H, W) mask"
                )
            mask = mask[0]
        return _check_mask(mask, self.shape, f"FileSource {self.path}")

    def _frame(self, i: int) -> np.ndarray:
        return self.frames[i].copy()

    def provenance(self) -> dict[str, Any]:
        return {
            "source": "file",
            "path": str(self.path),
            "dataset": self.dataset,
            "squared_modulus": self.squared,
            "n_frames": self.n_frames,
            "shape": list(self.shape),
            "masked": self.mask is not None,
        }


class ApsRockingSource(FrameSource):
    """The measured APS 34-ID-C rocking scan (201 frames, gold nanocrystal), shipped in the
    package: ``cdi_beamline/devices/data`` (licence and provenance beside it).

    Parameters
    ----------
    corrected : bool
        True: bad (dark > 1 count) pixels zeroed and masked, then flat-field corrected,
        ``raw / whitefield * APS_WHITEFIELD_LEVEL``. False: the raw counts.
    crop : int
        Side of the centred square crop of the 128×128 cut (even, 2..128); 64 puts the peak
        of frame 99 at pixel [32, 32].

    Attributes
    ----------
    angles : (201,) float64
        Rocking angle θ (degrees) of each frame, linspace(-0.28, 0.72, 201).
    dark : (crop, crop) float32
        The scan's dark image (counts), same cut as the frames.
    whitefield : (crop, crop) float32
        The scan's flat field, same cut: with ``corrected=False`` the raw frames, dark and
        whitefield go through :class:`cdi_beamline.preprocess.Preprocessor` as a
        beamline's would.
    """

    angles: np.ndarray  # always known for the measured scan

    def __init__(self, corrected: bool = True, crop: int = 64):
        crop = int(crop)
        if crop < 2 or crop > 128 or crop % 2:
            raise CDIValueError(f"ApsRockingSource: crop must be an even number in 2..128, got {crop}")
        data_file = resources.files("cdi_beamline.devices") / "data" / APS_DATA_FILE
        with resources.as_file(data_file) as path, np.load(path) as z:
            lo = (128 - crop) // 2
            cut = np.s_[lo : lo + crop, lo : lo + crop]
            raw = z["data"][(slice(None), *cut)]
            self.dark = z["dark"][cut].astype(np.float32)
            self.whitefield = z["whitefield"][cut].astype(np.float32)
            bad = self.dark > 1
            whitefield = self.whitefield.astype(np.float64)
            self.angles = np.linspace(float(z["theta_start"]), float(z["theta_stop"]), int(z["npoints"]))
            self.rows = z["rows"][lo : lo + crop]
            self.cols = z["cols"][lo : lo + crop]
        self.corrected = bool(corrected)
        if self.corrected:
            frames = np.where(bad, 0.0, raw) / whitefield * APS_WHITEFIELD_LEVEL
            self.mask = None if not bad.any() else ~bad
        else:
            frames = raw
            self.mask = None
        self.frames = frames.astype(np.float32)
        self.crop = crop
        self.n_frames = len(self.frames)
        self.shape = (crop, crop)

    def _frame(self, i: int) -> np.ndarray:
        return self.frames[i].copy()

    def provenance(self) -> dict[str, Any]:
        return {
            "source": "aps34idc",
            "file": APS_DATA_FILE,
            "scan": "APS 34-ID-C 2020-02-04 #S 54 ascan th -0.28 0.72 200 0.25",
            "corrected": self.corrected,
            "whitefield_level": APS_WHITEFIELD_LEVEL if self.corrected else None,
            "crop": self.crop,
            "detector_rows": [int(self.rows[0]), int(self.rows[-1])],
            "detector_cols": [int(self.cols[0]), int(self.cols[-1])],
            "n_frames": self.n_frames,
            "theta_deg": [float(self.angles[0]), float(self.angles[-1])],
        }


def make_source(spec: str | Path, **kw) -> FrameSource:
    """Build a source from a name: ``"synthetic"``, ``"aps34idc"`` (or ``"aps34idc-raw"``
    for uncorrected counts), or a file path; ``kw`` go to the source's constructor."""
    name = str(spec)
    if name == "synthetic":
        return SyntheticSource(**kw)
    if name in ("aps34idc", "aps"):
        return ApsRockingSource(**kw)
    if name in ("aps34idc-raw", "aps-raw"):
        return ApsRockingSource(corrected=False, **kw)
    if Path(name).suffix:
        return FileSource(name, **kw)
    raise CDIValueError(f"unknown frame source {name!r}: use 'synthetic', 'aps34idc', 'aps34idc-raw' or a file path")
