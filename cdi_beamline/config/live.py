"""LiveConfig (callback, worker, queue policy) and StoreConfig (Tiled)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ._base import FrozenModel
from .preprocess import PreprocessConfig

__all__ = ["CLUSTER_HELP", "CLUSTER_PATTERN", "LiveConfig", "StoreConfig"]

CLUSTER_PATTERN = r"local(:[1-9][0-9]*)?|(tcp|tls|ucx)://\S+"
"""``LiveConfig.cluster``: ``local``, ``local:N`` or a Dask scheduler's address."""

CLUSTER_HELP = (
    "'local' (a Dask LocalCluster, one single-threaded worker process per core), 'local:N' (N worker "
    "processes), or a Dask scheduler's address, e.g. tcp://host:8786"
)


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

    cluster: str | None = Field(None, pattern=f"^({CLUSTER_PATTERN})$")
    """Where batches are reconstructed: None, in the worker's thread; ``"local"`` /
    ``"local:N"``, a Dask ``LocalCluster`` of one single-threaded worker process per core / N;
    ``"tcp://host:8786"``, the Dask scheduler of running workers (``dask worker``, one per GPU
    with dask-cuda). One live consumer submits every batch; results come back in order."""


class StoreConfig(FrozenModel):
    """Where runs are stored: the embedded Tiled server under ``data_dir``, or any Tiled
    server by ``uri`` (+ ``api_key``)."""

    data_dir: Path = Path("cdi-data")
    """Embedded server's catalog and files, result HDF5 files and the spool."""

    uri: str | None = None
    """A running Tiled server (``http://host:port``); ``None`` starts the embedded one."""

    api_key: str | None = None
    """API key for ``uri`` (the embedded server keeps its own key in ``data_dir``)."""

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
