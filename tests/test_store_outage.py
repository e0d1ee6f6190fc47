"""Storage through Tiled outages, against a real Tiled server in its own process
(``cdi-beamline serve``), killed (SIGKILL) and restarted by its process id.

One server per module. Tiled's client retries (``TILED_RETRY_*``) and the writers' backoff
(``retry_max_s``) are made short so that each outage lasts longer than every one of them.
The RunEngine's cost per document is measured (printed; recorded in docs/reliability.md),
not asserted: what is asserted is that every scan completes and that afterwards the raw and
derived events in Tiled are those sent, each once.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky.plans import count
from helpers import ListSource
from pgserver import catalog_of

from cdi_beamline.callbacks import LiveSession
from cdi_beamline.config import LiveConfig, ReconstructorConfig, StoreConfig
from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.pipeline import Reconstructor
from cdi_beamline.tiled import (
    connect,
    derived_runs,
    encode_document,
    load_raw_frames,
    load_results,
    make_writer,
    odd_stream,
    quarantined,
)

N = 4  # frames per scan
RETRY = {"TILED_RETRY_ATTEMPTS": "2", "TILED_RETRY_TIMEOUT": "2"}  # Tiled's client: give up after ~2 s
OUTAGE_S = 3.0  # each outage outlasts TILED_RETRY_TIMEOUT and the writers' retry_max_s (1 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TiledProcess:
    """``cdi-beamline serve --data-dir DIR --port P [--catalog URI]`` in a subprocess; :meth:`kill` by pid."""

    def __init__(self, data_dir: Path, catalog: str | None = None):
        self.data_dir = data_dir
        self.catalog = catalog
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.start()
        self.api_key = (data_dir / "tiled" / "api_key").read_text().strip()
        connect(data_dir=data_dir)  # creates the run catalog

    def start(self) -> None:
        """Start the server; its output goes to ``serve.log`` (a pipe nobody drained would fill
        with uvicorn's access log and stall the server)."""
        log = self.data_dir / "serve.log"
        with log.open("a") as out:
            start = out.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdi_beamline.cli", "serve", "--data-dir", str(self.data_dir)]
                + ["--port", str(self.port)]
                + (["--catalog", self.catalog] if self.catalog else []),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            with log.open() as f:
                f.seek(start)
                if any(line.startswith("Ctrl-C") for line in f):
                    return
            time.sleep(0.1)
        with log.open() as f:
            f.seek(start)
            raise AssertionError("serve did not start:\n" + f.read())

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def client(self):
        return connect(uri=self.uri, api_key=self.api_key)

    def store(self, **kw) -> StoreConfig:
        return StoreConfig(
            data_dir=self.data_dir, uri=self.uri, api_key=self.api_key, retry_s=0.1, retry_max_s=1.0, **kw
        )


@pytest.fixture(scope="module")
def tiled_process(request, tmp_path_factory):
    server = TiledProcess(tmp_path_factory.mktemp("served"), catalog_of(request))
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(60)


@pytest.fixture()
def short_retries(monkeypatch):
    import tiled.client.utils

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", int(RETRY["TILED_RETRY_ATTEMPTS"]))
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", float(RETRY["TILED_RETRY_TIMEOUT"]))


_ENGINE: list[Reconstructor] = []


def engine() -> Reconstructor:
    if not _ENGINE:
        _ENGINE.append(Reconstructor(ReconstructorConfig(iterations=10, saturation=1e7, batch_size=2), device="cpu"))
    return _ENGINE[0]


class Costs:
    """Seconds each document spends in the callbacks subscribed between :meth:`tick` and :meth:`tock`."""

    def __init__(self):
        self.t0 = 0.0
        self.seconds: list[float] = []

    def tick(self, name, doc):
        self.t0 = time.perf_counter()

    def tock(self, name, doc):
        self.seconds.append(time.perf_counter() - self.t0)

    def take(self) -> np.ndarray:
        out, self.seconds = np.asarray(self.seconds), []
        return out


def _summary(label: str, s: np.ndarray) -> str:
    return f"{label}: {len(s)} documents, median {1e3 * np.median(s):.2f} ms, max {1e3 * s.max():.2f} ms"


def _assert_stored(client, raw_uids, n=N):
    """Each raw run in Tiled whole, with exactly one derived run holding a row per frame."""
    for uid in raw_uids:
        raw = client[uid]
        assert raw.metadata["stop"]["exit_status"] == "success"
        assert raw["primary"]["det_image"].read().shape == (n, 64, 64)
        (derived,) = derived_runs(client, uid)
        res = load_results(client, derived.metadata["start"]["uid"])
        assert list(res["raw_seq_num"]) == list(range(1, n + 1))
        assert derived.metadata["stop"]["cdi_counts"]["received"] == n


@pytest.mark.catalogs
def test_session_scans_complete_through_outages_and_every_event_arrives(tiled_process, short_retries, capsys):
    """Outage before a run, across three runs, longer than every timeout, and during a run."""
    RE = RunEngine({})
    costs = Costs()
    RE.subscribe(costs.tick)
    det = ReplayDetector(SyntheticSource(n=N, seed=5), name="det")
    with LiveSession(engine(), tiled_process.store(), LiveConfig(max_wait_s=0.2)) as session:
        session.subscribe(RE)
        RE.subscribe(costs.tock)
        uids = list(RE(count([det], N)))
        assert session.finish(120)
        up = costs.take()

        tiled_process.kill()  # before a run; lasts three runs and longer than every timeout
        for _ in range(3):
            uids += RE(count([det], N))
        time.sleep(OUTAGE_S)
        down = costs.take()
        assert session.callback.flush(120, delivered=False)  # every frame reconstructed ...
        while_down = session.finish(1)
        assert while_down.frames_done and while_down.pending == 2 * 3  # ... and no run reached the dead server

        tiled_process.start()

        def killed_mid_run():
            yield from bps.open_run()
            for i in range(N):
                if i == N // 2:
                    tiled_process.kill()
                yield from bps.trigger_and_read([det])
            yield from bps.close_run()

        uids += RE(killed_mid_run())
        time.sleep(OUTAGE_S)
        mid = costs.take()
        tiled_process.start()
        finished = session.finish(120)
        assert finished, finished
        assert finished.delivered == 2 * 5 and finished.quarantined == ()
        for w in session.writers:
            assert w.stats["delivered"] >= w.stats["documents"] and w.stats["journal_errors"] == 0
    _assert_stored(tiled_process.client(), uids)
    with capsys.disabled():
        print("\nRunEngine cost per document (raw writer + live callback):")
        for label, s in (("Tiled up", up), ("Tiled down (3 runs)", down), ("killed mid-run", mid)):
            print("  " + _summary(label, s))
    RE.loop.call_soon_threadsafe(RE.loop.stop)


def test_refused_run_is_quarantined_and_the_runs_behind_it_arrive(tiled_process, short_retries, capsys):
    """A raw run TiledWriter cannot write (a 32x48 frame among 64x64 ones, the raw writer
    subscribed without its ShapeGuard) is quarantined with its reason and reported by
    ``finish()`` and ``results``; the runs journaled behind it arrive."""
    from cdi_beamline.cli import main

    frames = [SyntheticSource(n=N, seed=7).frame(i) for i in range(N)]
    frames[2] = np.ones((32, 48))
    RE = RunEngine({})
    with LiveSession(engine(), tiled_process.store(), LiveConfig(max_wait_s=0.2)) as session:
        assert session.raw_writer is not None
        RE.subscribe(session.raw_writer)
        RE.subscribe(session.callback)
        tiled_process.kill()
        (bad,) = RE(count([ReplayDetector(ListSource(frames), name="det")], N))
        good = [RE(count([ReplayDetector(SyntheticSource(n=N, seed=8), name="det")], N))[0] for _ in range(2)]
        tiled_process.start()
        finished = session.finish(120)
        assert not finished and finished.frames_done and finished.pending == 0
        ((uid, reason),) = finished.quarantined
        assert uid == bad and "could not be broadcast" in reason
        assert finished.delivered == 2 + 3  # the healthy raw runs, every derived run
    spool = tiled_process.data_dir / "spool"
    assert (bad, reason) in [(u, r.splitlines()[0]) for u, r in quarantined(spool)]
    client = tiled_process.client()
    for uid in good:
        assert client[uid]["primary"]["det_image"].read().shape == (N, 64, 64)
    (derived,) = derived_runs(client, bad)  # the bad run's results are stored all the same
    assert list(load_results(client, derived.metadata["start"]["uid"])["status"]) == ["ok", "ok", "bad", "ok"]
    capsys.readouterr()
    assert main(["results", "--data-dir", str(tiled_process.data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"quarantined run {bad}: Tiled refused it: ValueError: operands could not be broadcast" in out
    RE.loop.call_soon_threadsafe(RE.loop.stop)


def test_two_sessions_on_one_data_directory_deliver_each_document_once(tiled_process, short_retries):
    """Two sessions share data_dir/spool (as the profile and a demo do); a dead writer's
    journal is there too. Each run arrives once, whole."""
    client = tiled_process.client()
    det = ReplayDetector(SyntheticSource(n=N, seed=9), name="det")
    RE0 = RunEngine({})
    dead = make_writer(client, tiled_process.data_dir / "spool", retry_s=0.1, retry_max_s=1.0)
    RE0.subscribe(dead)
    tiled_process.kill()
    (left,) = RE0(count([det], N))
    dead.close()  # its process "ended" with the run undelivered
    tiled_process.start()
    store = tiled_process.store()
    a = LiveSession(engine(), store, LiveConfig(max_wait_s=0.2))
    b = LiveSession(engine(), store, LiveConfig(max_wait_s=0.2))
    REa, REb = RunEngine({}), RunEngine({})
    a.subscribe(REa)
    b.subscribe(REb)
    tiled_process.kill()
    uids = [*REa(count([det], N)), *REb(count([det], N)), *REa(count([det], N))]
    time.sleep(OUTAGE_S)
    tiled_process.start()
    done = [a.finish(120), b.finish(120)]
    assert all(done), done
    assert sum(d.delivered for d in done) == 1 + 2 * len(uids)  # the adopted run, raw + derived of each
    a.close()
    b.close()
    client = tiled_process.client()
    _assert_stored(client, uids)
    assert client[left]["primary"]["det_image"].read().shape == (N, 64, 64)
    assert not list((tiled_process.data_dir / "spool").glob("journal-*"))
    for RE in (RE0, REa, REb):
        RE.loop.call_soon_threadsafe(RE.loop.stop)


def test_scan_with_a_wrong_shape_frame_stores_its_raw_run_and_reprocess_rebuilds(tiled_process, capsys):
    from cdi_beamline.cli import main

    frames = [SyntheticSource(n=N, seed=11).frame(i) for i in range(N)]
    odd = np.ones((32, 48))
    frames[2] = odd
    RE = RunEngine({})
    with LiveSession(engine(), tiled_process.store(), LiveConfig(max_wait_s=0.2)) as session:
        session.subscribe(RE)
        (raw_uid,) = RE(count([ReplayDetector(ListSource(frames), name="det")], N))
        assert session.finish(120)
    client = tiled_process.client()
    raw = client[raw_uid]
    stored, seq, _ = load_raw_frames(client, raw_uid)
    assert stored.shape == (N, 64, 64) and list(seq) == [1, 2, 3, 4] and not stored[2].any()
    apart = raw[odd_stream("primary", (32, 48))]
    np.testing.assert_array_equal(apart["det_image"].read()[0], odd)
    assert list(apart["stream_seq_num"].read()) == [3]
    (live,) = derived_runs(client, raw_uid)
    assert (
        main(
            ["reprocess", raw_uid, "--data-dir", str(tiled_process.data_dir), "--uri", tiled_process.uri]
            + ["--api-key", tiled_process.api_key, "--device", "cpu"]
        )
        == 0
    )
    capsys.readouterr()
    first, again = derived_runs(client, raw_uid)
    assert first.metadata["start"]["uid"] == live.metadata["start"]["uid"]
    for run in (first, again):
        res = load_results(client, run.metadata["start"]["uid"])
        assert list(res["status"]) == ["ok", "ok", "bad", "ok"], res["reason"]
    RE.loop.call_soon_threadsafe(RE.loop.stop)


def test_worker_derived_runs_survive_an_outage(tiled_process):
    """The 0MQ worker (own process, raw runs too): Tiled killed during its first run and down
    across three runs, longer than every timeout; every event arrives afterwards."""
    from bluesky.callbacks.zmq import Publisher

    ports = [_free_port(), _free_port()]
    proxy = subprocess.Popen(
        [sys.executable, "-c", f"from bluesky.callbacks.zmq import Proxy; Proxy({ports[0]}, {ports[1]}).start()"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "cdi_beamline.cli", "worker", "--zmq", f"127.0.0.1:{ports[1]}"]
        + ["--uri", tiled_process.uri, "--api-key", tiled_process.api_key, "--data-dir", str(tiled_process.data_dir)]
        + ["--init", "random", "--iterations", "10", "--device", "cpu", "--batch-size", "2", "--max-runs", "3"]
        + ["--write-raw", "--retry-max-s", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **RETRY, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in worker.stdout or ()], daemon=True)
    reader.start()
    RE = RunEngine({})
    try:
        publisher = Publisher(f"127.0.0.1:{ports[0]}", serializer=encode_document)
        deadline, seen = time.monotonic() + 120, []
        while not any("ignored stop of run probe" in line for line in seen):  # 0MQ path live
            assert time.monotonic() < deadline and worker.poll() is None, "".join(seen)
            stop = {"uid": "probe-stop", "run_start": "probe", "time": time.time(), "exit_status": "success"}
            publisher("stop", {**stop, "num_events": {}})
            try:
                seen.append(lines.get(timeout=0.25))
            except queue.Empty:
                pass
        RE.subscribe(publisher)
        det = ReplayDetector(SyntheticSource(n=N, seed=13), name="det")

        def killed_mid_run():
            yield from bps.open_run()
            for i in range(N):
                if i == 1:
                    tiled_process.kill()
                yield from bps.trigger_and_read([det])
            yield from bps.close_run()

        uids = [*RE(killed_mid_run()), *RE(count([det], N)), *RE(count([det], N))]
        time.sleep(OUTAGE_S)
        tiled_process.start()
        worker.wait(timeout=240)
        reader.join(timeout=10)
        out = "".join(seen) + "".join(lines.queue)
        assert worker.returncode == 0, out
        assert "runs: 6 delivered, 0 pending, 0 quarantined" in out, out
        _assert_stored(tiled_process.client(), uids)
    finally:
        import zmq

        publisher._socket.setsockopt(zmq.LINGER, 0)
        publisher.close()
        for p in (worker, proxy):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        RE.loop.call_soon_threadsafe(RE.loop.stop)
