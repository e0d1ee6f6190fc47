"""Live reconstruction with a real RunEngine and a real Tiled server (one per session)."""

from __future__ import annotations

import os
import pickle
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky.plans import count
from event_model import DocumentNames, schema_validators
from helpers import ITER, ListSource, engine

from cdi_beamline.callbacks import (
    Frames,
    ImageSpec,
    LiveReconstruction,
    ReconstructionWorker,
    RunAssembler,
    RunStart,
    RunStop,
)
from cdi_beamline.config import ConfigError, LiveConfig, ReconstructorConfig
from cdi_beamline.config.refine import SEEDED_SHRINKWRAP_START
from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.errors import CDIValueError
from cdi_beamline.pipeline import Reconstructor
from cdi_beamline.results import ARRAY_DTYPES, KIND, RESULT_KEYS, ResultRows
from cdi_beamline.tiled import (
    connect,
    derived_of,
    derived_runs,
    encode_document,
    load_raw_frames,
    load_results,
    load_volume,
    make_writer,
    processed,
    volume_runs,
)


@pytest.fixture(scope="module")
def rec():
    return engine(6)


@pytest.fixture(scope="module")
def source():
    return SyntheticSource(n=6, seed=3)


@pytest.fixture()
def client(tiled_server):
    return tiled_server.client()


def _live(rec, tiled_server, client, tiled_batch=64, **live):
    writer = make_writer(processed(client), tiled_server.spool_dir, batch_size=tiled_batch)
    cb = LiveReconstruction(rec, writer, LiveConfig(data_dir=tiled_server.data_dir, **live))
    return cb, writer


@pytest.mark.catalogs
def test_scan_gives_linked_derived_run_matching_offline(rec, source, tiled_server, client, run_engine):
    raw_writer = make_writer(client, tiled_server.spool_dir)
    cb, writer = _live(rec, tiled_server, client, max_wait_s=60)
    run_engine.subscribe(raw_writer)
    run_engine.subscribe(cb)
    det = ReplayDetector(source, name="det")
    access = {"data_session": "pass-314159", "proposal": "GUP-42", "cycle": "2026-3"}
    (raw_uid,) = run_engine(count([det], 6), sample="synthetic", **access).run_start_uids
    assert cb.flush(timeout=120) and raw_writer.flush(60)

    (derived,) = derived_runs(client, raw_uid)
    start = derived.metadata["start"]
    assert start["parent_uid"] == raw_uid
    assert start["scan_id"] == client[raw_uid].metadata["start"]["scan_id"]
    assert start["raw_image_key"] == "det_image"
    assert start["reconstructor"]["config"]["iterations"] == ITER
    assert start["reconstructor"]["config"]["batch_size"] == 6 and start["live"]["max_wait_s"] == 60
    counts = derived.metadata["stop"]["cdi_counts"]
    assert counts["received"] == counts["reconstructed"] == 6 and counts["flagged"] == 0

    res = load_results(client, start["uid"])
    frames, seq, key = load_raw_frames(client, raw_uid)
    assert key == "det_image" and frames.shape == (6, 64, 64)
    np.testing.assert_array_equal(res["raw_seq_num"], seq)
    offline = rec.reconstruct(np.stack([source.frame(i) for i in range(6)]), seed=0)
    np.testing.assert_allclose(res["chi2"], offline.chi2, rtol=1e-5)
    # CNN start + 20 iterations on these 6 synthetic frames: worst chi² 0.0025 (2-core x86-64 CPU, 2026-12-02)
    assert res["chi2"].max() < 3 * 0.0025
    np.testing.assert_allclose(res["amplitude"], offline.amplitude, atol=1e-5)
    np.testing.assert_allclose(res["phase"], offline.phase, atol=1e-4)
    np.testing.assert_array_equal(res["support"], offline.support)
    assert list(res["status"]) == ["ok"] * 6
    assert writer.stats["retries"] == 0 and raw_writer.stats["retries"] == 0
    cb.close()

    # catalog manners: the raw scan stays what a user reaches; its derived run hangs off it
    assert {key: start[key] for key in access} == access  # session keys copied for the facility's policies
    catalog = client
    assert catalog[-1].metadata["start"]["uid"] == raw_uid
    assert catalog[start["scan_id"]].metadata["start"]["uid"] == raw_uid
    assert [r.metadata["start"]["uid"] for r in derived_of(catalog[-1])] == [start["uid"]]
    assert processed(client)[-1].metadata["start"]["uid"] == start["uid"]
    from bluesky_tiled_plugins.queries import ScanID, TimeRange

    same_scan = catalog.search(ScanID(start["scan_id"], duplicates="all"))  # raw runs of other tests too
    assert raw_uid in same_scan and start["uid"] not in same_scan
    assert all(KIND not in run.metadata["start"] for run in same_scan.values())
    t0 = client[raw_uid].metadata["start"]["time"]
    assert raw_uid in catalog.search(TimeRange(since=t0 - 1, until=t0 + 3600, timezone="UTC"))
    import databroker

    assert databroker.__version__ and client[raw_uid].v2.primary.read()["det_image"].shape == (6, 64, 64)


def test_documents_validate_against_event_model(source, run_engine, tmp_path):
    cb = LiveReconstruction(engine(4), None, LiveConfig(data_dir=tmp_path, max_wait_s=60))
    run_engine.subscribe(cb)
    run_engine(count([ReplayDetector(source, name="det")], 6))
    assert cb.flush(timeout=120)
    cb.close()
    names = Counter(name for name, _ in cb.documents)
    arrays = len(ARRAY_DTYPES)  # one stream resource per array key, one datum per key and page
    assert names == {
        "start": 1,
        "descriptor": 1,
        "stream_resource": arrays,
        "event_page": 2,
        "stream_datum": 2 * arrays,
        "stop": 1,
    }
    for name, doc in cb.documents:
        schema_validators[DocumentNames[name]].validate(doc)
    pages = [d for n, d in cb.documents if n == "event_page"]
    assert [p["seq_num"] for p in pages] == [[1, 2, 3, 4], [5, 6]]
    datums = [d for n, d in cb.documents if n == "stream_datum"]
    assert {(d["indices"]["start"], d["indices"]["stop"]) for d in datums} == {(0, 4), (4, 6)}


def test_bad_frames_flagged_and_scan_goes_on(source, tiled_server, client, run_engine):
    good = [source.frame(i) for i in range(3)]
    nan = good[0].copy()
    nan[10, 10] = np.nan
    saturated = good[1].copy()
    saturated[32, 32] = 1e8
    frames = [good[0], nan, np.zeros((64, 64), np.float32), good[1], saturated, np.ones((32, 32), np.float32), good[2]]
    cb, _ = _live(engine(4), tiled_server, client, max_wait_s=60)
    run_engine.subscribe(cb)
    det = ReplayDetector(ListSource(frames), name="det")
    (raw_uid,) = run_engine(count([det], len(frames))).run_start_uids
    assert run_engine.state == "idle"
    assert cb.flush(timeout=120)
    cb.close()
    (derived,) = derived_runs(client, raw_uid)
    res = load_results(client, derived.metadata["start"]["uid"])
    assert list(res["raw_seq_num"]) == list(range(1, 8))
    assert list(res["status"]) == ["ok", "bad", "bad", "ok", "bad", "bad", "ok"]
    reasons = list(res["reason"])
    assert "nan" in reasons[1].lower()
    assert "zero" in reasons[2].lower() or "empty" in reasons[2].lower()
    assert "satur" in reasons[4].lower()
    assert "shape 32x32 differs" in reasons[5] and "64x64" in reasons[5]  # validate_frame's words
    assert np.isfinite(res["chi2"][[0, 3, 6]]).all() and np.isnan(res["chi2"][[1, 2, 4, 5]]).all()
    counts = derived.metadata["stop"]["cdi_counts"]
    assert counts["reconstructed"] == 3 and counts["bad"] == 4 and counts["flagged"] == 4


class FailingOnce(Reconstructor):
    """The real engine, made to raise on its first call (a worker fault); each instance once."""

    calls = 0

    def reconstruct(self, frames, **kw):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("simulated GPU fault")
        return super().reconstruct(frames, **kw)


@pytest.mark.catalogs
def test_worker_raising_is_recorded_and_reprocess_rebuilds(source, tiled_server, client, run_engine, capsys):
    from cdi_beamline.cli import main

    failing = FailingOnce(ReconstructorConfig(init="random", iterations=ITER, batch_size=3), device="cpu")
    raw_writer = make_writer(client, tiled_server.spool_dir)
    cb, _ = _live(failing, tiled_server, client, max_wait_s=60)
    run_engine.subscribe(raw_writer)
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([ReplayDetector(source, name="det")], 6)).run_start_uids
    assert cb.flush(timeout=120) and raw_writer.flush(60)
    cb.close()
    (first,) = derived_runs(client, raw_uid)
    res = load_results(client, first.metadata["start"]["uid"])
    assert list(res["status"]) == ["error"] * 3 + ["ok"] * 3
    assert "simulated GPU fault" in res["reason"][0]
    stop = first.metadata["stop"]
    assert stop["cdi_counts"]["error"] == 3 and "simulated GPU fault" in stop["reason"]
    assert cb.worker.stats["reconstruct_errors"] == 1
    # the raw run is untouched
    assert load_raw_frames(client, raw_uid)[0].shape == (6, 64, 64)

    rc = main(
        [
            "reprocess",
            raw_uid,
            "--uri",
            tiled_server.uri,
            "--api-key",
            tiled_server.api_key,
            "--data-dir",
            str(tiled_server.data_dir),
            "--iterations",
            str(ITER),
            "--init",
            "random",
            "--device",
            "cpu",
            "--batch-size",
            "3",
        ]
    )
    assert rc == 0
    runs = derived_runs(client, raw_uid)
    assert len(runs) == 2
    redo = load_results(client, runs[-1].metadata["start"]["uid"])
    assert list(redo["status"]) == ["ok"] * 6
    assert runs[-1].metadata["start"]["reprocessed"] is True
    np.testing.assert_allclose(redo["chi2"][3:], res["chi2"][3:], rtol=1e-5)  # same batches, same seed

    capsys.readouterr()
    assert main(["results", raw_uid, "--uri", tiled_server.uri, "--api-key", tiled_server.api_key, "--json"]) == 0
    import json

    listing = json.loads(capsys.readouterr().out)
    assert [r["uid"] for r in listing] == [r.metadata["start"]["uid"] for r in runs]
    assert listing[-1]["chi2"] == pytest.approx(list(redo["chi2"]))
    assert listing[0]["status"][:3] == ["error"] * 3


class Gated(Reconstructor):
    """The real engine, held until ``gate`` is set (a slow worker)."""

    def __init__(self, *a, gate, **kw):
        super().__init__(*a, **kw)
        self.gate = gate

    def reconstruct(self, frames, **kw):
        self.gate.wait(60)
        return super().reconstruct(frames, **kw)


def _policy_counts(cb):
    (stop,) = [d for n, d in cb.documents if n == "stop"]
    rows = [s for n, d in cb.documents if n == "event_page" for s in d["data"]["status"]]
    seqs = sorted(s for n, d in cb.documents if n == "event_page" for s in d["data"]["raw_seq_num"])
    assert seqs == list(range(1, 7))  # every frame accounted for, dropped ones included
    return stop["cdi_counts"], rows


def test_full_queue_drop_policy_is_counted(source, tmp_path, run_engine):
    # the worker holds its first frame until the callback has dropped one: the queue (2 items) is
    # then full for sure, with no timer racing the RunEngine
    gate = threading.Event()
    slow = Gated(ReconstructorConfig(iterations=5, batch_size=1), device="cpu", gate=gate)
    cb = LiveReconstruction(slow, None, LiveConfig(data_dir=tmp_path, queue_size=2, queue_policy="drop"))
    run_engine.subscribe(cb)
    run_engine.subscribe(lambda name, doc: gate.set() if cb.stats["dropped"] else None)
    run_engine(count([ReplayDetector(source, name="det")], 6))
    assert cb.flush(timeout=120)
    cb.close()
    counts, rows = _policy_counts(cb)
    # at most 3 of 6 frames fit (1 held by the worker, 2 queued) until the first drop
    assert counts["dropped"] == cb.stats["dropped"] == rows.count("dropped") >= 1
    assert counts["received"] == 6 and counts["reconstructed"] + counts["dropped"] == 6


def test_full_queue_block_policy_loses_nothing(source, tmp_path, run_engine):
    slow = Reconstructor(ReconstructorConfig(iterations=5, batch_size=1), device="cpu")
    cb = LiveReconstruction(slow, None, LiveConfig(data_dir=tmp_path, queue_size=1, queue_policy="block"))
    run_engine.subscribe(cb)
    run_engine(count([ReplayDetector(source, name="det")], 6))
    assert cb.flush(timeout=120)
    cb.close()
    counts, rows = _policy_counts(cb)
    assert counts["received"] == counts["reconstructed"] == 6 and counts["dropped"] == cb.stats["dropped"] == 0


def test_bad_live_config_names_the_field():
    with pytest.raises(ConfigError, match="queue_policy"):
        LiveConfig.build(queue_policy="sometimes")
    with pytest.raises(ConfigError, match="max_wait_s"):
        LiveConfig.build(max_wait_s=0)
    with pytest.raises(ConfigError, match="batch_size"):  # the one batch size is the engine's
        LiveConfig.build(batch_size=16)


def test_ophyd_async_hdf5_detector_path(source, tiled_server, client, run_engine, tmp_path):
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices

    from cdi_beamline.devices import ReplayHDF5Detector

    with init_devices():
        hdet = ReplayHDF5Detector(source, StaticPathProvider(UUIDFilenameProvider(), tmp_path), name="hdet")
    rec = engine(5)
    cb, _ = _live(rec, tiled_server, client, max_wait_s=60)
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([hdet], 5)).run_start_uids
    assert cb.flush(timeout=120)
    cb.close()
    (derived,) = derived_runs(client, raw_uid)
    assert derived.metadata["start"]["raw_image_key"] == "hdet"  # external, via StreamDatum
    res = load_results(client, derived.metadata["start"]["uid"])
    assert list(res["raw_seq_num"]) == [1, 2, 3, 4, 5] and list(res["status"]) == ["ok"] * 5
    offline = rec.reconstruct(np.stack([source.frame(i) for i in range(5)]), seed=0)
    np.testing.assert_allclose(res["chi2"], offline.chi2, rtol=1e-5)


class _PicklePayload:
    """Unpickling this creates the file ``marker``: what an attacker's message could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_worker_process_fed_by_0mq(source, tiled_server, client, run_engine, tmp_path):
    """The worker in its own process, behind a real 0MQ proxy on 127.0.0.1; documents travel as
    JSON, and a pickled message sent to the same port is dropped without being unpickled."""
    import queue
    import socket
    import subprocess
    import sys
    import threading
    import time

    import zmq
    from bluesky.callbacks.zmq import Publisher

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    proxy = subprocess.Popen(
        [sys.executable, "-c", f"from bluesky.callbacks.zmq import Proxy; Proxy({ports[0]}, {ports[1]}).start()"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdi_beamline.cli",
            "worker",
            "--zmq",
            f"127.0.0.1:{ports[1]}",
            "--uri",
            tiled_server.uri,
            "--api-key",
            tiled_server.api_key,
            "--data-dir",
            str(tiled_server.data_dir),
            "--init",
            "random",
            "--iterations",
            str(ITER),
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--max-runs",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # bluesky reports refused messages with print()
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in worker.stdout], daemon=True)
    reader.start()
    try:
        publisher = Publisher(f"127.0.0.1:{ports[0]}", serializer=encode_document)
        marker = tmp_path / "pwned"
        # a sender that pickles (bluesky's default serializer) a payload that would create `marker`
        attacker = Publisher(f"127.0.0.1:{ports[0]}", serializer=lambda doc: pickle.dumps(_PicklePayload(marker)))
        # handshake: 0MQ drops messages sent before both sockets reach the proxy, so publish a stop of an
        # unknown run until the worker reports ignoring it; only then is the path known to be live
        deadline, seen = time.monotonic() + 60, []
        # (and until a pickled message has reached the worker and been refused)
        while not (
            any("ignored stop of run probe" in line for line in seen)
            and any("Failed to deserialize" in line for line in seen)
        ):
            assert time.monotonic() < deadline and worker.poll() is None, "".join(seen)
            attacker("start", {})
            publisher(
                "stop",
                {
                    "uid": "probe-stop",
                    "run_start": "probe",
                    "time": time.time(),
                    "exit_status": "success",
                    "num_events": {},
                },
            )
            try:
                seen.append(lines.get(timeout=0.25))
            except queue.Empty:
                pass
        run_engine.subscribe(publisher)
        (raw_uid,) = run_engine(count([ReplayDetector(source, name="det")], 4)).run_start_uids
        worker.wait(timeout=120)
        reader.join(timeout=10)
        out = "".join(seen) + "".join(lines.queue)
        publisher._socket.setsockopt(zmq.LINGER, 0)  # a stopped proxy must not hold the context
        publisher.close()
        attacker._socket.setsockopt(zmq.LINGER, 0)
        attacker.close()
        assert worker.returncode == 0, out
        assert not marker.exists()  # pickles reached the worker (handshake) and none was unpickled
        (derived,) = derived_runs(client, raw_uid)
        res = load_results(client, derived.metadata["start"]["uid"])
        assert list(res["status"]) == ["ok"] * 4 and list(res["raw_seq_num"]) == [1, 2, 3, 4]
        assert f"raw {raw_uid} -> derived {derived.metadata['start']['uid']}" in out
    finally:
        for p in (worker, proxy):
            if p.poll() is None:
                p.terminate()
                p.wait(10)


def test_demo_then_results_find_it_again(tmp_path, capsys):
    import json

    from cdi_beamline.cli import main

    data = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--data-dir",
                str(data),
                "--frames",
                "5",
                "--iterations",
                "5",
                "--init",
                "random",
                "--device",
                "cpu",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5 received, 5 reconstructed" in out and "\nstatus       " in out
    assert (data / "demo_recent.png").stat().st_size > 1000
    assert main(["results", "--data-dir", str(data), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["counts"]["reconstructed"] == 5 and len(run["chi2"]) == 5 and run["uid"] in out
    # reprocess without options rebuilds the engine from what the derived run recorded (init random,
    # 5 iterations, batches of 2, seed 0): the same arrays on the same CPU
    assert main(["reprocess", run["parent_uid"], "--data-dir", str(data), "--device", "cpu"]) == 0
    capsys.readouterr()
    client = connect(data_dir=data)
    first, again = derived_runs(client, run["parent_uid"])
    live, redo = (load_results(client, r.metadata["start"]["uid"]) for r in (first, again))
    assert redo["start"]["reconstructor"]["config"] == live["start"]["reconstructor"]["config"]
    for key in ("amplitude", "phase", "support", "chi2"):
        np.testing.assert_array_equal(redo[key], live[key], err_msg=key)
    with pytest.raises(CDIValueError, match="no Tiled catalog"):
        main(["-v", "results", "--data-dir", str(tmp_path / "nothing")])  # -v: the error is raised


def test_serve_is_reused_by_connect(tmp_path):
    """`cdi-beamline serve` in its own process; `connect(data_dir=...)` finds and uses it."""
    import signal
    import subprocess
    import sys

    from cdi_beamline.tiled import connect

    data = tmp_path / "served"
    err = open(tmp_path / "serve.err", "w+")
    # -X faulthandler: if the server hangs on Ctrl-C, SIGABRT dumps every thread's stack into serve.err
    server = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "cdi_beamline.cli", "serve", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        uri = next(ln.split()[1] for ln in lines if ln.strip().startswith("uri"))
        catalog = connect(data_dir=data)
        assert str(catalog.context.api_uri).startswith(uri) and len(catalog) == 0
        assert "CatalogOfBlueskyRuns" in {s.name for s in catalog.specs}
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGABRT)
            server.wait(10)
        err.seek(0)
        assert server.returncode == 0, f"serve did not stop on Ctrl-C:\n{err.read()[-8000:]}"
        assert not (data / "tiled" / "server.json").exists()
    finally:
        if server.poll() is None:
            server.kill()
        err.close()


# --- the assembler and the worker, driven item by item (no thread, a hand-set clock) ----------


class Clock:
    """A clock the test sets (the worker's deadline is read from it)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _worker(rec, tmp_path, emit=None, max_wait_s=0.5, clock=None):
    docs: list = []
    worker = ReconstructionWorker(
        rec,
        emit or (lambda name, doc: docs.append((name, doc))),
        LiveConfig(data_dir=tmp_path, max_wait_s=max_wait_s),
        clock=clock or Clock(),
    )
    return worker, docs


def _start(worker, uid="raw-1", shape=(64, 64)):
    worker.handle(RunStart({"uid": uid, "time": 0.0, "scan_id": 1}))
    worker.handle(ImageSpec(uid, "det_image", shape))


def _rows(docs):
    return [s for n, d in docs if n == "event_page" for s in d["data"]["raw_seq_num"]]


def test_assembler_batches_by_the_engines_batch_size_in_seq_order(source):
    rec = engine(4)
    asm = RunAssembler(rec, (64, 64), seed=0)
    frames = np.stack([source.frame(i) for i in range(6)])
    assert asm.add(Frames("r", [1, 2], frames[:2])) == [] and asm.waiting == 2
    odd = Frames("r", [3], np.ones((1, 32, 32), np.float32))  # cannot join the stack: bad at once
    assert asm.add(odd) == [] and asm.waiting == 3
    (rows,) = asm.add(Frames("r", [4, 5, 6], frames[2:5]))  # 5 good frames: one batch of 4, one waits
    assert list(rows.raw_seq_num) == [1, 2, 3, 4, 5] and list(rows.status) == ["ok", "ok", "bad", "ok", "ok"]
    assert "32x32" in rows.reason[2] and np.isnan(rows.chi2[2]) and rows.shape == (64, 64)
    assert asm.waiting == 1 and asm.stats["batches"] == 1
    last = asm.flush()
    assert list(last.raw_seq_num) == [6] and asm.flush() is None and asm.received == 6
    offline = rec.reconstruct(frames[:4], seed=0)  # the same batch, the same seed
    np.testing.assert_allclose(rows.chi2[[0, 1, 3, 4]], offline.chi2, rtol=1e-5)


def test_worker_flushes_a_partial_batch_when_max_wait_passes(source, tmp_path):
    clock = Clock()
    worker, docs = _worker(engine(4), tmp_path, max_wait_s=0.5, clock=clock)
    _start(worker)
    worker.handle(Frames("raw-1", [1, 2], np.stack([source.frame(0), source.frame(1)])))
    assert worker.next_deadline() == 0.5
    clock.now = 0.49
    worker.flush_due()
    assert _rows(docs) == []  # not yet due
    clock.now = 0.5
    assert worker.next_deadline() == 0.0
    worker.flush_due()
    assert _rows(docs) == [1, 2] and worker.next_deadline() is None
    worker.handle(RunStop("raw-1", {"exit_status": "success"}))
    assert worker.stops["raw-1"]["cdi_counts"]["reconstructed"] == 2


def test_worker_thread_flushes_on_the_deadline_alone(source, run_engine, tmp_path):
    """A partial batch reaches the writer while the run is still open: only the deadline can
    have flushed it (no stop, no flush() was sent)."""

    written = threading.Event()
    cb = LiveReconstruction(
        engine(4),
        lambda name, doc: written.set() if name == "event_page" else None,
        LiveConfig(data_dir=tmp_path, max_wait_s=0.05),
    )
    run_engine.subscribe(cb)
    det = ReplayDetector(source, name="det")
    seen = []

    def plan():
        yield from bps.open_run()
        yield from bps.trigger_and_read([det])
        seen.append(written.wait(120))  # blocks the RunEngine, not the worker
        yield from bps.close_run()

    run_engine(plan())
    cb.close()
    assert seen == [True]


def test_worker_never_dies_of_an_item(source, tmp_path):
    starts = []

    def emit(name, doc):  # the first derived run cannot even be started
        if name == "start":
            starts.append(doc)
            if len(starts) == 1:
                raise OSError("disk full")

    worker, _ = _worker(engine(4), tmp_path, emit=emit)
    worker.start()
    worker.queue.put(object())  # not a work item
    worker.queue.put(RunStart({"uid": "raw-1", "time": 0.0}))
    worker.queue.put(ImageSpec("raw-1", "det_image", (64, 64)))
    worker.queue.put(RunStop("raw-1", {"exit_status": "success"}))
    worker.queue.put(RunStart({"uid": "raw-2", "time": 0.0}))
    worker.queue.put(Frames("raw-2", [1], source.frame(0)[np.newaxis]))
    worker.queue.put(RunStop("raw-2", {"exit_status": "success"}))
    worker.queue.join()
    assert worker.stats["worker_errors"] == 2  # the object, and ImageSpec of raw-1 (its start failed)
    assert "TypeError" in worker.errors[0] and "disk full" in worker.errors[1]
    assert "raw-1" in worker.stops  # its derived run was started again at its stop, and closed
    assert worker.stops["raw-2"]["cdi_counts"]["reconstructed"] == 1  # and the next run is whole


class BuggyCallback(LiveReconstruction):
    """The callback with a bug on the second event."""

    def event(self, doc):
        if doc["seq_num"] == 2:
            raise KeyError("a bug")
        return super().event(doc)


def test_callback_never_raises_into_the_run_engine(source, run_engine, tmp_path):
    cb = BuggyCallback(engine(4), None, LiveConfig(data_dir=tmp_path, max_wait_s=60))
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([ReplayDetector(source, name="det")], 4)).run_start_uids
    assert cb.flush(timeout=120)
    cb.close()
    assert cb.stats["callback_errors"] == 1 and cb.stats["frames"] == 3
    (stop,) = [d for n, d in cb.documents if n == "stop"]
    assert stop["exit_status"] == "success" and stop["cdi_counts"]["reconstructed"] == 3
    assert _rows(cb.documents) == [1, 3, 4]


def test_live_result_plot_shows_the_newest_good_row(tmp_path):
    from cdi_beamline.plotting import LiveResultPlot

    png = tmp_path / "live.png"
    plot = LiveResultPlot(png=png)
    plot.redraw(force=True)
    assert not png.exists()  # nothing to show yet
    amp = np.ones((2, 16, 16), np.float32)
    rows = ResultRows.from_batch(
        [4, 5],
        SimpleNamespace(
            amplitude=amp * [[[1.0]], [[2.0]]],
            phase=np.zeros_like(amp),
            support=amp > 0,
            start_amplitude=amp,
            start_phase=np.zeros_like(amp),
            chi2=np.array([0.1, 0.2]),
            chi2_history=np.full((2, 10), 0.3),
            scale=np.ones(2),
            status=["ok", "ok"],
            reason=["", ""],
        ),
    )
    plot.update("raw", rows)
    plot.update("raw", ResultRows.failed([6], (16, 16), "bad", "frame is all zero"))  # not shown
    plot.redraw(force=True)
    assert png.stat().st_size > 1000
    assert "seq 5 (ok)" in plot.fig.get_suptitle() and plot.im_amp.get_array().max() == 2.0
    flagged = ResultRows.failed([7], (16, 16), "error", "?").to_dict() | {"status": ["not_converged"]}
    flagged.update(amplitude=amp[:1] * 3, support=amp[:1] > 0, reason=["chi² 0.2 > 0.1"])
    plot.update("raw", ResultRows(**flagged))  # flagged rows hold a reconstruction: shown, with their status
    plot.redraw(force=True)
    assert "seq 7 (not_converged)" in plot.fig.get_suptitle() and plot.im_amp.get_array().max() == 3.0


def test_derived_run_rebuilds_its_engine_from_its_start_document_alone(tiled_server, client, run_engine):
    """The derived start holds what ran (engine config with its quality thresholds, seed, raw
    run, image key): an engine rebuilt from it alone reproduces every stored column on the
    CPU. The run also holds the chi² history, the CNN's estimate and the scale."""
    from cdi_beamline.devices import make_source

    aps = make_source("aps34idc")
    picked = [0, 99, 34, 95, 200, 90]  # tails (peak < 100 counts) and the top of the rocking curve
    config = ReconstructorConfig.build(iterations=30, batch_size=4)
    live_rec = Reconstructor(config, device="cpu")
    raw_writer = make_writer(client, tiled_server.spool_dir)
    cb, _ = _live(live_rec, tiled_server, client, max_wait_s=60, seed=7)
    run_engine.subscribe(raw_writer)
    run_engine.subscribe(cb)
    source = ListSource([aps.frame(i) for i in picked])
    (raw_uid,) = run_engine(count([ReplayDetector(source, name="det")], len(picked))).run_start_uids
    assert cb.flush(timeout=120)
    cb.close()

    (derived,) = derived_runs(client, raw_uid)
    res = load_results(client, derived.metadata["start"]["uid"])
    start = res["start"]
    # from here on, only what the derived run recorded
    recorded = start["reconstructor"]["config"]
    # what ran: the CNN seed's schedule, shrink-wrap from the first iteration, 30 iterations
    assert recorded["iterations"] == 30 and recorded["refine"]["shrinkwrap_start"] == SEEDED_SHRINKWRAP_START
    assert recorded["refine"]["schedule"] == live_rec.config.refine.schedule
    rebuilt = Reconstructor(ReconstructorConfig.build(**recorded), device="cpu")
    assert rebuilt.config == live_rec.config
    frames, seq, _ = load_raw_frames(client, start["parent_uid"], start["raw_image_key"], start["raw_stream"])
    b, seed = rebuilt.config.batch_size, start["live"]["seed"]
    again = ResultRows.concat(
        ResultRows.from_batch(seq[i : i + b], rebuilt.reconstruct(frames[i : i + b], seed=seed))
        for i in range(0, len(frames), b)
    )
    for key in RESULT_KEYS:
        np.testing.assert_array_equal(res[key], getattr(again, key), err_msg=key)

    assert list(res["status"]) == ["low_signal", "ok", "low_signal", "ok", "low_signal", "ok"]
    assert all("too few photons" in r for r in res["reason"][[0, 2, 4]])
    stop_counts = derived.metadata["stop"]["cdi_counts"]
    assert stop_counts["ok"] == 3 and stop_counts["low_signal"] == 3 and stop_counts["flagged"] == 3
    assert stop_counts["reconstructed"] == stop_counts["received"] == 6
    # the new columns: decimated chi² history (first point: the CNN start's), the CNN's estimate, the scale
    assert res["chi2_history"].shape == (6, 64) and np.isfinite(res["chi2_history"]).all()
    assert np.isfinite(res["start_amplitude"]).all() and res["start_amplitude"].shape == (6, 64, 64)
    np.testing.assert_allclose(res["scale"], np.sqrt(frames.astype(np.float64).sum((1, 2))), rtol=1e-6)


def test_demo_on_the_aps_rocking_scan_flags_the_tails(tmp_path, capsys):
    """``cdi-beamline demo --source aps34idc`` on all 201 frames: frames whose peak holds
    fewer than 100 counts are not ok, the top of the rocking curve is ok, and the summary
    prints the frame count of each status."""
    import json

    from cdi_beamline.cli import main
    from cdi_beamline.devices import make_source
    from cdi_beamline.results import format_counts

    data = tmp_path / "demo"
    assert main(["demo", "--source", "aps34idc", "--data-dir", str(data), "--device", "cpu", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert main(["results", "--data-dir", str(data), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    frames = make_source("aps34idc").frames
    peak = frames.reshape(len(frames), -1).max(1)
    status = dict(zip(run["raw_seq_num"], run["status"]))
    assert len(status) == 201 and run["counts"]["received"] == 201
    weak = [i for i in range(201) if peak[i] < 100]
    assert len(weak) > 60 and all(status[i + 1] != "ok" for i in weak), [(i, status[i + 1]) for i in weak]
    assert all(status[i + 1] == "ok" for i in range(85, 116)), [(i, status[i + 1]) for i in range(85, 116)]
    assert f"status       {format_counts(run['counts'])}" in out
    assert "low_signal" in out and "ok" in out
    # the rocking scan's 3D run: the 64 frames around the brightest (seq 100), linked to the raw run
    client = connect(data_dir=data)
    (volume,) = volume_runs(client, run["parent_uid"])
    vol = load_volume(client, volume.metadata["start"]["uid"])
    assert vol["amplitude"].shape == (64, 64, 64) and list(vol["raw_seq_num"][[0, -1]]) == [68, 131]
    # 4 starts x 600 iterations: chi² 0.0060 (2-core x86-64 CPU, 2026-12-03)
    assert vol["chi2"] < 0.01 and f"chi2 (3D)    {vol['chi2']:.4g}" in out and "3D run       " in out
    (listed,) = run["volumes"]  # `results` lists it under the 2D run
    assert listed["uid"] == volume.metadata["start"]["uid"] and listed["status"] == "ok"
    assert listed["chi2"] == pytest.approx(vol["chi2"]) and listed["depth"] == 64
