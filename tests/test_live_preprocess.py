"""Preprocessing in the live path: raw counts through a real RunEngine, the live callback and
a real Tiled server; one ROI per run, recorded in the derived run."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from bluesky.plans import count

from cdi_beamline.callbacks import Frames, LiveReconstruction, LiveSession, RunAssembler
from cdi_beamline.cli import main
from cdi_beamline.config import LiveConfig, PreprocessConfig, ReconstructorConfig, StoreConfig
from cdi_beamline.devices import ApsRockingSource, FrameSource, ReplayDetector
from cdi_beamline.errors import CDIValueError
from cdi_beamline.pipeline import Reconstructor
from cdi_beamline.preprocess import Preprocessor
from cdi_beamline.results import PREPROCESS, ResultRows
from cdi_beamline.tiled import derived_runs, load_results, make_writer, processed

FRAMES = list(range(90, 106))  # the top of the rocking curve; 99 is the frame the paper's figures use


class ListSource(FrameSource):
    """Replays a fixed list of (H, W) frames."""

    def __init__(self, frames):
        self.frames = frames
        self.n_frames = len(frames)
        self.shape = frames[0].shape

    def _frame(self, i):
        return self.frames[i]

    def provenance(self):
        return {"source": "list"}


@pytest.fixture(scope="module")
def aps_raw():
    return ApsRockingSource(corrected=False, crop=128)


def _scan(rec, tiled_server, run_engine, frames, preprocess, raw_writer=None):
    """Replay ``frames`` through a live callback with ``preprocess``; (results, callback)."""
    client = tiled_server.client()
    writer = make_writer(processed(client), tiled_server.spool_dir)
    live = LiveConfig(data_dir=tiled_server.data_dir, max_wait_s=60, preprocess=preprocess)
    cb = LiveReconstruction(rec, writer, live)
    if raw_writer is not None:
        run_engine.subscribe(raw_writer)
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([ReplayDetector(ListSource(frames), name="det")], len(frames))).run_start_uids
    assert cb.flush(timeout=600) and writer.flush(60)
    assert raw_writer is None or raw_writer.flush(60)
    derived_uid = cb.derived_uid(raw_uid)
    cb.close()
    assert derived_uid is not None
    return load_results(client, derived_uid), cb


def test_raw_aps_scan_is_preprocessed_live_with_one_roi_and_frame99_phases_well(
    aps_raw, tiled_server, run_engine, tmp_path
):
    dark, flat = tmp_path / "dark.npy", tmp_path / "whitefield.npy"
    np.save(dark, aps_raw.dark)
    np.save(flat, aps_raw.whitefield)
    config = PreprocessConfig(dark=str(dark), flat=str(flat), roi="auto", roi_size=64)
    frames = [aps_raw.frame(i) for i in FRAMES]
    no_peak = aps_raw.dark.copy()  # a shutter-closed frame: nothing but the dark
    frames.insert(FRAMES.index(99) + 1, no_peak)  # in the middle of a batch, after frame 99
    # batches of 6: the ROI, chosen from the first batch, must hold for the two after it
    rec = Reconstructor(ReconstructorConfig(quantity="modulus", batch_size=6), device="cpu")
    res, cb = _scan(rec, tiled_server, run_engine, frames, config)

    assert len(res["status"]) == len(frames) and cb.worker.stats["worker_errors"] == 0
    seq99 = FRAMES.index(99) + 1  # seq_num starts at 1
    flagged = np.flatnonzero(res["status"] == "bad")
    assert flagged.tolist() == [seq99]  # the dark-only frame, right after frame 99
    assert res["reason"][seq99].startswith("no peak")
    assert set(res["status"][res["status"] != "bad"]) <= {"ok", "not_converged", "low_signal"}
    assert res["amplitude"].shape[1:] == (64, 64)  # phased on the ROI's grid

    start, stop = res["start"][PREPROCESS], res["stop"][PREPROCESS]
    assert start["config"]["roi"] == "auto" and start["frame_shape"] == [128, 128] and start["grid"] == [64, 64]
    assert start["roi"] is None  # the start is written before the first frame; the stop has the ROI
    assert start["dark"]["sha256"] == hashlib.sha256(dark.read_bytes()).hexdigest()
    assert start["flat"]["file"] == str(flat)
    y0, x0, h, w = stop["roi"]
    assert (h, w) == (64, 64) and abs(y0 - 32) <= 2 and abs(x0 - 32) <= 2  # around the Bragg peak
    assert res["start"]["reconstructor"]["config"]["quantity"] == "modulus"

    # every frame was cut at the run's one ROI: the stored scale (sqrt of the measured
    # intensity the engine got) is that of the frame preprocessed offline at that ROI
    fixed = Preprocessor(PreprocessConfig(dark=str(dark), flat=str(flat), roi=tuple(stop["roi"])))
    offline = fixed.apply(np.stack(frames))
    expected = np.sqrt((offline.modulus.astype(np.float64) ** 2 * offline.mask).sum(axis=(1, 2)))
    good = res["status"] != "bad"
    np.testing.assert_allclose(res["scale"][good], expected[good], rtol=1e-5)

    # frame 99 raw, dark + whitefield, ROI auto: as good as the hand-corrected crop
    # (docs/preprocessing.md: 0.0019 offline, CNN start, default schedule)
    assert res["chi2"][seq99 - 1] <= 0.003


def test_frames_the_preprocessing_cannot_take_are_flagged_and_the_scan_goes_on(aps_raw, tiled_server, run_engine):
    """A fixed ROI outside the detector's 128x128 frames: every frame bad with the reason,
    the error recorded in the derived start; nothing reaches the engine."""
    config = PreprocessConfig(roi=(100, 0, 64, 64))
    rec = Reconstructor(ReconstructorConfig(quantity="modulus", iterations=1, batch_size=4), device="cpu")
    res, cb = _scan(rec, tiled_server, run_engine, [aps_raw.frame(i) for i in (98, 99, 100)], config)
    assert res["status"].tolist() == ["bad"] * 3
    assert all("outside the 128x128 frame" in r for r in res["reason"])
    assert "outside the 128x128 frame" in res["start"][PREPROCESS]["error"]
    assert cb.worker.stats["batches"] == 0


def test_a_live_session_refuses_preprocessing_files_that_disagree_before_any_scan(aps_raw, tmp_path):
    dark, flat = tmp_path / "dark.npy", tmp_path / "flat.npy"
    np.save(dark, aps_raw.dark)
    np.save(flat, aps_raw.whitefield[:64, :64])
    live = LiveConfig(preprocess=PreprocessConfig(dark=str(dark), flat=str(flat)))
    rec = Reconstructor(ReconstructorConfig(quantity="modulus"), device="cpu")
    with pytest.raises(CDIValueError, match="flat has shape"):
        LiveSession(rec, StoreConfig(data_dir=tmp_path / "data"), live)
    assert not (tmp_path / "data").exists()  # refused before a server or a directory was started


def test_saturation_is_judged_on_the_raw_counts_inside_the_roi(aps_raw, tiled_server, run_engine):
    """The detector's saturation level (counts) at the Bragg peak flags the frame; in a corner
    outside the ROI it does not (the engine itself sees only the corrected modulus)."""
    level = 1e6  # the detector's declared limit; the raw peaks here are about 1.6e5 counts
    frames = [aps_raw.frame(i) for i in (98, 99, 100)]
    y, x = np.unravel_index(np.argmax(frames[1]), frames[1].shape)
    frames[1][y, x] = level  # saturated at the peak
    frames[2][0, 0] = level  # saturated far from the peak
    config = ReconstructorConfig(quantity="modulus", iterations=20, batch_size=3, saturation=level)
    rec = Reconstructor(config, device="cpu")
    client = tiled_server.client()
    raw_writer = make_writer(client, tiled_server.spool_dir)
    res, _ = _scan(rec, tiled_server, run_engine, frames, PreprocessConfig(roi="auto", roi_size=64), raw_writer)
    assert res["status"][1] == "bad"
    assert "1 measured pixel(s) in the ROI at or above the saturation level 1e+06" in res["reason"][1]
    assert res["status"][0] != "bad" and res["status"][2] != "bad"
    y0, x0, h, w = res["stop"][PREPROCESS]["roi"]
    assert y0 <= y < y0 + h and x0 <= x < x0 + w and not (y0 <= 0 < y0 + h and x0 <= 0 < x0 + w)

    # `reprocess` rebuilds the run from the raw frames in Tiled with the recorded preprocessing
    raw_uid = res["start"]["parent_uid"]
    server = ["--uri", tiled_server.uri, "--api-key", tiled_server.api_key, "--data-dir", str(tiled_server.data_dir)]
    assert main(["reprocess", raw_uid, *server, "--device", "cpu"]) == 0
    redo = load_results(client, derived_runs(client, raw_uid)[-1].metadata["start"]["uid"])
    assert redo["start"]["reprocessed"] is True and redo["stop"][PREPROCESS]["roi"] == [y0, x0, h, w]
    assert redo["status"].tolist() == res["status"].tolist() and redo["reason"][1] == res["reason"][1]
    np.testing.assert_allclose(redo["chi2"], res["chi2"], rtol=1e-5)  # same batch, same seed


@pytest.mark.parametrize("quantity", ["modulus", "intensity"])
def test_assembler_waits_for_a_peak_then_keeps_one_roi_across_batches(aps_raw, quantity):
    """Batches of 2: a background-only batch first (no ROI yet: flagged), then the ROI is
    chosen from the next batch and kept; the engine gets the modulus in its own quantity."""
    background = [aps_raw.dark + 1, aps_raw.dark + 2]
    frames = np.stack([*background, *(aps_raw.frame(i) for i in (97, 99, 101, 103))])
    config = ReconstructorConfig(init="random", iterations=2, batch_size=2, quantity=quantity)
    pre = PreprocessConfig(roi="auto", roi_size=64)
    asm = RunAssembler(Reconstructor(config, device="cpu"), (128, 128), preprocess=pre)
    rows = [r for i in range(6) for r in asm.add(Frames("raw", [i + 1], frames[i : i + 1]))]
    rows = ResultRows.concat(rows)
    assert rows.raw_seq_num.tolist() == [1, 2, 3, 4, 5, 6] and rows.shape == (64, 64)
    assert rows.status[:2].tolist() == ["bad", "bad"] and all(r.startswith("no ROI") for r in rows.reason[:2])
    assert "bad" not in rows.status[2:].tolist()
    roi = asm.metadata()[PREPROCESS]["roi"]
    chosen_from = Preprocessor(pre).choose_roi(frames[2:4])  # the first batch with a peak
    assert roi == list(chosen_from) and asm.preprocessor.roi == tuple(roi)
    fixed = Preprocessor(PreprocessConfig(roi=tuple(roi))).apply(frames[2:])  # every later batch cut there
    np.testing.assert_allclose(rows.scale[2:], np.sqrt((fixed.modulus.astype(np.float64) ** 2).sum((1, 2))), rtol=1e-5)
