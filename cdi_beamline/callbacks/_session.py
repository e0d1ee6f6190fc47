"""LiveSession: the wiring of one live-reconstruction setup (Tiled + writers + callback),
shared by ``cdi-beamline demo``, the 0MQ worker, the benchmark and IPython profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import LiveConfig, StoreConfig
from ..store import EmbeddedTiled, connect, make_writer, serving
from ._live import LiveReconstruction

__all__ = ["LiveSession"]


class LiveSession:
    """Tiled (``store.uri``; else the server already serving ``store.data_dir``; else an
    embedded one started here), a raw-run writer, and a
    :class:`LiveReconstruction` whose derived runs go to the same server.

    Parameters
    ----------
    reconstructor : Reconstructor | ReconstructorConfig | None
    store : StoreConfig, optional
    live : LiveConfig, optional
        ``data_dir`` defaults to the store's.
    write_raw : bool
        Also store raw runs (the RunEngine's documents); False when another writer does.
    mask, device : passed to :class:`LiveReconstruction`.

    Examples
    --------
    >>> session = LiveSession(ReconstructorConfig(iterations=100))   # doctest: +SKIP
    >>> session.subscribe(RE); RE(count([det], 100)); session.finish()  # doctest: +SKIP
    """

    def __init__(
        self,
        reconstructor: Any = None,
        store: StoreConfig | None = None,
        live: LiveConfig | None = None,
        *,
        write_raw: bool = True,
        mask=None,
        device: str = "auto",
    ):
        self.store = store or StoreConfig()
        self.server: EmbeddedTiled | None = None
        if self.store.uri is None and serving(self.store.data_dir) is not None:
            self.client = connect(data_dir=self.store.data_dir)  # `cdi-beamline serve` runs there
        elif self.store.uri is None:
            self.server = EmbeddedTiled(self.store.data_dir, port=self.store.port)
            self.client = self.server.client()
        else:
            self.client = connect(uri=self.store.uri, api_key=self.store.api_key)
        self.uri = str(self.client.context.api_uri).split("/api/")[0]
        data_dir = Path(self.store.data_dir).expanduser().resolve()
        spool = data_dir / "spool"
        self.raw_writer = (
            make_writer(self.client, spool, batch_size=self.store.raw_batch_size, retry_s=self.store.retry_s)
            if write_raw
            else None
        )
        self.derived_writer = make_writer(
            self.client, spool, batch_size=self.store.derived_batch_size, retry_s=self.store.retry_s
        )
        live = live or LiveConfig(data_dir=data_dir)
        if "data_dir" not in live.model_fields_set:
            live = live.model_copy(update={"data_dir": data_dir})
        self.callback = LiveReconstruction(reconstructor, self.derived_writer, live, mask=mask, device=device)
        self._tokens: list[tuple[Any, int]] = []

    def subscribe(self, RE) -> None:
        """Subscribe the raw writer (if any) and the callback to a RunEngine or dispatcher."""
        if self.raw_writer is not None:
            self._tokens.append((RE, RE.subscribe(self.raw_writer)))
        self._tokens.append((RE, RE.subscribe(self.callback)))

    def finish(self, timeout: float = 600.0) -> bool:
        """Wait for every queued frame and every spooled document; True if all done."""
        done = self.callback.flush(timeout)
        for w in (self.raw_writer, self.derived_writer):
            if w is not None:
                done = w.flush(timeout) and done
        return done

    def close(self) -> None:
        """Finish, unsubscribe, stop the worker and the embedded server (data stay)."""
        self.finish()
        for RE, token in self._tokens:
            RE.unsubscribe(token)
        self.callback.close()
        for w in (self.raw_writer, self.derived_writer):
            if w is not None:
                w.close()
        if self.server is not None:
            self.server.close()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
