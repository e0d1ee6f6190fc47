"""The embedded Tiled server of a data directory, its API key, and connecting to a server.

Layout of a data directory (``StoreConfig.data_dir``)::

    DIR/tiled/      catalog (SQLite), internal data, logs, ``api_key``, ``server.json``
    DIR/results/    result HDF5 files of derived runs (readable by the server)
    DIR/spool/      journals of runs not yet delivered to Tiled, and quarantine/ (see ._spool)
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CDIValueError
from ..results import PROCESSED

__all__ = ["CATALOG_KEY", "DataDir", "EmbeddedTiled", "close_at_exit", "connect", "reachable", "serving"]

CATALOG_KEY = "runs"
"""Key of the run catalog in the embedded server (``/api/v1/metadata/runs``)."""


@dataclass(frozen=True)
class DataDir:
    """The folders of a data directory (see the module docstring)."""

    root: Path
    tiled: Path
    results: Path
    spool: Path

    @classmethod
    def of(cls, data_dir: str | Path) -> DataDir:
        root = Path(data_dir).expanduser().resolve()
        return cls(root, root / "tiled", root / "results", root / "spool")

    @property
    def derived_spool(self) -> Path:
        """The journals of derived runs: apart from the raw runs', since they are delivered to
        another container (a writer adopts only journals bound where it writes)."""
        return self.spool / PROCESSED

    @property
    def spools(self) -> tuple[Path, Path]:
        """Every journal folder: raw runs', derived runs'."""
        return self.spool, self.derived_spool


def close_at_exit(close: Callable[[], object]) -> None:
    """Call ``close()`` once the main thread has finished, before the interpreter joins
    non-daemon threads (a Tiled server's are, and plain ``atexit`` handlers run only after
    that join, which would then wait forever)."""

    def _wait_for_main() -> None:
        threading.main_thread().join()
        close()

    threading.Thread(target=_wait_for_main, name="cdi-close-at-exit", daemon=True).start()


class EmbeddedTiled:
    """A local Tiled server (SQLite catalog + files) serving ``data_dir``.

    The API key is kept in ``data_dir/tiled/api_key`` (one key per process, see
    :func:`_process_api_key`) so that a data directory keeps one key across restarts;
    ``server.json`` tells other processes where the server listens.

    Parameters
    ----------
    data_dir : path
        Created if missing; the results folder is listed in the server's readable storage.
    port : int
        0 picks a free port.

    Examples
    --------
    >>> with EmbeddedTiled("cdi-data") as server:        # doctest: +SKIP
    ...     client = server.client()
    """

    def __init__(self, data_dir: str | Path, port: int = 0):
        dirs = DataDir.of(data_dir)
        self.data_dir, self.tiled_dir, self.results_dir, self.spool_dir = (
            dirs.root,
            dirs.tiled,
            dirs.results,
            dirs.spool,
        )
        for d in (self.tiled_dir, self.results_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.api_key = _process_api_key(self.tiled_dir / "api_key")
        self.port = port
        self.uri = ""
        self._server: Any = None
        self.start()

    def start(self) -> None:
        """Start (or restart, on the same port) the server."""
        from tiled.server import SimpleTiledServer

        if self._server is not None:
            return
        self._server = SimpleTiledServer(
            directory=self.tiled_dir,
            api_key=self.api_key,
            port=self.port,
            readable_storage=[self.results_dir],
        )
        self.port = self._server.port
        self.uri = f"http://127.0.0.1:{self.port}"
        (self.tiled_dir / "server.json").write_text(json.dumps({"uri": self.uri, "pid": os.getpid()}))

    def stop(self) -> None:
        """Stop the server (the data stay); :meth:`start` serves them again on the same port."""
        if self._server is None:
            return
        server_json = self.tiled_dir / "server.json"
        if server_json.exists():
            server_json.unlink()
        self._server.close()
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self):
        """A new client of the server's run catalog: the container ``runs`` (created on first
        use) with the ``CatalogOfBlueskyRuns`` spec, so databroker-style access works
        (``catalog[-1]``, ``catalog[scan_id]``, ``catalog.search(...)``)."""
        return _run_catalog(self.uri, self.api_key)

    def close(self) -> None:
        """Stop the server; the data stay in ``data_dir``."""
        self.stop()

    def __enter__(self) -> EmbeddedTiled:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedTiled({str(self.data_dir)!r}, uri={self.uri!r})"


_EMBEDDED: dict[Path, EmbeddedTiled] = {}
_PROCESS_API_KEY: list[str] = []


def _process_api_key(key_file: Path) -> str:
    """The one API key of every embedded server in this process, written to ``key_file``.

    Tiled's server settings are a single object per process, and each app started sets
    its single-user key on it: with two servers in one process (a test session, a demo
    beside a profile), the first would then refuse its own clients (401). So the first
    server's key (from its data directory, or new) is shared by all of them.
    """
    if not _PROCESS_API_KEY:
        existing = key_file.read_text().strip() if key_file.exists() else ""
        _PROCESS_API_KEY.append(existing or secrets.token_hex(16))
    if not key_file.exists() or key_file.read_text().strip() != _PROCESS_API_KEY[0]:
        key_file.write_text(_PROCESS_API_KEY[0])
        key_file.chmod(0o600)
    return _PROCESS_API_KEY[0]


def connect(uri: str | None = None, api_key: str | None = None, data_dir: str | Path | None = None):
    """A Tiled client: of the server at ``uri``, or of ``data_dir``'s embedded server.

    With ``uri``: the node at ``uri``, or its ``runs`` catalog when ``uri`` is the root of
    a server started by this package. With ``data_dir``: a server already serving it
    (``cdi-beamline serve``) is reused; otherwise one is started in this process and
    stopped at exit.

    Raises
    ------
    CDIValueError
        When neither ``uri`` nor ``data_dir`` is given, or ``data_dir`` holds no catalog.
    """
    from tiled.client import from_uri

    if uri is not None:
        client = from_uri(uri, api_key=api_key)
        if "CatalogOfBlueskyRuns" in {spec.name for spec in client.specs} or CATALOG_KEY not in client:
            return client
        return client[CATALOG_KEY]
    if data_dir is None:
        raise CDIValueError("connect: give a Tiled server uri or a data_dir")
    dirs = DataDir.of(data_dir)
    running = serving(dirs.root)
    if running is not None:
        return _run_catalog(*running)
    if dirs.root not in _EMBEDDED:
        if not (dirs.tiled / "catalog.db").exists():
            raise CDIValueError(f"no Tiled catalog in data_dir {str(dirs.root)!r} (run `cdi-beamline demo` first?)")
        _EMBEDDED[dirs.root] = server = EmbeddedTiled(dirs.root)
        close_at_exit(server.close)
    return _EMBEDDED[dirs.root].client()


def serving(data_dir: str | Path) -> tuple[str, str] | None:
    """``(uri, api_key)`` of a server answering for ``data_dir`` (``cdi-beamline serve``), or None."""
    tiled_dir = DataDir.of(data_dir).tiled
    server_json = tiled_dir / "server.json"
    if not server_json.exists():
        return None
    uri = json.loads(server_json.read_text())["uri"]
    return (uri, (tiled_dir / "api_key").read_text().strip()) if reachable(uri) else None


def _run_catalog(uri: str, api_key: str):
    """The ``runs`` catalog of one of our servers, created on first use."""
    from tiled.client import from_uri
    from tiled.structures.core import Spec

    root = from_uri(uri, api_key=api_key)
    if CATALOG_KEY not in root:
        root.create_container(CATALOG_KEY, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
    return root[CATALOG_KEY]


def reachable(uri: str, timeout: float = 1.0) -> bool:
    """True when an HTTP server answers at ``uri`` (no retries)."""
    import httpx

    try:
        httpx.get(uri, timeout=timeout, trust_env=False)
        return True
    except httpx.HTTPError:
        return False
