"""Tiled storage: the embedded server, writers that survive outages, result queries.

Layout of a data directory (``StoreConfig.data_dir``)::

    DIR/tiled/      catalog (SQLite), internal data, logs, ``api_key``, ``server.json``
    DIR/results/    result HDF5 files of derived runs (readable by the server)
    DIR/spool/      JSON Lines of runs whose documents could not be written yet

Raw and derived runs are written with ``bluesky_tiled_plugins.TiledWriter`` wrapped in a
:class:`SpoolingWriter`: if Tiled is unreachable, a run's documents go to a JSONL spool
and are resent, in order, when the server answers again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EmbeddedTiled",
    "SpoolingWriter",
    "connect",
    "make_writer",
    "serving",
    "derived_runs",
    "load_results",
    "load_raw_frames",
    "DERIVED_KIND",
]

logger = logging.getLogger(__name__)

DERIVED_KIND = "cdi_reconstruction"
"""Value of ``start.cdi_kind`` in every derived run (search key for all results)."""


CATALOG_KEY = "runs"
"""Key of the run catalog in the embedded server (``/api/v1/metadata/runs``)."""


def _dirs(data_dir: str | Path) -> tuple[Path, Path, Path, Path]:
    root = Path(data_dir).expanduser().resolve()
    return root, root / "tiled", root / "results", root / "spool"


class EmbeddedTiled:
    """A local Tiled server (SQLite catalog + files) serving ``data_dir``.

    The API key is kept in ``data_dir/tiled/api_key`` (shared by all embedded servers of one
    process, see :func:`_process_api_key`) so that a data directory keeps one
    key across restarts; ``server.json`` tells other processes where the server listens.

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
        self.data_dir, self.tiled_dir, self.results_dir, self.spool_dir = _dirs(data_dir)
        for d in (self.tiled_dir, self.results_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.api_key = _process_api_key(self.tiled_dir / "api_key")
        self.port = port
        self._server = None
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
    ValueError
        When neither ``uri`` nor ``data_dir`` is given, or ``data_dir`` does not exist
        and holds no catalog.
    """
    from tiled.client import from_uri

    if uri is not None:
        client = from_uri(uri, api_key=api_key)
        if "CatalogOfBlueskyRuns" in {spec.name for spec in client.specs} or CATALOG_KEY not in client:
            return client
        return client[CATALOG_KEY]
    if data_dir is None:
        raise ValueError("connect: give a Tiled server uri or a data_dir")
    root, tiled_dir, _, _ = _dirs(data_dir)
    running = serving(root)
    if running is not None:
        return _run_catalog(*running)
    if root not in _EMBEDDED:
        if not (tiled_dir / "catalog.db").exists():
            raise ValueError(f"no Tiled catalog in data_dir {str(root)!r} (run `cdi-beamline demo` first?)")
        _EMBEDDED[root] = server = EmbeddedTiled(root)
        # the server thread is not a daemon: stop it before the interpreter joins threads
        # (plain atexit handlers run only after that join, which would wait forever)
        threading._register_atexit(server.close)
    return _EMBEDDED[root].client()


def serving(data_dir: str | Path) -> tuple[str, str] | None:
    """``(uri, api_key)`` of a server answering for ``data_dir`` (``cdi-beamline serve``), or None."""
    _, tiled_dir, _, _ = _dirs(data_dir)
    server_json = tiled_dir / "server.json"
    if not server_json.exists():
        return None
    uri = json.loads(server_json.read_text())["uri"]
    return (uri, (tiled_dir / "api_key").read_text().strip()) if _reachable(uri) else None


def _run_catalog(uri: str, api_key: str):
    """The ``runs`` catalog of one of our servers, created on first use."""
    from tiled.client import from_uri
    from tiled.structures.core import Spec

    root = from_uri(uri, api_key=api_key)
    if CATALOG_KEY not in root:
        root.create_container(CATALOG_KEY, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
    return root[CATALOG_KEY]


def _reachable(uri: str, timeout: float = 1.0) -> bool:
    """True when an HTTP server answers at ``uri`` (no retries)."""
    import httpx

    try:
        httpx.get(uri, timeout=timeout, trust_env=False)
        return True
    except httpx.HTTPError:
        return False


# --- writing, with a spool for outages ---------------------------------------------------


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {
            "__ndarray__": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii"),
            "dtype": obj.dtype.str,
            "shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot spool {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if "__ndarray__" in obj:
        data = base64.b64decode(obj["__ndarray__"])
        return np.frombuffer(data, dtype=obj["dtype"]).reshape(obj["shape"]).copy()
    return obj


class _Run:
    __slots__ = ("uid", "writer", "buffer", "spool", "complete", "lock")

    def __init__(self, uid: str, writer: Callable):
        self.uid = uid
        self.writer = writer
        self.buffer: list[tuple[str, dict]] = []
        self.spool: Path | None = None
        self.complete = False
        self.lock = threading.Lock()


class SpoolingWriter:
    """Document callback that writes runs through a fresh writer per run and never loses one.

    Every document of a run is kept until the run's stop document is written. If the
    writer raises (Tiled unreachable, ...), the run so far goes to ``spool_dir/<uid>.jsonl``
    and the rest of the run is appended there; once the run is complete and the server
    answers again, the partial copy in Tiled is deleted and the spool resent in order by a
    background thread (every ``retry_s``). Nothing raises into the caller.

    Parameters
    ----------
    factory : callable () -> callable(name, doc)
        Builds the per-run writer, e.g. ``lambda: TiledWriter(client)``.
    spool_dir : path
    client : tiled client, optional
        Used to delete a partial run before it is resent and to probe the server.
    retry_s : float
    probe : callable () -> bool, optional
        True when the server answers; by default an HTTP GET of the client's API root.

    Attributes
    ----------
    stats : collections.Counter
        ``documents`` received, ``written`` directly, ``spooled``, ``resent``,
        ``runs_spooled``, ``runs_resent``.
    """

    def __init__(
        self,
        factory: Callable[[], Callable[[str, dict], Any]],
        spool_dir: str | Path,
        *,
        client=None,
        retry_s: float = 2.0,
        probe: Callable[[], bool] | None = None,
    ):
        self._factory = factory
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._client = client
        self.retry_s = retry_s
        if probe is None and client is not None:
            api = str(client.context.api_uri)
            probe = lambda: _reachable(api)  # noqa: E731
        self._probe = probe or (lambda: True)
        self._lock = threading.Lock()
        self._resend_lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._owner: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._offline = False
        self._pending: list[Path] = sorted(self.spool_dir.glob("*.jsonl"))
        self.stats: Counter = Counter()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self._pending:
            self._start_thread()

    # -- routing -------------------------------------------------------------------------
    def _run_uid(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("stop", "descriptor"):
            return doc["run_start"]
        if name in ("event", "event_page", "stream_datum"):
            return self._owner.get(doc["descriptor"])
        if name in ("stream_resource", "resource"):
            return doc.get("run_start") or None
        if name == "datum":
            return self._owner.get(doc["resource"])
        if name == "datum_page":
            return self._owner.get(doc["resource"])
        return None

    def __call__(self, name: str, doc: dict) -> None:
        with self._lock:
            self.stats["documents"] += 1
            uid = self._run_uid(name, doc)
            if uid is None and name in ("stream_resource", "resource") and len(self._runs) == 1:
                uid = next(iter(self._runs))
            if name == "start":
                self._runs[uid] = _Run(uid, self._factory())
            run = self._runs.get(uid) if uid else None
            if run is None:
                logger.error("spooling writer: %s document of an unknown run dropped", name)
                self.stats["orphans"] += 1
                return
            if name == "descriptor":
                self._owner[doc["uid"]] = uid
            elif name in ("stream_resource", "resource"):
                self._owner[doc["uid"]] = uid
            offline = self._offline
        with run.lock:
            if run.spool is None and offline and name == "start" and not self._probe():
                self._to_spool(run, [(name, doc)], reason="server unreachable")
            elif run.spool is None:
                run.buffer.append((name, doc))
                try:
                    run.writer(name, doc)
                    self.stats["written"] += 1
                    self._offline = False
                except Exception as exc:  # noqa: BLE001 - any writer failure is spooled
                    self._offline = True
                    self._to_spool(run, run.buffer, reason=f"{type(exc).__name__}: {exc}")
                    run.buffer = []
            else:
                self._append(run.spool, [(name, doc)])
                self.stats["spooled"] += 1
            if name == "stop":
                run.complete = True
                with self._lock:
                    del self._runs[uid]
                    for k in [k for k, v in self._owner.items() if v == uid]:
                        del self._owner[k]
                    if run.spool is not None:
                        self._pending.append(run.spool)
                        self._start_thread()
                        self._wake.set()

    def _to_spool(self, run: _Run, docs: list[tuple[str, dict]], reason: str) -> None:
        run.spool = self.spool_dir / f"{run.uid}.jsonl"
        logger.warning("Tiled write failed (%s): spooling run %s to %s", reason, run.uid, run.spool)
        self._append(run.spool, docs)
        self.stats["spooled"] += len(docs)
        self.stats["runs_spooled"] += 1

    @staticmethod
    def _append(path: Path, docs: list[tuple[str, dict]]) -> None:
        with open(path, "a") as f:
            for name, doc in docs:
                f.write(json.dumps([name, doc], default=_encode) + "\n")

    # -- resending -----------------------------------------------------------------------
    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._retry_loop, name="tiled-spool", daemon=True)
            self._thread.start()

    def _retry_loop(self) -> None:
        while not self._closed:
            self.resend()
            with self._lock:
                if not self._pending:
                    return
            self._wake.wait(self.retry_s)
            self._wake.clear()

    def resend(self) -> int:
        """Try to resend every complete spooled run now; returns how many remain."""
        with self._resend_lock:
            return self._resend()

    def _resend(self) -> int:
        with self._lock:
            pending = list(self._pending)
        for path in pending:
            if not self._probe():
                break
            try:
                n = self._resend_one(path)
            except Exception as exc:  # noqa: BLE001 - retried later
                logger.warning("resending %s failed (%s); will retry", path.name, exc)
                break
            path.unlink()
            with self._lock:
                self._pending.remove(path)
                self.stats["resent"] += n
                self.stats["runs_resent"] += 1
            logger.info("resent spooled run %s (%d documents)", path.stem, n)
        with self._lock:
            return len(self._pending)

    def _resend_one(self, path: Path) -> int:
        docs = [json.loads(line, object_hook=_decode) for line in path.read_text().splitlines() if line]
        uid = docs[0][1]["uid"]
        if self._client is not None and uid in self._client:
            self._client[uid].delete(recursive=True, external_only=False)
        writer = self._factory()
        for name, doc in docs:
            writer(name, doc)
        return len(docs)

    def flush(self, timeout: float = 60.0) -> bool:
        """Resend spooled runs until none is left or ``timeout`` passes; True if none left."""
        deadline = time.monotonic() + timeout
        while True:
            if self.resend() == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(min(self.retry_s, 0.5))

    @property
    def pending(self) -> int:
        """Complete runs waiting in the spool."""
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Stop the retry thread (spool files stay and are resent by the next writer)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def make_writer(client, spool_dir: str | Path, *, batch_size: int = 10000, retry_s: float = 2.0) -> SpoolingWriter:
    """A :class:`SpoolingWriter` around ``bluesky_tiled_plugins.TiledWriter(client)``.

    ``batch_size`` rows (events / stream datums) are cached before each Tiled write.
    """
    from bluesky_tiled_plugins import TiledWriter

    return SpoolingWriter(
        lambda: TiledWriter(client, batch_size=batch_size),
        spool_dir,
        client=client,
        retry_s=retry_s,
    )


# --- queries ------------------------------------------------------------------------------


def derived_runs(client, raw_uid: str | None = None) -> list:
    """Derived (reconstruction) runs, oldest first; only those of ``raw_uid`` if given."""
    from tiled.queries import Key

    results = client.search(Key("start.cdi_kind") == DERIVED_KIND)
    if raw_uid is not None:
        results = results.search(Key("start.parent_uid") == raw_uid)
    runs = [results[uid] for uid in results]
    return sorted(runs, key=lambda r: r.metadata["start"]["time"])


def _v3(run):
    # a run's client may come back in the v2 (databroker) flavour once ``.v2`` was used
    return getattr(run, "v3", run)


def load_results(client, derived_uid: str, stream: str = "primary") -> dict[str, Any]:
    """All results of a derived run as numpy arrays.

    Returns
    -------
    dict
        ``amplitude``, ``phase`` (N, H, W) float32; ``support`` (N, H, W) bool;
        ``chi2`` (N,) float64; ``raw_seq_num`` (N,) int; ``status``, ``reason`` (N,) str;
        ``start``, ``stop``: the run's documents (metadata).
    """
    run = _v3(client[derived_uid])
    md = run.metadata
    if md["start"].get("cdi_kind") != DERIVED_KIND:
        raise ValueError(f"run {derived_uid!r} is not a derived reconstruction run")
    out: dict[str, Any] = {"start": dict(md["start"]), "stop": dict(md.get("stop") or {})}
    if stream not in run:
        empty = np.zeros((0, 0, 0), np.float32)
        out.update(
            amplitude=empty,
            phase=empty,
            support=empty.astype(bool),
            chi2=np.zeros(0),
            raw_seq_num=np.zeros(0, int),
            status=np.array([], str),
            reason=np.array([], str),
        )
        return out
    node = run[stream]
    table = node.read()
    out["chi2"] = np.asarray(table["chi2"], dtype=np.float64)
    out["raw_seq_num"] = np.asarray(table["raw_seq_num"], dtype=np.int64)
    out["status"] = np.asarray(table["status"]).astype(str)
    out["reason"] = np.asarray(table["reason"]).astype(str)
    for key, dtype in (("amplitude", np.float32), ("phase", np.float32), ("support", bool)):
        out[key] = np.asarray(table[key]).astype(dtype)
    return out


def load_raw_frames(client, raw_uid: str, image_key: str | None = None, stream: str = "primary"):
    """The detector frames of a raw run, for reprocessing.

    Returns
    -------
    frames : np.ndarray (N, H, W) float32
    seq_num : np.ndarray (N,) int
    image_key : str
        The data key read (``image_key``, or the first 2D field of the stream).
    """
    run = _v3(client[raw_uid])
    if stream not in run:
        raise ValueError(f"raw run {raw_uid!r} has no stream {stream!r}")
    node = run[stream]
    data_keys = node.metadata.get("data_keys", {})
    if image_key is None:
        image_key = next(
            (k for k, v in data_keys.items() if len([s for s in v.get("shape", []) if s not in (1, None)]) == 2),
            None,
        )
        if image_key is None:
            raise ValueError(f"raw run {raw_uid!r}: no 2D image field in stream {stream!r}")
    elif image_key not in data_keys:
        raise ValueError(f"raw run {raw_uid!r}: no field {image_key!r} in stream {stream!r} (has {sorted(data_keys)})")
    frames = np.asarray(node[image_key].read(), dtype=np.float32)
    frames = frames.reshape(frames.shape[0], *frames.shape[-2:])
    seq_num = np.asarray(node["seq_num"].read(), dtype=np.int64) if "seq_num" in node else np.arange(1, len(frames) + 1)
    return frames, seq_num, image_key
