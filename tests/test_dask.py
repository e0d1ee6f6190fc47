"""Live reconstruction and reprocess on a real Dask cluster (a LocalCluster of 2 worker
processes shared by the module, reached by its scheduler address as a remote one would be),
a real RunEngine and a real Tiled server; system tests but the first)."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from bluesky.plans import count

from cdi_beamline.callbacks import (
    DaskCluster,
    Frames,
    ImageSpec,
    LiveReconstruction,
    Quit,
    ReconstructionWorker,
    RunStart,
    RunStop,
    parse_cluster,
)
from cdi_beamline.config import ConfigError, LiveConfig, ReconstructorConfig
from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.errors import CDIValueError
from cdi_beamline.pipeline import Reconstructor
from cdi_beamline.tiled import EmbeddedTiled, derived_runs, load_results, make_writer, processed

ITER = 20
N_FRAMES = 8


@pytest.fixture(scope="module")
def cluster():
    with DaskCluster("local:2") as c:
        c.client.wait_for_workers(2, timeout=120)
        yield c


@pytest.fixture(scope="module")
def source():
    return SyntheticSource(n=12, seed=5)


def _engine(iterations: int = ITER) -> Reconstructor:
    config = ReconstructorConfig(init="random", iterations=iterations, batch_size=2, saturation=1e7)
    return Reconstructor(config, device="cpu")


def _scan(rec, tiled_server, run_engine, source, cluster_address=None, *, listener=None, frames=N_FRAMES):
    """Scan ``frames`` frames with live reconstruction (on the cluster if given); (callback, raw uid)."""
    client = tiled_server.client()
    writer = make_writer(processed(client), tiled_server.spool_dir)
    live = LiveConfig(data_dir=tiled_server.data_dir, max_wait_s=60, cluster=cluster_address)
    cb = LiveReconstruction(rec, writer, live)
    if listener is not None:
        cb.add_listener(listener)
    token = run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([ReplayDetector(source, name="det")], frames)).run_start_uids
    run_engine.unsubscribe(token)
    return cb, raw_uid


def _results(tiled_server, cb, raw_uid):
    client = tiled_server.client()
    return load_results(client, cb.derived_uid(raw_uid))


def test_cluster_specs_are_checked_before_any_process_starts():
    assert parse_cluster("local:3") == 3 and parse_cluster("local") == len(os.sched_getaffinity(0))
    assert parse_cluster("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    for bad in ("local:0", "locale", "http://host:8786", "tcp://"):
        with pytest.raises(CDIValueError, match="expected 'local'"):
            parse_cluster(bad)
        with pytest.raises(ConfigError):
            LiveConfig.build(cluster=bad)


class ReverseEngine:
    """An asynchronous engine (``submit``, like DaskEngine) on a thread pool whose batches
    finish in reverse order: batch k waits until batch k+1 is done (the last of ``n`` at once)."""

    def __init__(self, rec: Reconstructor, n: int):
        self.rec, self.config, self.n = rec, rec.config, n
        self.max_in_flight = n
        self.pool = ThreadPoolExecutor(n)
        self.done = [threading.Event() for _ in range(n)]
        self.finished: list[int] = []
        self.submitted = 0

    def provenance(self):
        return self.rec.provenance()

    def submit(self, frames, *, mask=None, seed=None) -> Future:
        k = self.submitted
        self.submitted += 1

        def run():
            if k + 1 < self.n:
                assert self.done[k + 1].wait(60)
            out = self.rec.reconstruct(frames, mask=mask, seed=seed)
            self.finished.append(k)
            self.done[k].set()
            return out

        return self.pool.submit(run)


def test_batches_finishing_out_of_order_are_written_in_seq_order(source, tmp_path):
    rec = _engine()
    engine = ReverseEngine(rec, 4)
    docs: list = []
    worker = ReconstructionWorker(engine, lambda name, doc: docs.append((name, doc)), LiveConfig(data_dir=tmp_path))
    written: list[list[int]] = []
    worker.add_listener(lambda raw_uid, rows: written.append(rows.raw_seq_num.tolist()))
    worker.start()
    frames = np.stack([source.frame(i) for i in range(N_FRAMES)])
    for item in (
        RunStart({"uid": "raw-1", "time": 0.0}),
        ImageSpec("raw-1", "det_image", (64, 64)),
        Frames("raw-1", np.arange(1, N_FRAMES + 1), frames),
        RunStop("raw-1", {"exit_status": "success"}),
        Quit(),
    ):
        worker.queue.put(item)
    worker.join(120)
    assert engine.finished == [3, 2, 1, 0]  # the batches finished last to first ...
    assert written == [[1, 2], [3, 4], [5, 6], [7, 8]]  # ... and were written first to last
    names = [name for name, _ in docs]
    assert names[0] == "start" and names[-1] == "stop"  # the stop waited for every batch
    assert worker.stops["raw-1"]["cdi_counts"]["reconstructed"] == N_FRAMES
    offline = rec.reconstruct(frames[2:4], seed=0)  # the same batch, the same seed
    np.testing.assert_allclose([d["data"]["chi2"] for n, d in docs if n == "event_page"][1], offline.chi2, rtol=1e-5)


@pytest.mark.system
def test_scan_on_two_dask_workers_gives_the_thread_workers_derived_run(cluster, source, tiled_server, run_engine):
    rec = _engine()
    cb, raw_thread = _scan(rec, tiled_server, run_engine, source)
    assert cb.flush(timeout=120)
    cb.close()
    on_thread = _results(tiled_server, cb, raw_thread)

    address = cluster.client.scheduler.address
    cb, raw_dask = _scan(rec, tiled_server, run_engine, source, address)
    assert cb.flush(timeout=120)
    assert cb.worker.stats["batches"] == N_FRAMES // 2 and not cb.worker.errors
    cb.close()
    on_dask = _results(tiled_server, cb, raw_dask)

    start = on_dask["start"]
    assert start["live"]["cluster"] == address
    assert start["reconstructor"]["cluster"] == {"scheduler": address, "workers": 2}
    assert start["reconstructor"]["config"] == on_thread["start"]["reconstructor"]["config"]
    assert on_dask["stop"]["cdi_counts"] == on_thread["stop"]["cdi_counts"]
    np.testing.assert_array_equal(on_dask["raw_seq_num"], np.arange(1, N_FRAMES + 1))  # one row per frame, in order
    assert on_dask["status"].tolist() == on_thread["status"].tolist()
    # same batches, same seed, same CPU: the same numbers (torch's thread count may move the last bits)
    np.testing.assert_allclose(on_dask["chi2"], on_thread["chi2"], rtol=1e-5)
    np.testing.assert_allclose(on_dask["amplitude"], on_thread["amplitude"], atol=1e-5)
    np.testing.assert_array_equal(on_dask["support"], on_thread["support"])


def test_local_cluster_runs_under_its_configuration(cluster):
    """The LocalCluster DaskCluster starts: one thread per worker, no MALLOC_TRIM_THRESHOLD_
    (refinement 4x slower with Dask's), and Dask's housekeeping slowed: no profiler, the event
    loop, system and memory checked every 1-2 s (nannies included: they run in this process)."""
    env = cluster.client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
    assert len(env) == 2 and set(env.values()) == {(None, "1")}, env

    def housekeeping(dask_worker):
        return (
            "profile" in dask_worker.periodic_callbacks,
            dask_worker._tick_interval,
            dask_worker.memory_manager.memory_monitor_interval,
        )

    assert set(cluster.client.run(housekeeping).values()) == {(False, 1.0, 1.0)}
    nannies = cluster.cluster.workers.values()
    assert {(n._tick_interval, n.memory_manager.memory_monitor_interval) for n in nannies} == {(1.0, 1.0)}
    assert cluster.cluster.scheduler._tick_interval == 1.0


def test_cluster_md_gives_the_local_clusters_configuration():
    """docs/cluster.md's YAML for hand-started workers is LOCAL_CLUSTER_CONFIG, key for key."""
    import re
    from pathlib import Path

    import yaml

    from cdi_beamline.callbacks._dask import LOCAL_CLUSTER_CONFIG

    text = (Path(__file__).parents[1] / "docs" / "cluster.md").read_text()
    block = re.search(r"cat > ~/.config/dask/cdi.yaml <<'EOF'\n(.*?)\nEOF", text, re.S)
    assert block, "docs/cluster.md lost its Dask YAML block"

    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    assert dict(flat(yaml.safe_load(block.group(1)))) == LOCAL_CLUSTER_CONFIG


@pytest.mark.system
def test_reprocess_all_on_the_cluster_is_idempotent(cluster, tmp_path, run_engine, source, capsys):
    from cdi_beamline.cli import main

    data = tmp_path / "data"
    server = EmbeddedTiled(data)
    try:
        client = server.client()
        raw_writer = make_writer(client, server.spool_dir)
        token = run_engine.subscribe(raw_writer)
        sizes = (2, 3)
        raws = [run_engine(count([ReplayDetector(source, name="det")], n)).run_start_uids[0] for n in sizes]
        run_engine.unsubscribe(token)
        assert raw_writer.flush(60)
        raw_writer.close()
        args = ["--uri", server.uri, "--api-key", server.api_key, "--data-dir", str(data)]
        engine = ["--init", "random", "--iterations", str(ITER), "--batch-size", "2", "--device", "cpu"]
        cluster_args = ["--cluster", cluster.client.scheduler.address]

        assert main(["reprocess", "--all", *args, *engine, *cluster_args]) == 0
        assert "2 raw run(s) to rebuild, 0 already done" in capsys.readouterr().out
        for uid, n in zip(raws, sizes):
            (run,) = derived_runs(client, uid)
            assert run.metadata["start"]["reprocessed"] is True
            assert run.metadata["start"]["reconstructor"]["cluster"]["workers"] == 2
            assert run.metadata["stop"]["cdi_counts"]["reconstructed"] == n

        # again: every run is done, nothing is rebuilt
        assert main(["reprocess", "--all", *args, *engine, *cluster_args]) == 0
        assert "0 raw run(s) to rebuild, 2 already done" in capsys.readouterr().out
        assert [len(derived_runs(client, uid)) for uid in raws] == [1, 1]

        # --force rebuilds them all (here in this process), each superseding the first
        assert main(["reprocess", "--all", "--force", *args]) == 0
        assert "2 raw run(s) to rebuild, 0 already done" in capsys.readouterr().out
        for uid in raws:
            old, new = derived_runs(client, uid)
            assert new.metadata["start"]["supersedes"] == [old.metadata["start"]["uid"]]
        a, b = (load_results(client, r.metadata["start"]["uid"]) for r in derived_runs(client, raws[-1]))
        np.testing.assert_allclose(b["chi2"], a["chi2"], rtol=1e-5)  # the recorded settings: the same result
        # --since a later date selects none
        assert main(["reprocess", "--since", "2999-01-01", *args]) == 0
        assert "0 raw run(s) to rebuild, 0 already done" in capsys.readouterr().out
    finally:
        server.close()


@pytest.mark.system
def test_killing_a_dask_worker_mid_scan_loses_no_frame(cluster, source, tiled_server, run_engine):
    killed: list[int] = []

    def kill_busiest_worker(raw_uid, rows):
        """At the first rows: SIGKILL the worker process holding the most batches."""
        if killed:
            return
        processing = cluster.client.processing()
        address = max(processing, key=lambda a: len(processing[a]))
        assert processing[address], "no batch left in flight to lose"
        pid = cluster.client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    rec = _engine(iterations=400)  # batches long enough to be in flight when the worker dies
    n = 12
    cb, raw_uid = _scan(
        rec, tiled_server, run_engine, source, cluster.client.scheduler.address, listener=kill_busiest_worker, frames=n
    )
    assert cb.flush(timeout=300)
    cb.close()
    assert killed and killed[0] not in cluster.client.run(os.getpid).values()
    res = _results(tiled_server, cb, raw_uid)
    np.testing.assert_array_equal(res["raw_seq_num"], np.arange(1, n + 1))
    assert set(res["status"].tolist()) <= {"ok", "not_converged"}  # every frame reconstructed
    assert res["stop"]["cdi_counts"]["reconstructed"] == n and cb.worker.stats["reconstruct_errors"] == 0
