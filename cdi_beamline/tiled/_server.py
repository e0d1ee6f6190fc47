"""The embedded Tiled server of a data directory, its API key, and connecting to a server.

Layout of a data directory (``StoreConfig.data_dir``)::

    DIR/tiled/      catalog (SQLite ``catalog.db``, or ``catalog`` naming a PostgreSQL one),
                    internal data (``data/``, ``storage.duckdb``), logs, ``api_key``,
                    ``server.json``, ``location``
    DIR/results/    result HDF5 files of derived runs (readable by the server)
    DIR/spool/      journals of runs not yet delivered to Tiled, and quarantine/ (see ._spool)

Tiled keeps absolute file URIs in its catalog; ``location`` records the folder they were
written under, and a server started on a moved or copied data directory re-roots them first,
so that the directory serves its runs wherever it lies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import StoreConfig
from ..errors import CDIRuntimeError, CDIValueError
from ..results import PROCESSED

__all__ = [
    "CATALOG_KEY",
    "MIN_API_KEY_CHARS",
    "DataDir",
    "EmbeddedTiled",
    "close_at_exit",
    "connect",
    "reachable",
    "redact",
    "serving",
]

CATALOG_KEY = "runs"
"""Key of the run catalog in the embedded server (``/api/v1/metadata/runs``)."""

_WILDCARDS = ("", "0.0.0.0", "::")
"""Hosts that bind every interface; a process of this host reaches them on loopback."""

MIN_API_KEY_CHARS = 16
"""Shortest API key accepted from the user (a server reachable beyond loopback needs one)."""

_STARTUP_S = 120.0
"""How long a server may take to listen and answer ``/healthz``."""


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

    @property
    def sqlite_catalog(self) -> str:
        """URI of the default catalog: SQLite in ``tiled/catalog.db``."""
        return f"sqlite:///{self.tiled / 'catalog.db'}"

    @property
    def recorded_catalog(self) -> str | None:
        """The catalog URI given when the directory was last served, if it was not the default."""
        f = self.tiled / "catalog"
        return f.read_text().strip() or None if f.exists() else None

    @property
    def has_catalog(self) -> bool:
        """True when the directory has been served (its SQLite catalog or a recorded one)."""
        return (self.tiled / "catalog.db").exists() or self.recorded_catalog is not None


def close_at_exit(close: Callable[[], object]) -> None:
    """Call ``close()`` once the main thread has finished, before the interpreter joins
    non-daemon threads (a Tiled server's are, and plain ``atexit`` handlers run only after
    that join, which would then wait forever)."""

    def _wait_for_main() -> None:
        threading.main_thread().join()
        close()

    threading.Thread(target=_wait_for_main, name="cdi-close-at-exit", daemon=True).start()


class EmbeddedTiled:
    """A Tiled server in this process serving ``data_dir``: its catalog (SQLite in the
    directory by default, or PostgreSQL), its internal storage and its results folder.

    The API key is kept in ``data_dir/tiled/api_key`` (one key per process, see
    :func:`_process_api_key`) so that a data directory keeps one key across restarts;
    ``server.json`` tells other processes where the server listens.

    Parameters
    ----------
    data_dir : path
        Created if missing; the results folder is listed in the server's readable storage.
    port : int
        0 picks a free port.
    catalog : str, optional
        Catalog URI, e.g. ``postgresql://user@host:5432/db`` (the database must exist);
        recorded in the directory, so later servers of it use it too. None: the recorded
        one, else SQLite in ``tiled/catalog.db``.
    host : str
        Interface to listen on; another than loopback (``0.0.0.0``, the host's address)
        needs ``api_key``.
    api_key : str, optional
        The key clients must send (at least :data:`MIN_API_KEY_CHARS` letters and digits);
        None: the directory's own (generated on first use).

    Raises
    ------
    CDIValueError
        ``host`` beyond loopback without ``api_key``, or a key too short or not alphanumeric.
    CDIRuntimeError
        The catalog cannot be opened (database unreachable, refused), the directory is
        already served (``exclusive``), or this process already uses another API key.

    Examples
    --------
    >>> with EmbeddedTiled("cdi-data") as server:        # doctest: +SKIP
    ...     client = server.client()
    """

    def __init__(
        self,
        data_dir: str | Path,
        port: int = 0,
        *,
        exclusive: bool = False,
        catalog: str | None = None,
        host: str = StoreConfig.model_fields["host"].default,
        api_key: str | None = None,
    ):
        if api_key is not None and not (len(api_key) >= MIN_API_KEY_CHARS and api_key.isascii() and api_key.isalnum()):
            raise CDIValueError(
                f"the API key must be at least {MIN_API_KEY_CHARS} letters and digits (Tiled refuses other "
                f"characters; e.g. `openssl rand -hex 32`), got {len(api_key)} characters"
            )
        if api_key is None and not _is_loopback(host):
            raise CDIValueError(
                f"serving on {host} makes the catalog reachable from other hosts: give the API key "
                f"clients must send (--api-key, $TILED_SINGLE_USER_API_KEY or api_key in the configuration; "
                f"at least {MIN_API_KEY_CHARS} letters and digits)"
            )
        dirs = DataDir.of(data_dir)
        self._dirs = dirs
        self.data_dir, self.tiled_dir, self.results_dir, self.spool_dir = (
            dirs.root,
            dirs.tiled,
            dirs.results,
            dirs.spool,
        )
        for d in (self.tiled_dir, self.results_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.host = host
        self.uri = ""
        self._server: _TiledThread | None = None
        with _locked(self.tiled_dir):
            recorded = dirs.recorded_catalog
            self.catalog = catalog or recorded or dirs.sqlite_catalog
            self.api_key = _process_api_key(self.tiled_dir / "api_key", api_key)
            owner = _live_server(self.tiled_dir) if exclusive else None
            if owner is not None:
                raise CDIRuntimeError(
                    f"{self.data_dir} is already served by process {owner['pid']} at {owner['uri']}; "
                    "commands given this --data-dir use that server (stop it first to serve it here)"
                )
            self._start()
            if catalog is not None and catalog != recorded:  # once it opened: later servers use it
                _write_private(self.tiled_dir / "catalog", catalog)

    def start(self) -> None:
        """Start (or restart, on the same port) the server. It writes ``server.json`` unless
        another live server of the directory already has."""
        with _locked(self.tiled_dir):
            self._start()

    def _start(self) -> None:
        """:meth:`start`'s work; the caller holds the directory's lock."""
        if self._server is not None:
            return
        for log in ("access.log", "error.log"):  # Tiled appends to them: owner-only from the start
            os.close(os.open(self.tiled_dir / log, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
            (self.tiled_dir / log).chmod(0o600)
        other = _IN_PROCESS.get(self.catalog)
        if other is not None and not self.catalog.startswith("sqlite"):
            raise CDIRuntimeError(
                f"the catalog {redact(self.catalog)} is already served by this process at {other} "
                "(Tiled shares one connection pool per database and process): use that server"
            )
        location = self.tiled_dir / "location"
        previous = location.read_text().strip() if location.exists() else str(self.data_dir)
        if previous != str(self.data_dir):
            _reroot(self.catalog, Path(previous), self.data_dir)
        self._server = _TiledThread(self._dirs, self.catalog, self.api_key, self.host, self.port)
        location.write_text(str(self.data_dir))
        _redact_api_keys(logging.getLogger("uvicorn.access"))
        self.port = self._server.port
        self.uri = _local_uri(self.host, self.port)
        _IN_PROCESS[self.catalog] = self.uri
        if _live_server(self.tiled_dir) is None:
            (self.tiled_dir / "server.json").write_text(
                json.dumps({"uri": self.uri, "pid": os.getpid(), "root": str(self.data_dir)})
            )

    def stop(self) -> None:
        """Stop the server (the data stay); :meth:`start` serves them again on the same port.
        ``server.json`` is removed only if it names this server."""
        if self._server is None:
            return
        server, self._server = self._server, None
        _IN_PROCESS.pop(self.catalog, None)
        try:
            if self.tiled_dir.is_dir():  # gone when the data directory was deleted under us
                with _locked(self.tiled_dir):
                    if _server_json(self.tiled_dir) == {
                        "uri": self.uri,
                        "pid": os.getpid(),
                        "root": str(self.data_dir),
                    }:
                        (self.tiled_dir / "server.json").unlink()
        finally:
            server.close()  # always: its thread would keep the process from exiting

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
        return f"EmbeddedTiled({str(self.data_dir)!r}, catalog={redact(self.catalog)!r}, uri={self.uri!r})"


class _OneStorageRequestAtATime:
    """ASGI middleware: the requests that may use Tiled's tabular storage run one at a time.

    Tiled shares one DuckDB connection (a ``StaticPool``) among all requests. Two at once, e.g. the
    raw writer creating a stream's table while the derived writer appends to its own, broke that
    connection's transaction: 500s, then requests that never returned (three threads appending
    rows reproduce it in seconds; ``tests/test_tiled_server.py``). What is serialised: every
    request but a GET or HEAD, and those of ``/table/``; array and metadata reads run
    concurrently.
    """

    def __init__(self, app):
        self.app = app
        self._lock: asyncio.Lock | None = None  # made on the server's loop, at its first request

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"] in ("GET", "HEAD") and "/table/" not in scope["path"]):
            return await self.app(scope, receive, send)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self.app(scope, receive, send)


class _TiledThread:
    """A Tiled app (catalog, the data directory's storage, one API key) served by uvicorn on
    a thread of this process; ``port`` is the one it listens on."""

    def __init__(self, dirs: DataDir, catalog: str, api_key: str, host: str, port: int):
        import copy

        import httpx
        import uvicorn
        from tiled.catalog import from_uri as catalog_from_uri
        from tiled.config import Authentication, StreamingCacheConfig
        from tiled.server.app import build_app
        from tiled.server.logging_config import LOGGING_CONFIG
        from tiled.server.simple import ThreadedServer
        from tiled.storage import get_storage
        from tiled.utils import ensure_uri

        (dirs.tiled / "data").mkdir(exist_ok=True)
        storage_uri = ensure_uri(f"duckdb:///{dirs.tiled / 'storage.duckdb'}")
        log_config = copy.deepcopy(LOGGING_CONFIG)  # to the directory's log files, not the console
        for handler, filename in (("access", "access.log"), ("default", "error.log")):
            h = log_config["handlers"][handler]
            h["class"] = "logging.FileHandler"
            del h["stream"]
            h["filename"] = str(dirs.tiled / filename)
        try:
            tree = catalog_from_uri(
                catalog,
                writable_storage=[dirs.tiled / "data", storage_uri],
                readable_storage=[dirs.results],
                init_if_not_exists=not _sqlite_catalog_current(catalog),
                cache_config=StreamingCacheConfig(uri="memory").model_dump(),
            )
        except Exception as exc:  # noqa: BLE001 - tiled reports a failed init as its subprocess's stderr
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            raise CDIRuntimeError(
                f"cannot open the Tiled catalog {redact(catalog)}: {lines[-1] if lines else type(exc).__name__}"
            ) from None
        app = _OneStorageRequestAtATime(build_app(tree, authentication=Authentication(single_user_api_key=api_key)))
        self._server = ThreadedServer(uvicorn.Config(app, host=host, port=port, loop="asyncio", log_config=log_config))
        self._thread = threading.Thread(target=self._server.run, name="cdi-tiled-server")
        self._thread.start()
        try:
            deadline = time.monotonic() + _STARTUP_S
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise CDIRuntimeError(
                        f"the Tiled server did not start on {host}:{port} (see {dirs.tiled / 'error.log'})"
                    )
                time.sleep(0.05)
            self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
            health = f"{_local_uri(host, self.port)}/healthz"
            with httpx.Client(trust_env=False) as http:  # FastAPI serves once its startup is done
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if http.get(health, timeout=1.0).status_code == 200:
                            break
                    if not self._thread.is_alive() or time.monotonic() > deadline:
                        raise CDIRuntimeError(f"the Tiled server did not become ready (see {dirs.tiled / 'error.log'})")
                    time.sleep(0.05)
        except BaseException:
            self._halt()
            raise
        self._storage = get_storage(storage_uri)

    def _halt(self) -> None:
        self._server.should_exit = True
        self._thread.join()

    def close(self) -> None:
        """Stop serving and close the internal storage's connections."""
        try:
            self._halt()
        finally:
            self._storage.dispose()


def _is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: may resolve anywhere
        return False


def _local_uri(host: str, port: int) -> str:
    """The URI a process on this host uses to reach a server bound to ``host:port``."""
    if host in _WILDCARDS:
        host = "::1" if host == "::" else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _sqlite_catalog_current(catalog: str) -> bool:
    """True if ``catalog`` is a SQLite file already stamped with the revision this Tiled needs.

    Tiled's ``init_if_not_exists`` checks that in a subprocess (a second Python importing
    Tiled: ~2 s per start); an existing file is read here instead, with the standard library.
    Anything else (a new file, another revision, PostgreSQL) is left to Tiled's check.
    """
    import sqlite3

    from tiled.catalog.core import REQUIRED_REVISION

    if not catalog.startswith("sqlite:///"):
        return False
    path = Path(catalog.removeprefix("sqlite:///"))
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return False
    return rows == [(REQUIRED_REVISION,)]


def redact(catalog: str) -> str:
    """A catalog URI without its password (for messages and logs)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(catalog).render_as_string(hide_password=True)
    except ArgumentError:
        return catalog


def _reroot(catalog: str, old: Path, new: Path) -> None:
    """Rewrite the catalog's asset URIs under folder ``old`` to lie under ``new`` (a data
    directory moved or copied; Tiled stores absolute URIs). The new folder goes in as a plain
    path, as Tiled writes and reads its URIs (it does not unquote them); the old one is
    matched plain or percent-encoded (``Path.as_uri``)."""
    from tiled.utils import ensure_specified_sql_driver

    befores = list(dict.fromkeys((f"{old}/", f"{quote(str(old))}/")))

    def moved(uri: str) -> str:
        for before in befores:
            if before in uri:
                return uri.replace(before, f"{new}/", 1)
        return uri

    async def rewrite() -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(ensure_specified_sql_driver(catalog))
        try:
            async with engine.begin() as conn:
                rows = (await conn.execute(text("SELECT id, data_uri FROM assets"))).all()
                for asset_id, uri in rows:
                    if moved(uri) != uri:
                        await conn.execute(
                            text("UPDATE assets SET data_uri = :uri WHERE id = :id"),
                            {"uri": moved(uri), "id": asset_id},
                        )
        finally:
            await engine.dispose()

    try:
        with ThreadPoolExecutor(1) as pool:  # its own event loop, also where one runs here (Jupyter)
            pool.submit(asyncio.run, rewrite()).result()
    except Exception as exc:  # noqa: BLE001 - any database error: the server would serve broken links
        raise CDIRuntimeError(
            f"cannot re-root the catalog {redact(catalog)} from {old} to {new}: {exc or type(exc).__name__}"
        ) from None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (a key, a URI with a password)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


_EMBEDDED: dict[Path, EmbeddedTiled] = {}
_IN_PROCESS: dict[str, str] = {}
"""Catalog URI -> uri of the server of this process that serves it."""
_PROCESS_API_KEY: list[str] = []


def _process_api_key(key_file: Path, given: str | None = None) -> str:
    """The one API key of every embedded server in this process, written to ``key_file``.

    Tiled's server settings are a single object per process, and each app started sets
    its single-user key on it: with two servers in one process (a test session, a demo
    beside a profile), the first would then refuse its own clients (401). So the first
    server's key (``given``, else from its data directory, or new) is shared by all of them.

    Raises
    ------
    CDIRuntimeError
        ``given`` differs from the key this process already serves with.
    """
    if not _PROCESS_API_KEY:
        existing = key_file.read_text().strip() if key_file.exists() else ""
        _PROCESS_API_KEY.append(given or existing or secrets.token_hex(16))
    elif given is not None and given != _PROCESS_API_KEY[0]:
        raise CDIRuntimeError(
            "this process already serves a data directory with another API key (Tiled keeps one "
            "per process): serve this one from a process of its own (`cdi-beamline serve`)"
        )
    if not key_file.exists() or key_file.read_text().strip() != _PROCESS_API_KEY[0]:
        _write_private(key_file, _PROCESS_API_KEY[0])
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
    if uri is not None:
        client = _from_uri(uri, api_key)
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
        if not dirs.has_catalog:
            raise CDIValueError(f"no Tiled catalog in data_dir {str(dirs.root)!r} (run `cdi-beamline demo` first?)")
        _EMBEDDED[dirs.root] = server = EmbeddedTiled(dirs.root)
        close_at_exit(server.close)
    return _EMBEDDED[dirs.root].client()


def serving(data_dir: str | Path) -> tuple[str, str] | None:
    """``(uri, api_key)`` of a server answering for ``data_dir`` (``cdi-beamline serve``), or None."""
    tiled_dir = DataDir.of(data_dir).tiled
    owner = _live_server(tiled_dir)
    return (owner["uri"], (tiled_dir / "api_key").read_text().strip()) if owner is not None else None


@contextlib.contextmanager
def _locked(tiled_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``tiled_dir/lock`` (other processes wait; released at exit,
    also when a process dies)."""
    import fcntl

    with open(tiled_dir / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _server_json(tiled_dir: Path) -> dict[str, Any] | None:
    """The content of ``server.json``: ``{"uri": str, "pid": int, "root": str}``, or None (none,
    unreadable, or written for the directory this one was copied from)."""
    try:
        data = json.loads((tiled_dir / "server.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("uri"), str) or not isinstance(data.get("pid"), int):
        return None
    return data if data.get("root") == str(tiled_dir.parent) else None


def _live_server(tiled_dir: Path) -> dict[str, Any] | None:
    """``server.json`` if its process is alive and its uri answers, else None (stale or none)."""
    data = _server_json(tiled_dir)
    if data is None:
        return None
    try:
        os.kill(data["pid"], 0)
    except PermissionError:
        pass  # alive, another user's
    except (ProcessLookupError, OverflowError, ValueError):
        return None
    return data if reachable(data["uri"]) else None


_API_KEY_IN_URL = re.compile(r"(api_key=)[^&\s]+")


class _RedactApiKeys(logging.Filter):
    """Replaces ``api_key=...`` in an access-log record's arguments (the request line) by
    ``api_key=[redacted]``: a browse URL (``/?api_key=K``) must not put the key in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _API_KEY_IN_URL.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def _redact_api_keys(logger: logging.Logger) -> None:
    """Install :class:`_RedactApiKeys` on ``logger`` once (a logger's filters survive the
    logging configuration each new server applies)."""
    if not any(isinstance(f, _RedactApiKeys) for f in logger.filters):
        logger.addFilter(_RedactApiKeys())


def _run_catalog(uri: str, api_key: str):
    """The ``runs`` catalog of one of our servers, created on first use (by whichever
    process gets there first: a conflict means another one just created it)."""
    from tiled.client import from_uri
    from tiled.client.utils import ClientError
    from tiled.structures.core import Spec

    root = _from_uri(uri, api_key)
    if CATALOG_KEY not in root:
        try:
            root.create_container(CATALOG_KEY, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
        except ClientError:
            root = from_uri(uri, api_key=api_key)
            if CATALOG_KEY not in root:
                raise
    return root[CATALOG_KEY]


def _from_uri(uri: str, api_key: str | None):
    """``tiled.client.from_uri``, with an unreachable server or a refused key as one-line errors.

    Raises
    ------
    CDIRuntimeError
        The server does not answer (checked first: the client would retry for minutes), or
        refuses the API key.
    """
    import httpx
    from tiled.client import from_uri

    refused = (
        f"the Tiled server at {uri} refused the API key: give the key the server prints "
        "(or its data directory's tiled/api_key)"
        if api_key
        else f"the Tiled server at {uri} needs an API key (--api-key, or $TILED_API_KEY)"
    )
    if not reachable(uri, timeout=5.0):  # at once, not after the client's retries
        raise CDIRuntimeError(f"cannot reach the Tiled server at {uri} (no answer within 5 s)")
    try:
        return from_uri(uri, api_key=api_key)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (401, 403):
            raise CDIRuntimeError(f"{refused} ({exc.response.status_code})") from exc
        raise
    except RuntimeError as exc:  # the client's own refusal: the key did not authenticate
        if "requires API key authentication" in str(exc):
            raise CDIRuntimeError(refused) from exc
        raise
    except httpx.TransportError as exc:
        raise CDIRuntimeError(f"cannot reach the Tiled server at {uri}: {exc or type(exc).__name__}") from exc


def reachable(uri: str, timeout: float = 1.0) -> bool:
    """True when an HTTP server answers at ``uri`` (no retries)."""
    import httpx

    try:
        httpx.get(uri, timeout=timeout, trust_env=False)
        return True
    except httpx.HTTPError:
        return False
