"""The derived run's start document: what it carries over from the raw run."""

from __future__ import annotations

from cdi_beamline.callbacks import DerivedRun
from cdi_beamline.results import INHERITED_START_KEYS, PARENT_UID


def test_derived_start_copies_scan_and_access_keys_only(tmp_path):
    raw_start = {
        "uid": "raw-1",
        "time": 0.0,
        "scan_id": 7,
        "tiled_access_tags": ["beamline_34idc", "proposal_42"],
        "data_session": "pass-314159",
        "proposal": "GUP-42",
        "cycle": "2026-3",
        "sample": "gold crystal",  # the raw run's own description stays with the raw run
    }
    docs: list[tuple[str, dict]] = []
    run = DerivedRun(raw_start, lambda name, doc: docs.append((name, doc)), tmp_path)
    ((name, start),) = docs
    assert name == "start" and start is run.start and start[PARENT_UID] == "raw-1"
    copied = {key: raw_start[key] for key in INHERITED_START_KEYS if key in raw_start}
    assert copied.keys() == {"scan_id", "tiled_access_tags", "data_session", "proposal", "cycle"}
    assert {key: start[key] for key in copied} == copied
    assert "sample" not in start and start["uid"] != "raw-1"
