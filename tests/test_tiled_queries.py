"""Queries on a real Tiled server: raw frames back, results of a derived run, refusals."""

import time
import uuid

import numpy as np
import pytest
from bluesky.plans import count

from cdi_beamline.callbacks import DerivedRun
from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.errors import CDIValueError
from cdi_beamline.results import PROCESSED
from cdi_beamline.tiled import derived_runs, load_raw_frames, load_results, make_writer, processed


@pytest.mark.catalogs
def test_raw_frames_back_and_refusals(tiled_server, run_engine):
    client = tiled_server.client()
    source = SyntheticSource(n=3, seed=5)
    writer = make_writer(client, tiled_server.spool_dir)
    run_engine.subscribe(writer)
    (uid,) = run_engine(count([ReplayDetector(source, name="det")], 3)).run_start_uids
    assert writer.flush(30)
    frames, seq, key = load_raw_frames(client, uid)
    assert key == "det_image" and seq.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(frames, np.stack([source.frame(i) for i in range(3)]))
    assert derived_runs(client, uid) == []
    with pytest.raises(CDIValueError, match="no stream 'baseline'"):
        load_raw_frames(client, uid, stream="baseline")
    with pytest.raises(CDIValueError, match="no field 'nope'"):
        load_raw_frames(client, uid, image_key="nope")
    with pytest.raises(CDIValueError, match="not a derived reconstruction run"):
        load_results(client, uid)
    writer.close()


@pytest.mark.catalogs
def test_processed_container_holds_derived_runs_and_older_ones_are_still_found(tiled_server):
    client = tiled_server.client()
    container = processed(client)
    assert processed(client).uri == container.uri and PROCESSED in list(client)  # created once
    assert container.specs[0].name == "CatalogOfBlueskyRuns"
    raw_start = {"uid": str(uuid.uuid4()), "time": time.time(), "scan_id": 99}
    uids = []
    for where in (client, container):  # a derived run stored at the root before the container existed
        writer = make_writer(where, tiled_server.spool_dir)
        run = DerivedRun(raw_start, writer, tiled_server.results_dir)
        run.close()
        assert writer.flush(30)
        writer.close()
        uids.append(run.uid)
    assert [r.metadata["start"]["uid"] for r in derived_runs(client, raw_start["uid"])] == uids
    assert load_results(client, uids[1])["stop"]["run_start"] == uids[1]
    assert container[-1].metadata["start"]["uid"] == uids[1]
    with pytest.raises(CDIValueError, match="no run 'nope"):
        load_results(client, "nope-0000")
