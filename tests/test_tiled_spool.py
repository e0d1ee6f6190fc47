"""The journaling writer: the caller's thread only journals; a delivery thread writes runs whole,
in order, retries what may pass, quarantines what Tiled refuses; one resender per journal.

A stand-in server (``Server``) whose availability the test sets; the real Tiled server for the
partial-run case. The outage tests against a Tiled server in its own process are in
tests/test_store_outage.py.
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from event_model import compose_run, pack_event_page

from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.tiled import (
    MAX_REWRITES,
    ODD_SEQ_NUM,
    ShapeGuard,
    SpoolingWriter,
    decode_line,
    derived_runs,
    make_writer,
    odd_stream,
    quarantined,
    temporary,
)

FAST = {"retry_s": 0.02, "retry_max_s": 0.1}


class Server:
    """A stand-in for Tiled: per-run writers append document names to ``runs[uid]`` while
    ``up``; a run's start replaces an earlier copy; the document whose uid is ``refuse`` is refused
    every time (as a 4xx, or a document TiledWriter raises on)."""

    def __init__(self):
        self.up = True
        self.refuse: str | None = None
        self.runs: dict[str, list[str]] = {}
        self.threads: set[threading.Thread] = set()

    def factory(self):
        self.threads.add(threading.current_thread())
        current: list[str] = []

        def write(name, doc):
            if not self.up:
                raise ConnectionError("server down")
            if doc.get("uid") == self.refuse:
                raise ValueError(f"refused {name}")
            if name == "start":
                self.runs[doc["uid"]] = current
            current.append(name)

        return write


def _run(n_events=3, shape=(2,)):
    bundle = compose_run()
    docs = [("start", bundle.start_doc)]
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"x": {"source": "s", "dtype": "array", "shape": list(shape)}}
    )
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n_events):
        docs.append(("event", desc.compose_event(data={"x": np.full(shape, float(i))}, timestamps={"x": 0.0})))
    docs.append(("stop", bundle.compose_stop()))
    return bundle.start_doc["uid"], docs


def _writer(server, path, **kw):
    return SpoolingWriter(server.factory, path, probe=lambda: server.up, **{**FAST, **kw})


def test_delivers_runs_whole_from_a_thread_of_its_own(tmp_path):
    server = Server()
    writer = _writer(server, tmp_path)
    uid, docs = _run()
    for name, doc in docs:
        writer(name, doc)
    assert writer.flush(10)
    assert server.runs[uid] == [n for n, _ in docs]
    # the per-run writer (TiledWriter: network) is built on the delivery thread, never the caller's
    assert server.threads and threading.current_thread() not in server.threads
    assert writer.stats["delivered"] == writer.stats["documents"] == len(docs)
    assert writer.stats["runs_delivered"] == 1 and writer.pending == 0
    assert not list(tmp_path.glob("journal-*/*.jsonl"))  # the journal is gone once delivered
    writer.close()
    assert not list(tmp_path.glob("journal-*"))  # and the writer's folder at close


def test_outage_mid_run_journals_and_rewrites_the_run_whole_in_order(tmp_path):
    server = Server()
    writer = _writer(server, tmp_path)
    uid, docs = _run(4)
    for name, doc in docs[:3]:
        writer(name, doc)
    assert writer.flush(10) and server.runs[uid] == ["start", "descriptor", "event"]
    server.up = False  # the outage, mid-run: the caller is not held up nor told
    for name, doc in docs[3:]:
        writer(name, doc)
    (journal,) = tmp_path.glob("journal-*/*.jsonl")
    assert [decode_line(ln)[0] for ln in journal.read_text().splitlines()] == [n for n, _ in docs]
    assert not writer.flush(0.5) and writer.pending == 1 and writer.stats["retries"] >= 1
    server.up = True
    assert writer.flush(10)
    assert server.runs[uid] == [n for n, _ in docs]  # whole, in order, once
    assert writer.stats["runs_delivered"] == 1 and not journal.exists()
    writer.close()


def test_a_refused_document_quarantines_its_run_and_the_runs_behind_it_arrive(tmp_path):
    server = Server()
    writer = _writer(server, tmp_path)
    server.up = False
    bad, docs1 = _run(2)
    good, docs2 = _run(1)
    for name, doc in docs1 + docs2:
        writer(name, doc)
    server.refuse = docs1[-1][1]["uid"]  # the first run's stop
    server.up = True
    assert writer.flush(10)  # nothing left: one run quarantined, the other delivered
    server.refuse = None
    assert writer.quarantine == [(bad, "ValueError: refused stop")] and good in server.runs
    assert writer.stats["runs_quarantined"] == 1 and writer.stats["runs_delivered"] == 1
    ((uid, reason),) = quarantined(tmp_path)
    assert uid == bad and "refused stop" in reason and "the stop document 5" in reason
    kept = tmp_path / "quarantine" / f"{bad}.jsonl"
    assert [decode_line(ln)[0] for ln in kept.read_text().splitlines()] == [n for n, _ in docs1]
    writer.close()


def _conflict_once(server, uid_to_refuse, times):
    """Make the server answer 409 Conflict to one document ``times`` times."""
    left = [times]
    inner = server.factory

    def factory():
        write = inner()

        def conflicted(name, doc):
            if doc.get("uid") == uid_to_refuse and left[0] > 0:
                left[0] -= 1
                request = httpx.Request("POST", "http://tiled/api/v1/metadata/runs")
                raise httpx.HTTPStatusError("409", request=request, response=httpx.Response(409, request=request))
            write(name, doc)

        return conflicted

    return factory


def test_a_conflict_rewrites_the_run_whole_and_a_lasting_one_is_quarantined(tmp_path):
    """409 after a retried request that had reached the server: the run is rewritten whole;
    a conflict on every try (a run Tiled cannot take) ends in quarantine, not a loop."""
    server = Server()
    uid, docs = _run(2)
    writer = SpoolingWriter(_conflict_once(server, docs[-1][1]["uid"], 1), tmp_path, probe=lambda: True, **FAST)
    for name, doc in docs:
        writer(name, doc)
    assert writer.flush(10) and server.runs[uid] == [n for n, _ in docs]
    assert writer.stats["rewrites"] == 1 and writer.quarantine == []
    writer.close()
    server = Server()
    uid, docs = _run(2)
    writer = SpoolingWriter(_conflict_once(server, docs[-1][1]["uid"], 99), tmp_path, probe=lambda: True, **FAST)
    for name, doc in docs:
        writer(name, doc)
    assert writer.flush(10) and [u for u, _ in writer.quarantine] == [uid]
    assert writer.stats["rewrites"] == MAX_REWRITES and "409" in writer.quarantine[0][1]
    writer.close()


def test_failures_sorted_into_temporary_and_permanent():
    request = httpx.Request("POST", "http://tiled/api/v1/metadata/runs")

    def status(code):
        return httpx.HTTPStatusError(str(code), request=request, response=httpx.Response(code, request=request))

    assert temporary(httpx.ConnectError("refused", request=request))
    assert temporary(httpx.ReadTimeout("slow", request=request))
    assert temporary(status(503)) and temporary(status(500)) and temporary(status(429))
    assert not temporary(status(409)) and not temporary(status(422)) and not temporary(status(401))
    assert not temporary(ValueError("operands could not be broadcast together"))


def test_journals_of_a_dead_writer_are_adopted_by_one_live_writer_only(tmp_path):
    server = Server()
    server.up = False
    old = _writer(server, tmp_path)
    uid, docs = _run(2)
    for name, doc in docs:
        old(name, doc)
    # while `old` lives, its folder is locked: a second writer does not touch its journal
    other = _writer(server, tmp_path)
    assert other.pending == 0 and old.pending == 1
    other.close()
    old.close()  # the process ends with the run undelivered: the journal stays, the lock goes
    (journal,) = tmp_path.glob("journal-*/*.jsonl")
    server.up = True
    new = _writer(server, tmp_path)
    late = _writer(server, tmp_path)  # started after `new` adopted it: nothing left to adopt
    assert new.flush(10) and late.pending == 0
    assert server.runs[uid] == [n for n, _ in docs] and not journal.exists()
    assert len(list(tmp_path.glob("journal-*"))) == 2  # the dead writer's folder went with its journal
    new.close()
    late.close()
    assert not list(tmp_path.glob("journal-*"))


def test_a_run_spooled_by_an_earlier_version_is_delivered(tmp_path):
    from cdi_beamline.tiled import encode_line

    server = Server()
    uid, docs = _run(2)
    (tmp_path / f"{uid}.jsonl").write_text("".join(encode_line(n, d) for n, d in docs))  # spool/<uid>.jsonl
    writer = _writer(server, tmp_path)
    assert writer.flush(10) and server.runs[uid] == [n for n, _ in docs]
    assert not list(tmp_path.glob("*.jsonl"))
    writer.close()


def test_documents_of_unknown_runs_are_counted_orphans(tmp_path):
    server = Server()
    writer = _writer(server, tmp_path)
    uid, docs = _run(1)
    for name, doc in docs[1:]:  # no start
        writer(name, doc)
    assert writer.stats["orphans"] == len(docs) - 1 and server.runs == {}
    writer.close()


def test_shape_guard_keeps_the_run_rectangular_and_the_odd_frame_apart():
    got: list = []
    guard = ShapeGuard(lambda name, doc: got.append((name, doc)))
    uid, docs = _run(3, shape=(4, 4))
    odd = np.arange(6.0).reshape(2, 3)
    docs[3][1]["data"]["x"] = odd  # the second event's frame is 2x3
    for name, doc in docs:
        guard(name, doc)
    events = [d for n, d in got if n == "event" and d["descriptor"] == docs[1][1]["uid"]]
    assert [np.shape(e["data"]["x"]) for e in events] == [(4, 4)] * 3
    assert not np.asarray(events[1]["data"]["x"]).any()  # zeros in its place, seq_nums kept
    assert [e["seq_num"] for e in events] == [1, 2, 3]
    (odd_desc,) = [d for n, d in got if n == "descriptor" and d["uid"] != docs[1][1]["uid"]]
    assert odd_desc["name"] == odd_stream("primary", (2, 3)) == "primary_odd_2x3"
    assert odd_desc["data_keys"]["x"]["shape"] == [2, 3]
    (kept,) = [d for n, d in got if n == "event" and d["descriptor"] == odd_desc["uid"]]
    np.testing.assert_array_equal(kept["data"]["x"], odd)
    assert kept["data"][ODD_SEQ_NUM] == 2 and guard.odd_frames == 1
    # an event page with an odd row is written as events, the same way
    got.clear()
    uid, docs = _run(3, shape=(4, 4))
    events = [d for n, d in docs if n == "event"]
    events[2]["data"]["x"] = odd
    page = pack_event_page(*events)
    for name, doc in [docs[0], docs[1], ("event_page", page), docs[-1]]:
        guard(name, doc)
    names = [n for n, _ in got]
    assert names == ["start", "descriptor", "event", "event", "descriptor", "event", "event", "stop"]


@pytest.mark.catalogs
def test_resend_replaces_a_partial_run_in_a_real_tiled(tiled_server, tmp_path):
    """A run half-written to Tiled before the outage is deleted and written again whole."""
    client = tiled_server.client()
    fail_after = [4]  # TiledWriter documents written before the "outage"

    def flaky():
        from bluesky_tiled_plugins import TiledWriter

        tw = TiledWriter(client, batch_size=1)

        def write(name, doc):
            if fail_after[0] == 0:
                up[0] = False  # what the probe says from now on: no retry until the test says so
                raise httpx.ConnectError("server down")
            fail_after[0] -= 1
            tw(name, doc)

        return write

    up = [True]
    writer = SpoolingWriter(flaky, tmp_path, client=client, probe=lambda: up[0], **FAST)
    RE = RunEngine({})
    RE.subscribe(writer)
    (uid,) = RE(count([ReplayDetector(SyntheticSource(n=5, seed=1), name="det")], 5))
    assert not writer.flush(1)
    assert uid in client and writer.pending == 1  # a partial copy in Tiled, the whole run journaled
    fail_after[0] = 10_000
    up[0] = True
    assert writer.flush(30)
    run = client[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run["primary"]["det_image"].read().shape == (5, 64, 64)
    assert derived_runs(client, uid) == []
    writer.close()
    RE.loop.call_soon_threadsafe(RE.loop.stop)


@pytest.mark.catalogs
def test_a_run_tiledwriter_may_have_doubled_is_rewritten_whole(tiled_server, tmp_path):
    """TiledWriter retries an append that timed out and notes it in the run (rows may be
    there twice): the run is deleted and written again, once."""
    from bluesky_tiled_plugins import TiledWriter

    from cdi_beamline.tiled import FORCED_RETRY

    client = tiled_server.client()
    noted = [0]

    def factory():
        tw = TiledWriter(client)

        def write(name, doc):
            tw(name, doc)
            if name == "stop" and not noted[0]:  # the note TiledWriter leaves, on the first try only
                noted[0] += 1
                note = f"Appending 2 rows to the internal table of stream 'primary' failed ...; {FORCED_RETRY}."
                client[doc["run_start"]].update_metadata(metadata={"notes": [note]})

        return write

    writer = SpoolingWriter(factory, tmp_path, client=client, **FAST)
    RE = RunEngine({})
    RE.subscribe(writer)
    (uid,) = RE(count([ReplayDetector(SyntheticSource(n=3, seed=2), name="det")], 3))
    assert writer.flush(30) and noted[0] == 1 and writer.stats["rewrites"] == 1
    run = client[uid]
    assert not [n for n in run.metadata.get("notes", []) if FORCED_RETRY in n]
    assert run["primary"]["det_image"].read().shape == (3, 64, 64)
    writer.close()
    RE.loop.call_soon_threadsafe(RE.loop.stop)


@pytest.mark.catalogs
def test_a_run_whose_rows_came_twice_is_rewritten_whole(tiled_server, tmp_path):
    """An append that reached Tiled but whose answer was lost is retried by the HTTP client
    without a note: the delivered run's table is then longer than its arrays. The writer reads
    the lengths back after the stop document, deletes the run and writes it again, once."""
    import pyarrow
    from bluesky_tiled_plugins import TiledWriter

    client = tiled_server.client()
    doubled = [0]

    def factory():
        tw = TiledWriter(client)

        def write(name, doc):
            tw(name, doc)
            if name == "stop" and not doubled[0]:  # the rows of the first try arrive twice
                doubled[0] += 1
                table = client[doc["run_start"]]["primary"].base["internal"]
                table.append_partition(0, pyarrow.Table.from_pandas(table.read(), preserve_index=False))

        return write

    writer = SpoolingWriter(factory, tmp_path, client=client, **FAST)
    RE = RunEngine({})
    RE.subscribe(writer)
    (uid,) = RE(count([ReplayDetector(SyntheticSource(n=3, seed=2), name="det")], 3))
    assert writer.flush(30) and doubled[0] == 1 and writer.stats["rewrites"] == 1
    primary = client[uid]["primary"]
    assert len(primary.base["internal"].read()) == 3 and primary["det_image"].read().shape == (3, 64, 64)
    writer.close()
    RE.loop.call_soon_threadsafe(RE.loop.stop)


def test_make_writer_wraps_tiled_writer(tiled_server, tmp_path):
    writer = make_writer(tiled_server.client(), tmp_path, batch_size=7, retry_s=0.25)
    assert isinstance(writer, SpoolingWriter) and writer.retry_s == 0.25
    writer.close()


def test_close_leaves_undelivered_runs_for_the_next_writer(tmp_path):
    server = Server()
    server.up = False
    writer = _writer(server, tmp_path)
    for _ in range(2):
        for name, doc in _run(1)[1]:
            writer(name, doc)
    writer.close()
    assert len(list(tmp_path.glob("journal-*/*.jsonl"))) == 2
