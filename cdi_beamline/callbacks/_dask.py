"""Reconstruction on a Dask cluster: :class:`DaskCluster` (a ``distributed`` client, and the
``LocalCluster`` it started) and :class:`DaskEngine`, the live worker's engine whose batches
run as Dask tasks.

One consumer (a :class:`ReconstructionWorker`) submits the batches of every raw run and
writes their rows back in order, so N Dask workers share one scan stream without doing any
frame twice. A Dask worker builds the :class:`~cdi_beamline.pipeline.Reconstructor` of a
configuration once (:func:`_engine`, cached per process) on its own device (``auto``: its
GPU where it has one). A task whose worker dies is run again on another worker by the
scheduler; one that raises is retried ``retries`` times.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import numpy as np

from ..config import CLUSTER_HELP, CLUSTER_PATTERN, ReconstructorConfig
from ..errors import CDIRuntimeError, CDIValueError
from ..pipeline import Reconstructor
from ..resources import cpu_count

__all__ = ["DaskCluster", "DaskEngine", "parse_cluster"]

LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    # Dask's nanny starts workers with glibc's MALLOC_TRIM_THRESHOLD_=65536, which also fixes the
    # mmap threshold: every tensor over 128 KiB is then a fresh mmap, and a 16-frame refinement
    # ran 4x slower (28 vs 6.7 ms/frame). None: the nanny leaves it unset.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # Dask's housekeeping, sized for a dashboard this cluster does not serve: each worker's
    # profiler samples its threads every 10 ms, every server checks its event loop every 20 ms
    # and the system every 0.5 s, nannies (threads of the consumer's process) read their
    # worker's memory every 0.1 s. Idle, a LocalCluster of 2 took 11 % of a core, 4.5 of it in
    # the consumer; with these, 1.5 %.
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}
"""Dask configuration of the ``LocalCluster`` :class:`DaskCluster` starts (2-core x86-64 CPU,
2026-12-03); docs/cluster.md gives it as YAML for workers started by hand."""


def parse_cluster(spec: str) -> int | str:
    """The number of local worker processes of ``local[:N]`` (``local``: one per core), else
    the scheduler address (:data:`cdi_beamline.config.CLUSTER_PATTERN`).

    Raises
    ------
    CDIValueError
        For anything else.
    """
    if not re.fullmatch(CLUSTER_PATTERN, spec):
        raise CDIValueError(f"cluster {spec!r}: expected {CLUSTER_HELP}")
    if spec == "local":
        return cpu_count()
    if spec.startswith("local:"):
        return int(spec.split(":", 1)[1])
    return spec


class DaskCluster:
    """A ``distributed.Client`` of ``spec`` (:func:`parse_cluster`); ``local[:N]`` starts a
    ``LocalCluster`` of N worker processes with one thread each (Dask's nanny sets
    ``OMP_NUM_THREADS=1`` in them, so torch uses one thread per worker) under
    :data:`LOCAL_CLUSTER_CONFIG`, closed by :meth:`close`.

    Attributes
    ----------
    spec : str;  client : distributed.Client;  cluster : LocalCluster or None
    """

    def __init__(self, spec: str, *, timeout_s: float = 30.0):
        import dask
        from distributed import Client, LocalCluster

        target = parse_cluster(spec)
        self.spec = spec
        self.cluster = None
        self._engines: dict[tuple[str, int], DaskEngine] = {}
        self._lock = threading.Lock()
        try:
            if isinstance(target, int):
                with dask.config.set(LOCAL_CLUSTER_CONFIG):
                    self.cluster = LocalCluster(
                        n_workers=target, threads_per_worker=1, processes=True, dashboard_address=None
                    )
                self.client = Client(self.cluster, timeout=timeout_s)
            else:
                self.client = Client(target, timeout=timeout_s)
        except OSError as exc:
            if self.cluster is not None:
                self.cluster.close()
            raise CDIRuntimeError(f"cannot reach Dask cluster {spec!r}: {exc}") from exc

    @property
    def n_workers(self) -> int:
        """Workers connected now (at least 1, so that a pool sized by it is never empty)."""
        return max(1, len(self.client.nthreads()))

    def engine(self, config: ReconstructorConfig, *, retries: int = 3) -> DaskEngine:
        """The :class:`DaskEngine` of ``config`` on this cluster (one per configuration, so
        that its provenance is asked of a worker once)."""
        key = (json.dumps(config.model_dump(mode="json"), sort_keys=True), retries)
        with self._lock:
            if key not in self._engines:
                self._engines[key] = DaskEngine(config, self, retries=retries)
            return self._engines[key]

    def close(self) -> None:
        """Close the client, and the LocalCluster if this started it."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaskEngine:
    """The :class:`~cdi_beamline.callbacks.Engine` of the live worker and of ``reprocess``
    whose batches are Dask tasks: :meth:`submit` returns a ``distributed.Future`` of the
    :class:`~cdi_beamline.pipeline.ReconstructionBatch`; :meth:`reconstruct` waits for it.

    Parameters
    ----------
    config : ReconstructorConfig
        Built into a ``Reconstructor(config, device="auto")`` once per Dask worker process.
    cluster : DaskCluster
    retries : int
        Times a task that raises is run again (a task whose worker died is rescheduled by
        Dask regardless, up to ``distributed.scheduler.allowed-failures``).

    Attributes
    ----------
    max_in_flight : int
        Batches the live worker lets run at once: two per Dask worker (one computing, one
        queued), counted when the engine is made.
    """

    def __init__(self, config: ReconstructorConfig, cluster: DaskCluster, *, retries: int = 3):
        self.config = config
        self.cluster = cluster
        self.retries = retries
        self._key = json.dumps(config.model_dump(mode="json"), sort_keys=True)
        self.max_in_flight = 2 * cluster.n_workers
        self._provenance: dict | None = None

    def submit(self, frames: np.ndarray, *, mask: np.ndarray | None = None, seed: int | None = None):
        """Start reconstructing ``frames`` (B, H, W) on the cluster; a Future of the batch."""
        return self.cluster.client.submit(
            _reconstruct, self._key, np.ascontiguousarray(frames), mask, seed, pure=False, retries=self.retries
        )

    def reconstruct(self, frames: np.ndarray, *, mask: np.ndarray | None = None, seed: int | None = None):
        """Reconstruct ``frames`` (B, H, W) on the cluster and wait."""
        return self.submit(frames, mask=mask, seed=seed).result()

    def provenance(self) -> dict[str, Any]:
        """A Dask worker's ``Reconstructor.provenance()`` (its device), and ``cluster``: the
        scheduler's address and the workers connected when first asked."""
        if self._provenance is None:
            info = self.cluster.client.submit(_provenance, self._key, pure=False, retries=self.retries).result()
            client = self.cluster.client
            info["cluster"] = {"scheduler": client.scheduler.address, "workers": self.cluster.n_workers}
            self._provenance = info
        return dict(self._provenance)


# -- on the Dask workers ---------------------------------------------------------------------

_ENGINES: dict[str, Reconstructor] = {}


def _engine(key: str) -> Reconstructor:
    """This worker process's Reconstructor of the configuration ``key`` (JSON), built once."""
    if key not in _ENGINES:
        _ENGINES[key] = Reconstructor(ReconstructorConfig.build(**json.loads(key)), device="auto")
    return _ENGINES[key]


def _reconstruct(key: str, frames: np.ndarray, mask: np.ndarray | None, seed: int | None):
    return _engine(key).reconstruct(frames, mask=mask, seed=seed)


def _provenance(key: str) -> dict[str, Any]:
    return _engine(key).provenance()
