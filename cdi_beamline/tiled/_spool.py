"""Writing runs to Tiled without ever holding up the scan: a local journal per writer and a
delivery thread.

The caller's thread (the RunEngine's, or the reconstruction worker's) only appends each
document as one JSON line (:mod:`._codec`) to its run's journal file; it never touches the
network. One delivery thread per writer builds the run's ``bluesky_tiled_plugins.TiledWriter``
and replays the journals, in order, into Tiled. A temporary failure (connection error, 5xx,
429) is retried with exponential backoff, the run being rewritten whole after the partial
copy in Tiled is deleted (so a resend never duplicates a row); a permanent failure (a 4xx
rejection, a document TiledWriter raises on) moves the run's journal to
``spool/quarantine/`` with a reason file, and delivery goes on with the next run. A run that
may not be in Tiled exactly once (409 Conflict after a retried request, or TiledWriter's note
of a forced retry of an append) is deleted and rewritten whole, at most ``MAX_REWRITES`` times.

Layout under ``spool_dir``::

    journal-<pid>-<token>/        one writer's folder, locked (``fcntl.flock`` on .lock) while it lives
        <time_ns>-<run uid>.jsonl  a run not yet delivered whole (deleted once it is)
    quarantine/<run uid>.jsonl     a run Tiled refused, and <run uid>.reason beside it

A writer that starts adopts the journals of folders whose lock is free (their writer died)
by renaming them into its own folder: a journal is only ever resent by one writer.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..config import StoreConfig
from ._codec import decode_line, encode_line
from ._server import reachable

__all__ = [
    "FORCED_RETRY",
    "MAX_REWRITES",
    "QUARANTINE",
    "SpoolingWriter",
    "make_writer",
    "quarantined",
    "temporary",
    "undelivered",
]

logger = logging.getLogger(__name__)

QUARANTINE = "quarantine"
"""Folder of ``spool_dir`` holding the runs Tiled refused (``<uid>.jsonl`` + ``<uid>.reason``)."""

_JOURNAL_GLOB = "journal-*"
_LOCK = ".lock"


def temporary(exc: BaseException) -> bool:
    """True for a failure that may pass (Tiled unreachable, timed out, 5xx, 429); False for
    a refusal that would recur on every resend (4xx, a document the writer raises on)."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def undelivered(spool_dir: str | Path) -> list[Path]:
    """The journals in ``spool_dir`` of runs not yet delivered whole to Tiled."""
    return sorted(Path(spool_dir).glob(f"{_JOURNAL_GLOB}/*.jsonl"), key=lambda p: p.name)


def quarantined(spool_dir: str | Path) -> list[tuple[str, str]]:
    """``(run uid, reason)`` of every run in ``spool_dir/quarantine``, oldest first."""
    folder = Path(spool_dir) / QUARANTINE
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        reason = path.with_suffix(".reason")
        out.append((path.stem, reason.read_text().strip() if reason.exists() else "(no reason file)"))
    return out


MAX_REWRITES = 3
"""A run written but maybe not exactly once (a retried request that had reached the server:
409 Conflict, or TiledWriter's note of a forced retry) is deleted and rewritten whole at most
this many times, then quarantined."""

FORCED_RETRY = "forcing a retry"
"""What TiledWriter writes in a run's ``notes`` when it retried an append that may have reached
the server (rows possibly duplicated)."""


class _Rewrite(Exception):
    """The run reached Tiled, but maybe not exactly once."""


def _conflict(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 409


@dataclass
class _Journal:
    """One run's journal file; ``size`` is written by the caller's thread, the rest by the
    delivery thread."""

    uid: str
    path: Path
    file: IO[bytes] | None = None  # open for appending while the run is open here
    size: int = 0  # bytes written
    closed: bool = False  # no more lines will come (stop written, or adopted)
    offset: int = 0  # bytes delivered in the current attempt
    writer: Callable[[str, dict], Any] | None = None  # None: (re)start from the first line
    lines: int = 0  # documents delivered in the current attempt
    doc: str = ""  # what the delivery was at (for a quarantine reason)
    attempts: int = 0
    rewrites: int = 0
    adopted: bool = False


class SpoolingWriter:
    """Document callback that journals every document locally and delivers runs to Tiled
    from a thread of its own; nothing it does raises into, or waits on the network for, the caller.

    Parameters
    ----------
    factory : callable () -> callable(name, doc)
        Builds the per-run writer, e.g. ``lambda: TiledWriter(client)``; called on the
        delivery thread only.
    spool_dir : path
        This writer's journal folder is made there; folders of dead writers are adopted.
    client : tiled client, optional
        Used to delete a partial copy of a run before it is rewritten, and to probe the server.
    retry_s, retry_max_s : float
        First and longest wait between delivery attempts while they fail temporarily (doubling;
        ``StoreConfig``'s).
    probe : callable () -> bool, optional
        True when the server answers; by default an HTTP GET of the client's API root.

    Attributes
    ----------
    stats : collections.Counter
        ``documents`` journaled, ``delivered`` to Tiled, ``runs_delivered``, ``retries``
        (temporary failures), ``runs_quarantined``, ``orphans`` (documents of an unknown run),
        ``journal_errors`` (a document that could not be journaled: logged, the scan goes on).
    quarantine : list of (run uid, reason)
        Runs this writer moved to quarantine.
    """

    def __init__(
        self,
        factory: Callable[[], Callable[[str, dict], Any]],
        spool_dir: str | Path,
        *,
        client=None,
        retry_s: float = StoreConfig.model_fields["retry_s"].default,
        retry_max_s: float = StoreConfig.model_fields["retry_max_s"].default,
        probe: Callable[[], bool] | None = None,
    ):
        self._factory = factory
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._client = client
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        if probe is None and client is not None:
            api = str(client.context.api_uri)
            probe = lambda: reachable(api)  # noqa: E731
        self._probe = probe or (lambda: True)
        self.stats: Counter = Counter()
        self.quarantine: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified after each delivery pass
        self._wake = threading.Event()
        self._journals: list[_Journal] = []  # in start order
        self._open: dict[str, _Journal] = {}  # run uid -> journal, runs open here
        self._owner: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._offline = False
        self._closed = False
        self.journal_dir = self.spool_dir / f"journal-{os.getpid()}-{secrets.token_hex(4)}"
        self.journal_dir.mkdir()
        self._lock_file = open(self.journal_dir / _LOCK, "w")  # noqa: SIM115 - held for the writer's life
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._adopt()
        self._thread = threading.Thread(target=self._loop, name="tiled-delivery", daemon=True)
        self._thread.start()

    # -- the caller's thread: journal only ------------------------------------------------------
    def _run_uid(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("stop", "descriptor"):
            return doc["run_start"]
        if name in ("event", "event_page", "stream_datum"):
            return self._owner.get(doc["descriptor"])
        if name in ("stream_resource", "resource"):
            return doc.get("run_start") or (next(iter(self._open)) if len(self._open) == 1 else None)
        if name in ("datum", "datum_page"):
            return self._owner.get(doc["resource"])
        return None

    def __call__(self, name: str, doc: dict) -> None:
        try:
            self._journal(name, doc)
        except Exception:  # noqa: BLE001 - never raise into the scan
            logger.exception("journaling a %s document failed; the scan goes on", name)
            self.stats["journal_errors"] += 1

    def _journal(self, name: str, doc: dict) -> None:
        with self._lock:
            self.stats["documents"] += 1
            uid = self._run_uid(name, doc)
            if name == "start":
                path = self.journal_dir / f"{time.time_ns():020d}-{uid}.jsonl"
                new = _Journal(str(uid), path, open(path, "ab"))  # noqa: SIM115 - closed at stop
                self._open[new.uid] = new
                self._journals.append(new)
            journal = self._open.get(uid) if uid is not None else None
            if journal is None:
                logger.error("tiled writer: %s document of an unknown run dropped", name)
                self.stats["orphans"] += 1
                return
            if name in ("descriptor", "stream_resource", "resource"):
                self._owner[doc["uid"]] = journal.uid
        line = encode_line(name, doc).encode()
        assert journal.file is not None
        journal.file.write(line)
        journal.file.flush()  # in the OS: survives this process dying
        if name == "stop":
            os.fsync(journal.file.fileno())
            journal.file.close()
        with self._lock:
            journal.size += len(line)
            if name == "stop":
                journal.closed = True
                del self._open[journal.uid]
                for key in [k for k, v in self._owner.items() if v == journal.uid]:
                    del self._owner[key]
        self._wake.set()

    # -- adoption ---------------------------------------------------------------------------------
    def _adopt(self) -> None:
        """Move the journals of dead writers' folders (lock free), and runs spooled by earlier
        versions, into this writer's folder."""
        for folder in sorted(self.spool_dir.glob(_JOURNAL_GLOB)):
            if folder == self.journal_dir or not folder.is_dir():
                continue
            try:
                with open(folder / _LOCK, "a") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live writer owns it
                    for path in sorted(folder.glob("*.jsonl")):
                        target = self.journal_dir / path.name
                        path.rename(target)
                        uid = target.stem.split("-", 1)[1]
                        self._journals.append(
                            _Journal(uid, target, size=target.stat().st_size, closed=True, adopted=True)
                        )
                    (folder / _LOCK).unlink(missing_ok=True)
                folder.rmdir()
            except OSError as exc:  # another writer adopted it first, or it is not empty
                logger.debug("journal folder %s not adopted: %s", folder, exc)
        for path in self.spool_dir.glob("*.jsonl"):
            # a run spooled by an earlier version (spool/<uid>.jsonl): no lock, the rename decides
            try:
                target = self.journal_dir / f"{path.stat().st_mtime_ns:020d}-{path.stem}.jsonl"
                path.rename(target)
            except OSError:  # another writer took it
                continue
            self._journals.append(_Journal(path.stem, target, size=target.stat().st_size, closed=True, adopted=True))
        self._journals.sort(key=lambda j: j.path.name)
        if self._journals:
            logger.info("adopted %d undelivered run(s) from earlier writers", len(self._journals))

    # -- the delivery thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        delay = self.retry_s
        failing = False  # the last pass stopped on a failure: back off until next_try
        next_try = 0.0
        while True:
            self._wake.wait(max(0.0, next_try - time.monotonic()) if failing else None)
            self._wake.clear()
            if self._closed:
                return
            if failing and time.monotonic() < next_try:
                continue  # backing off: documents keep arriving in the journal meanwhile
            failing = not self._deliver_all()
            delay = min(2 * delay, self.retry_max_s) if failing else self.retry_s
            next_try = time.monotonic() + delay
            with self._changed:
                self._changed.notify_all()

    def _deliver_all(self) -> bool:
        """One pass over the journals in order; False if it stopped on a temporary failure."""
        if self._offline and not self._probe():
            self.stats["retries"] += 1
            return False
        with self._lock:
            journals = list(self._journals)
        for journal in journals:
            if self._closed:
                return True
            try:
                self._deliver(journal)
            except _Rewrite as exc:  # written, but maybe not exactly once: again, whole
                journal.writer = None
                journal.rewrites += 1
                if journal.rewrites > MAX_REWRITES:
                    self._quarantine(journal, exc)
                    continue
                logger.warning("run %s is rewritten whole: %s", journal.uid, exc)
                self.stats["rewrites"] += 1
                return False
            except Exception as exc:  # noqa: BLE001 - sorted into temporary / permanent
                if _conflict(exc):
                    journal.writer = None
                    journal.rewrites += 1
                    if journal.rewrites <= MAX_REWRITES:  # our own request that timed out, retried
                        self.stats["rewrites"] += 1
                        return False
                if temporary(exc):
                    if not self._offline:
                        logger.warning("Tiled unreachable (%s): runs kept in %s", exc, self.journal_dir)
                    self._offline = True
                    journal.writer = None  # rewritten whole on the next attempt
                    self.stats["retries"] += 1
                    return False
                self._quarantine(journal, exc)
        self._offline = False
        return True

    def _deliver(self, journal: _Journal) -> None:
        with self._lock:
            closed, size = journal.closed, journal.size
        if journal.writer is None:
            if journal.attempts or journal.adopted:
                self._discard(journal.uid)
            journal.attempts += 1
            journal.offset = journal.lines = 0
            journal.doc = "building the writer"
            journal.writer = self._factory()
        if journal.offset < size:
            with open(journal.path, "rb") as f:
                f.seek(journal.offset)
                data = f.read(size - journal.offset)
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    logger.warning("run %s: a partly written last line is left out", journal.uid)
                    break
                journal.doc = "a line that is not a document"
                name, doc = decode_line(line.decode())
                journal.doc = f"the {name} document {journal.lines + 1}"
                journal.writer(name, doc)
                journal.offset += len(line)
                journal.lines += 1
                self.stats["delivered"] += 1
        if closed and (journal.offset >= size or journal.adopted):
            self._check_once(journal.uid)
            self._check_rows(journal.uid)
            journal.path.unlink(missing_ok=True)
            with self._lock:
                self._journals.remove(journal)
            self.stats["runs_delivered"] += 1
            if journal.attempts > 1 or journal.adopted:
                logger.info("run %s delivered to Tiled after %d attempt(s)", journal.uid, journal.attempts)

    def _check_once(self, uid: str) -> None:
        """Raise :class:`_Rewrite` when TiledWriter noted a forced retry of an append in run
        ``uid`` (its rows may then be in Tiled twice)."""
        if self._client is None or uid not in self._client:
            return
        notes = self._client[uid].metadata.get("notes") or []
        forced = [n for n in notes if FORCED_RETRY in str(n)]
        if forced:
            raise _Rewrite(forced[0])

    def _check_rows(self, uid: str) -> None:
        """Raise :class:`_Rewrite` when a stream of the delivered run ``uid`` holds arrays and
        table of different lengths (an append that reached Tiled but whose answer was lost,
        retried by the HTTP client: its rows are in Tiled twice)."""
        if self._client is None or uid not in self._client:
            return
        run = self._client[uid]
        for stream in run:
            parts = run[stream].base
            lengths = {}
            for key in parts:
                part = parts[key]
                if part.structure_family == "array":
                    lengths[key] = part.structure().shape[0]
                elif part.structure_family == "table":
                    lengths[key] = len(part.read(["time"]))
            if len(set(lengths.values())) > 1:
                raise _Rewrite(f"stream {stream!r} has rows of different lengths in Tiled: {lengths}")

    def _discard(self, uid: str) -> None:
        """Delete the partial copy of run ``uid`` in Tiled (from an earlier attempt)."""
        if self._client is not None and uid in self._client:
            self._client[uid].delete(recursive=True, external_only=False)

    def _quarantine(self, journal: _Journal, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        folder = self.spool_dir / QUARANTINE
        folder.mkdir(exist_ok=True)
        target = folder / f"{journal.uid}.jsonl"
        journal.path.rename(target)  # an open run goes on appending to the moved file
        target.with_suffix(".reason").write_text(f"{reason}\n(at {journal.doc} of the run)\n")
        with self._lock:
            self._journals.remove(journal)
        self.quarantine.append((journal.uid, reason))
        self.stats["runs_quarantined"] += 1
        logger.error("Tiled refused run %s (%s): quarantined in %s", journal.uid, reason, target)

    # -- waiting, closing -------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Runs with documents not yet in Tiled (an open run fully delivered so far is not)."""
        with self._lock:
            return sum(1 for j in self._journals if j.closed or j.offset < j.size or j.writer is None)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every journaled document is in Tiled (or quarantined) or ``timeout``
        passes; True if none is left."""
        deadline = time.monotonic() + timeout
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return False
            self._wake.set()
            with self._changed:
                self._changed.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        """Stop the delivery thread; undelivered journals stay and are adopted by the next writer."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():  # stuck in a Tiled request: keep the lock until this process ends
            logger.warning("tiled delivery still busy at close; its journals stay locked until exit")
            return
        with self._lock:
            for journal in self._open.values():
                if journal.file is not None and not journal.file.closed:
                    journal.file.close()
            left = len(self._journals)
        if left == 0:
            (self.journal_dir / _LOCK).unlink(missing_ok=True)
            self.journal_dir.rmdir()
        else:
            logger.warning("%d run(s) not yet in Tiled stay in %s", left, self.journal_dir)
        self._lock_file.close()  # releases the lock: the next writer adopts what is left


def make_writer(
    client,
    spool_dir: str | Path,
    *,
    batch_size: int = StoreConfig.model_fields["raw_batch_size"].default,
    retry_s: float = StoreConfig.model_fields["retry_s"].default,
    retry_max_s: float = StoreConfig.model_fields["retry_max_s"].default,
) -> SpoolingWriter:
    """A :class:`SpoolingWriter` delivering through ``bluesky_tiled_plugins.TiledWriter(client)``
    (its ``RunNormalizer`` included).

    ``batch_size`` rows (events / stream datums) are cached before each Tiled write.
    """
    from bluesky_tiled_plugins import TiledWriter

    return SpoolingWriter(
        lambda: TiledWriter(client, batch_size=batch_size),
        spool_dir,
        client=client,
        retry_s=retry_s,
        retry_max_s=retry_max_s,
    )
