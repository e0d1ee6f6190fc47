"""LiveSession: the one wiring of live reconstruction (Tiled + writers + callback), used by
``cdi-beamline demo``, the 0MQ worker, the benchmark and the IPython profile."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import LiveConfig, StoreConfig
from ..preprocess import Preprocessor
from ..tiled import DataDir, EmbeddedTiled, ShapeGuard, SpoolingWriter, connect, make_writer, processed, serving
from ..tiled import close_at_exit as call_at_exit
from ._assembler import Engine
from ._live import LiveReconstruction

__all__ = ["Finished", "LiveSession"]


@dataclass(frozen=True)
class Finished:
    """What :meth:`LiveSession.finish` found; true when nothing is left to do or was refused.

    Attributes
    ----------
    frames_done : bool
        Every queued frame was reconstructed and its results emitted.
    delivered : int
        Runs (raw and derived) delivered whole to Tiled by this session so far.
    pending : int
        Runs with documents not yet in Tiled: they stay in ``data_dir/spool`` and the next
        session on the data directory delivers them.
    quarantined : tuple of (run uid, reason)
        Runs Tiled refused, kept in ``data_dir/spool/quarantine``.
    """

    frames_done: bool
    delivered: int
    pending: int
    quarantined: tuple[tuple[str, str], ...]

    def __bool__(self) -> bool:
        return self.frames_done and self.pending == 0 and not self.quarantined

    def __str__(self) -> str:
        refused = "; ".join(f"{uid}: {why}" for uid, why in self.quarantined)
        return (
            f"{'all frames' if self.frames_done else 'NOT all frames'} reconstructed; runs: {self.delivered} "
            f"delivered, {self.pending} pending, {len(self.quarantined)} quarantined"
            + (f" ({refused})" if refused else "")
        )


class LiveSession:
    """Tiled (``store.uri``; else the server already serving ``store.data_dir``; else an
    embedded one started here), a raw-run writer, and a :class:`LiveReconstruction` whose
    derived runs go to the same server, in the catalog's ``processed`` container
    (:func:`cdi_beamline.tiled.processed`).

    Parameters
    ----------
    reconstructor : Engine
        E.g. ``cdi_beamline.pipeline.Reconstructor(ReconstructorConfig(iterations=LIVE_ITERATIONS))``.
    store : StoreConfig, optional
    live : LiveConfig, optional
        Its ``data_dir`` is replaced by the store's (results and spool live beside the catalog).
        Its ``preprocess`` files (dark, flat, mask) are read and checked here, so that a bad
        one is refused before any scan (``CDIValueError``).
    write_raw : bool
        Also store raw runs (the RunEngine's documents, through a :class:`ShapeGuard`); False
        when another writer does.
    mask : (H, W) bool, optional
        Passed to :class:`LiveReconstruction`.
    close_at_exit : bool
        Close the session (results flushed, then the server stopped) when the main thread ends.

    Attributes
    ----------
    client : the Tiled run catalog;  uri : str;  server : EmbeddedTiled or None;
    callback : LiveReconstruction;  raw_writer (or None), derived_writer : SpoolingWriter

    Examples
    --------
    >>> session = LiveSession(Reconstructor(ReconstructorConfig(iterations=100)))  # doctest: +SKIP
    >>> session.subscribe(RE); RE(count([det], 100)); session.finish()            # doctest: +SKIP
    """

    def __init__(
        self,
        reconstructor: Engine,
        store: StoreConfig | None = None,
        live: LiveConfig | None = None,
        *,
        write_raw: bool = True,
        mask: np.ndarray | None = None,
        close_at_exit: bool = False,
    ):
        if live is not None and live.preprocess is not None:
            Preprocessor(live.preprocess, mask=mask)  # refuses unreadable or mismatched files now
        self.store = store or StoreConfig()
        self.server: EmbeddedTiled | None = None
        if self.store.uri is None and serving(self.store.data_dir) is not None:
            self.client = connect(data_dir=self.store.data_dir)  # `cdi-beamline serve` runs there
        elif self.store.uri is None:
            self.server = EmbeddedTiled(self.store.data_dir, port=self.store.port, catalog=self.store.catalog)
            self.client = self.server.client()
        else:
            self.client = connect(uri=self.store.uri, api_key=self.store.api_key)
        self.uri = str(self.client.context.api_uri).split("/api/")[0]
        dirs = DataDir.of(self.store.data_dir)
        self.raw_writer = self._writer(self.client, dirs.spool, self.store.raw_batch_size) if write_raw else None
        self.derived_writer = self._writer(processed(self.client), dirs.derived_spool, self.store.derived_batch_size)
        live_values = (live or LiveConfig()).model_dump()
        self.live = LiveConfig.build(**{**live_values, "data_dir": dirs.root})
        try:  # e.g. live.cluster unreachable: nothing started here may outlive the error
            self.callback = LiveReconstruction(reconstructor, self.derived_writer, self.live, mask=mask)
        except BaseException:
            for w in self.writers:
                w.close()
            if self.server is not None:
                self.server.close()
            raise
        self._tokens: list[tuple[Any, int]] = []
        self._closed = False
        if close_at_exit:
            call_at_exit(self.close)

    def _writer(self, catalog, spool: Path, batch_size: int) -> SpoolingWriter:
        s = self.store
        return make_writer(catalog, spool, batch_size=batch_size, retry_s=s.retry_s, retry_max_s=s.retry_max_s)

    @property
    def writers(self) -> list[SpoolingWriter]:
        """The raw writer (if any) and the derived writer."""
        return [w for w in (self.raw_writer, self.derived_writer) if w is not None]

    def subscribe(self, RE) -> None:
        """Subscribe the raw writer (if any) and the callback to a RunEngine or dispatcher."""
        if self.raw_writer is not None:
            self._tokens.append((RE, RE.subscribe(ShapeGuard(self.raw_writer))))
        self._tokens.append((RE, RE.subscribe(self.callback)))

    def finish(self, timeout: float | None = None) -> Finished:
        """Wait, at most ``timeout`` s (default ``store.close_wait_s``) in all, for every queued
        frame and for every run to reach Tiled."""
        deadline = time.monotonic() + (self.store.close_wait_s if timeout is None else timeout)
        frames_done = self.callback.flush(max(0.0, deadline - time.monotonic()), delivered=False)
        for w in self.writers:
            w.flush(max(0.0, deadline - time.monotonic()))
        return Finished(
            frames_done,
            sum(w.stats["runs_delivered"] for w in self.writers),
            sum(w.pending for w in self.writers),
            tuple(q for w in self.writers for q in w.quarantine),
        )

    def close(self) -> None:
        """Finish, unsubscribe, stop the worker and the embedded server (data stay)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.finish()
            for RE, token in self._tokens:
                RE.unsubscribe(token)
            self.callback.close()
            for w in self.writers:
                w.close()
        finally:  # the embedded server's thread would keep the process from exiting
            if self.server is not None:
                self.server.close()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
