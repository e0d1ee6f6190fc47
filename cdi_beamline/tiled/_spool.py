"""Writing runs to Tiled without losing one: a per-run writer behind a JSONL spool.

Raw and derived runs are written with ``bluesky_tiled_plugins.TiledWriter`` wrapped in a
:class:`SpoolingWriter`: if Tiled is unreachable, a run's documents go to a JSONL spool
(:mod:`._codec`) and are resent, in order, when the server answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._codec import decode_line, encode_line
from ._server import reachable

__all__ = ["SpoolingWriter", "make_writer"]

logger = logging.getLogger(__name__)


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
            probe = lambda: reachable(api)  # noqa: E731
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
                uid = str(doc["uid"])
                self._runs[uid] = _Run(uid, self._factory())
            run = self._runs.get(uid) if uid else None
            if run is None or uid is None:
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
                f.write(encode_line(name, doc))

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
        docs = [decode_line(line) for line in path.read_text().splitlines() if line]
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
