"""The spooling writer: direct writes, a run spooled on failure, resent in order, orphans.

Deterministic: the server's availability is a flag the test sets (``probe``), resends are
driven by the test (``resend()``), the retry thread waits an hour between tries.
"""

from __future__ import annotations

import numpy as np
from bluesky import RunEngine
from bluesky.plans import count
from event_model import compose_run

from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.tiled import SpoolingWriter, decode_line, derived_runs, make_writer

HOUR = 3600.0


class Server:
    """A stand-in for Tiled: per-run writers append to ``runs[uid]`` while ``up``."""

    def __init__(self):
        self.up = True
        self.runs: dict[str, list[str]] = {}

    def factory(self):
        current: list[str] = []

        def write(name, doc):
            if not self.up:
                raise ConnectionError("server down")
            if name == "start":
                current.clear()
                self.runs[doc["uid"]] = current
            current.append(name)

        return write


def _run(n_events=3):
    bundle = compose_run()
    docs = [("start", bundle.start_doc)]
    desc = bundle.compose_descriptor(name="primary", data_keys={"x": {"source": "s", "dtype": "array", "shape": [2]}})
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n_events):
        docs.append(("event", desc.compose_event(data={"x": np.arange(2.0) + i}, timestamps={"x": 0.0})))
    docs.append(("stop", bundle.compose_stop()))
    return bundle.start_doc["uid"], docs


def test_writes_directly_while_the_server_answers(tmp_path):
    server = Server()
    writer = SpoolingWriter(server.factory, tmp_path, retry_s=HOUR)
    uid, docs = _run()
    for name, doc in docs:
        writer(name, doc)
    assert server.runs[uid] == [n for n, _ in docs]
    assert writer.stats["written"] == writer.stats["documents"] == len(docs) and writer.pending == 0
    assert not list(tmp_path.glob("*.jsonl"))
    writer.close()


def test_outage_spools_the_whole_run_and_resends_it_in_order(tmp_path):
    server = Server()
    up = [True]
    writer = SpoolingWriter(server.factory, tmp_path, retry_s=HOUR, probe=lambda: up[0])
    uid, docs = _run(4)
    for name, doc in docs[:3]:
        writer(name, doc)
    server.up = up[0] = False  # the outage, mid-run
    for name, doc in docs[3:]:
        writer(name, doc)
    # the run so far and the rest went to the spool, nothing lost
    spool = tmp_path / f"{uid}.jsonl"
    assert [decode_line(ln)[0] for ln in spool.read_text().splitlines()] == [n for n, _ in docs]
    assert writer.stats["runs_spooled"] == 1 and writer.pending == 1
    assert writer.resend() == 1  # still down: kept
    server.up = up[0] = True
    assert writer.resend() == 0
    assert server.runs[uid] == [n for n, _ in docs]  # whole, in order
    assert writer.stats["resent"] == len(docs) and writer.stats["runs_resent"] == 1
    assert not spool.exists()
    writer.close()


def test_a_run_started_while_down_goes_straight_to_the_spool(tmp_path):
    server = Server()
    up = [True]
    writer = SpoolingWriter(server.factory, tmp_path, retry_s=HOUR, probe=lambda: up[0])
    first, docs1 = _run(1)
    server.up = up[0] = False
    for name, doc in docs1:
        writer(name, doc)  # fails on start: spooled
    second, docs2 = _run(1)
    for name, doc in docs2:
        writer(name, doc)  # known offline, probe says down: not even tried
    assert writer.stats["written"] == 0 and writer.pending == 2
    server.up = up[0] = True
    assert writer.flush(timeout=10)
    assert set(server.runs) == {first, second}
    writer.close()


def test_a_failed_resend_is_retried(tmp_path):
    server = Server()
    up = [True]
    writer = SpoolingWriter(server.factory, tmp_path, retry_s=HOUR, probe=lambda: up[0])
    uid, docs = _run(2)
    server.up = up[0] = False
    for name, doc in docs:
        writer(name, doc)
    up[0] = True  # the probe answers, the writes still fail
    assert writer.resend() == 1 and (tmp_path / f"{uid}.jsonl").exists()
    server.up = True
    assert writer.resend() == 0 and server.runs[uid] == [n for n, _ in docs]
    writer.close()


def test_spool_left_by_an_earlier_writer_is_resent(tmp_path):
    server = Server()
    up = [False]
    old = SpoolingWriter(server.factory, tmp_path, retry_s=HOUR, probe=lambda: up[0])
    server.up = False
    uid, docs = _run(2)
    for name, doc in docs:
        old(name, doc)
    old.close()  # the process ends with the run spooled
    server.up = up[0] = True
    new = SpoolingWriter(server.factory, tmp_path, retry_s=HOUR, probe=lambda: up[0])
    assert new.flush(timeout=10)
    assert server.runs[uid] == [n for n, _ in docs]
    new.close()


def test_documents_of_unknown_runs_are_counted_orphans(tmp_path):
    server = Server()
    writer = SpoolingWriter(server.factory, tmp_path, retry_s=HOUR)
    uid, docs = _run(1)
    for name, doc in docs[1:]:  # no start
        writer(name, doc)
    assert writer.stats["orphans"] == len(docs) - 1 and server.runs == {}
    writer.close()


def test_resend_replaces_a_partial_run_in_a_real_tiled(tiled_server):
    """A run half-written to Tiled before the outage is deleted and written again whole."""
    client = tiled_server.client()
    fail_after = [4]  # TiledWriter documents written before the "outage"

    def flaky():
        from bluesky_tiled_plugins import TiledWriter

        tw = TiledWriter(client, batch_size=1)

        def write(name, doc):
            if fail_after[0] == 0:
                raise ConnectionError("server down")
            fail_after[0] -= 1
            tw(name, doc)

        return write

    up = [False]  # what the probe says: consulted only before a resend
    writer = SpoolingWriter(flaky, tiled_server.spool_dir, client=client, retry_s=HOUR, probe=lambda: up[0])
    RE = RunEngine({})
    RE.subscribe(writer)
    (uid,) = RE(count([ReplayDetector(SyntheticSource(n=5, seed=1), name="det")], 5))
    assert uid in client and writer.pending == 1  # a partial copy in Tiled, the whole run spooled
    fail_after[0] = 10_000
    up[0] = True
    assert writer.resend() == 0
    run = client[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run["primary"]["det_image"].read().shape == (5, 64, 64)
    assert derived_runs(client, uid) == []
    writer.close()
    RE.loop.call_soon_threadsafe(RE.loop.stop)


def test_make_writer_wraps_tiled_writer(tiled_server):
    writer = make_writer(tiled_server.client(), tiled_server.spool_dir, batch_size=7, retry_s=HOUR)
    assert isinstance(writer, SpoolingWriter) and writer.retry_s == HOUR
    writer.close()
