"""Queries on a real Tiled server: raw frames back, results of a derived run, refusals."""

import numpy as np
import pytest
from bluesky.plans import count

from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.errors import CDIValueError
from cdi_beamline.tiled import derived_runs, load_raw_frames, load_results, make_writer


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
