"""LiveConfig (callback, worker, queue policy, 3D at the end of a rocking scan) and StoreConfig (Tiled)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ._base import FrozenModel
from .geometry import BraggGeometry
from .preprocess import PreprocessConfig
from .refine import RefineConfig

__all__ = ["CLUSTER_HELP", "CLUSTER_PATTERN", "LiveConfig", "RockingConfig", "StoreConfig"]


CLUSTER_PATTERN = r"local(:[1-9][0-9]*)?|(tcp|tls|ucx)://\S+"
"""``LiveConfig.cluster``: ``local``, ``local:N`` or a Dask scheduler's address."""

CLUSTER_HELP = (
    "'local' (a Dask LocalCluster, one single-threaded worker process per core), 'local:N' (N worker "
    "processes), or a Dask scheduler's address, e.g. tcp://host:8786"
)


class RockingConfig(FrozenModel):
    """The 3D reconstruction at the end of a rocking scan: which runs are rocking scans, which
    frames make the volume, how it is phased.

    A run is a rocking scan when its start document names at least one detector and exactly
    one motor (``motors``: what bluesky's ``scan``, ``rel_scan``, ``list_scan`` write), and
    that motor is a rocking angle: its name, or the last ``_``/``-``/``.`` separated part of
    it (``sample_th``), is one of :attr:`motors` (case ignored). The motor's readings in the
    raw stream are the rocking angles.
    """

    enabled: bool = True
    """Phase the stack of every rocking scan in 3D after its stop document."""

    motors: tuple[str, ...] = ("th", "theta", "eta", "omega", "phi")
    """Names of the motors that rock the crystal."""

    min_frames: int = Field(16, ge=2)
    """Fewest frames with data a rocking scan needs for a 3D reconstruction; with fewer,
    no 3D run is written (a log line says why)."""

    depth: int = Field(64, ge=2)
    """Frames along the rocking axis in the volume: those around the brightest frame (all
    of them when the scan has fewer). With the default 64 and a 64x64 ROI, a 64^3 volume."""

    starts: int = Field(4, ge=1)
    """Random starts phased together as one batch (``cdi_beamline.phasing.multistart``)."""

    keep: int = Field(1, ge=1)
    """Starts of lowest chi² kept, aligned and averaged (at most :attr:`starts`). 1 keeps the
    best start alone: on the APS 34-ID-C 64^3 volume (600 iterations, 4 starts, each start
    chi² 0.0055-0.0065) the average of the best 2 came out at chi² 0.028 (spread 0.29 in
    amplitude, 0.22 rad in phase), the best alone at 0.0055 (2-core x86-64 CPU, 2026-12-03)."""

    refine: RefineConfig = RefineConfig()
    """Schedule (default 600 iterations), shrink-wrap and supports of the 3D phasing."""

    geometry_keys: dict[str, str] = {
        "energy_kev": "energy_kev",
        "distance_m": "detector_distance_m",
        "pixel_size_m": "detector_pixel_size_m",
        "delta_deg": "delta_deg",
        "gamma_deg": "gamma_deg",
        "rocking_axis": "rocking_axis",
    }
    """:class:`BraggGeometry` field -> the raw start-document key it is read from. The fields
    the start gives are recorded in the 3D run; when they make a whole ``BraggGeometry``
    (the rocking step comes from the motor's readings), the volume is also put on
    orthogonal lab axes. Give the pixel size after any binning."""

    @model_validator(mode="after")
    def _consistent(self) -> RockingConfig:
        if self.keep > self.starts:
            raise ValueError(f"keep ({self.keep}) must be at most starts ({self.starts})")
        fields = set(BraggGeometry.model_fields) - {"rocking_step_deg"}
        unknown = sorted(set(self.geometry_keys) - fields)
        if unknown:
            raise ValueError(f"geometry_keys: {unknown} are not BraggGeometry fields ({sorted(fields)})")
        return self


class LiveConfig(FrozenModel):
    """How the live callback feeds frames to the reconstruction worker. The batch is the
    engine's: ``ReconstructorConfig.batch_size``."""

    image_key: str | None = None
    """Data key of the detector image; ``None`` picks the first 2D field of the stream
    (in the event, or external HDF5 through stream_resource/stream_datum)."""

    stream: str = "primary"
    """Name of the raw event stream whose frames are reconstructed."""

    max_wait_s: float = Field(0.5, gt=0, le=3600)
    """A partial batch is reconstructed once its oldest frame waited this long (a full batch,
    ``ReconstructorConfig.batch_size`` frames, at once)."""

    queue_size: int = Field(4096, ge=1)
    """Capacity of the queue between the RunEngine thread and the worker (frames)."""

    queue_policy: Literal["block", "drop"] = "block"
    """Full queue: ``"block"`` holds the scan until there is room (replay, nothing lost);
    ``"drop"`` drops the frame, counts it and records it in the derived run (live)."""

    seed: int | None = 0
    """Seed of random-start refinement; the same seed reproduces a result offline."""

    data_dir: Path = Path("cdi-data")
    """Where the result HDF5 files (``results/``) and the document spool live."""

    preprocess: PreprocessConfig | None = None
    """Raw detector counts to the phased modulus (dark, flat, mask, threshold, ROI, binning),
    one :class:`cdi_beamline.preprocess.Preprocessor` per run (an automatic ROI is chosen
    once per run); None: frames are phased as they come (centred patterns, engine's units)."""

    rocking: RockingConfig = RockingConfig()
    """The 3D reconstruction of each rocking scan's stack of frames, after its stop document."""

    cluster: str | None = Field(None, pattern=f"^({CLUSTER_PATTERN})$")
    """Where batches are reconstructed: None, in the worker's thread; ``"local"`` /
    ``"local:N"``, a Dask ``LocalCluster`` of one single-threaded worker process per core / N;
    ``"tcp://host:8786"``, the Dask scheduler of running workers (``dask worker``, one per GPU
    with dask-cuda). One live consumer submits every batch; results come back in order."""


class StoreConfig(FrozenModel):
    """Where runs are stored: the embedded Tiled server under ``data_dir`` (``cdi-beamline
    serve --config`` reads this model too), or any Tiled server by ``uri`` (+ ``api_key``)."""

    data_dir: Path = Path("cdi-data")
    """Embedded server's catalog and files, result HDF5 files and the spool."""

    uri: str | None = None
    """A running Tiled server (``http://host:port``); ``None`` starts the embedded one."""

    api_key: str | None = None
    """API key for ``uri``; for ``cdi-beamline serve``, the key its server requires (``None``:
    the data directory's own, generated once and kept in ``data_dir/tiled/api_key``)."""

    catalog: str | None = None
    """Catalog of the embedded server: ``postgresql://user@host:5432/db`` (an existing
    database; the password best in ``~/.pgpass``); ``None``: the one the data directory was
    last served with, else SQLite in ``data_dir/tiled/catalog.db``."""

    host: str = "127.0.0.1"
    """Interface ``cdi-beamline serve`` listens on; another than loopback (``0.0.0.0``, the
    host's address) needs ``api_key``. A live session's own server stays on loopback."""

    port: int = Field(0, ge=0, le=65535)
    """Port of the embedded server; 0 picks a free one."""

    retry_s: float = Field(0.5, gt=0)
    """First wait before delivery to Tiled is tried again after a temporary failure (Tiled
    unreachable, 5xx); the wait doubles on each failure up to ``retry_max_s``. Documents wait
    in the local journal (``data_dir/spool``) meanwhile."""

    retry_max_s: float = Field(30.0, gt=0)
    """Longest wait between delivery attempts while Tiled stays unreachable."""

    close_wait_s: float = Field(600.0, ge=0)
    """How long ``LiveSession.finish()``/``close()`` waits for queued frames and for runs not
    yet in Tiled; what is left stays in the journal and is delivered by the next session."""

    raw_batch_size: int = Field(10000, ge=1)
    """TiledWriter batch for raw runs (rows cached, written in bulk)."""

    derived_batch_size: int = Field(64, ge=1)
    """TiledWriter batch for derived runs (results become visible every this many)."""
