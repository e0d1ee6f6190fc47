"""Frames from every document style reach the live reconstruction: legacy Resource/Datum
(``ophyd.sim``), StreamResource/StreamDatum over HDF5 (ophyd-async's ``SimBlobDetector``) and
over a TIFF sequence (``ReplayTIFFDetector``); every frame gives one row, reconstructed or
flagged with its reason."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky.plans import count
from helpers import engine

from cdi_beamline.callbacks import (
    ExternalFrames,
    ImageSpec,
    LiveReconstruction,
    ReconstructionWorker,
    RunStart,
    RunStop,
    UnreadableFrames,
    read_stream_datum,
)
from cdi_beamline.config import LiveConfig
from cdi_beamline.devices import ApsRockingSource, SyntheticSource
from cdi_beamline.results import RECONSTRUCTED
from cdi_beamline.tiled import derived_runs, load_results, make_writer, processed


def _live(rec, tiled_server):
    writer = make_writer(processed(tiled_server.client()), tiled_server.spool_dir)
    return LiveReconstruction(rec, writer, LiveConfig(data_dir=tiled_server.data_dir, max_wait_s=60))


def _results(tiled_server, raw_uid):
    client = tiled_server.client()
    (derived,) = derived_runs(client, raw_uid)
    return derived.metadata, load_results(client, derived.metadata["start"]["uid"])


def _path_provider(directory: Path):
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider

    return StaticPathProvider(UUIDFilenameProvider(), directory)


class _Served:
    """``func`` of an ``ophyd.sim`` signal: the APS frames 96.. in turn, each one kept."""

    def __init__(self, source, first: int):
        self.source, self.next, self.frames = source, first, []

    def __call__(self):
        self.frames.append(self.source.frame(self.next))
        self.next += 1
        return self.frames[-1]


def _aps_signal(tmp_path):
    from ophyd.sim import SynSignalWithRegistry

    served = _Served(ApsRockingSource(), 96)
    sig = SynSignalWithRegistry(func=served, name="aps", save_path=str(tmp_path), labels={"detectors"})
    return sig, served


def test_ophyd_sim_resource_datum_frames_are_reconstructed(tiled_server, run_engine, tmp_path):
    # SynSignalWithRegistry writes one .npy file per trigger and emits Resource (NPY_SEQ) and
    # Datum documents; the events carry Datum ids, not frames
    sig, served = _aps_signal(tmp_path)
    rec = engine(5)
    cb = _live(rec, tiled_server)
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([sig], 5)).run_start_uids
    assert cb.flush(timeout=120)
    cb.close()

    meta, res = _results(tiled_server, raw_uid)
    assert meta["start"]["raw_image_key"] == "aps"
    assert list(res["raw_seq_num"]) == [1, 2, 3, 4, 5]  # one row per event: none lost
    frames = np.stack(served.frames[-5:])  # the signal's func also ran once when it was built
    offline = rec.reconstruct(frames, seed=0)
    np.testing.assert_allclose(res["chi2"], offline.chi2, rtol=1e-5)
    np.testing.assert_allclose(res["amplitude"], offline.amplitude, atol=1e-5)
    assert set(res["status"]) <= set(RECONSTRUCTED)
    assert meta["stop"]["cdi_counts"]["received"] == 5 and cb.stats["callback_errors"] == 0


def test_event_whose_datum_never_came_is_flagged(tmp_path, run_engine):
    sig, served = _aps_signal(tmp_path)
    cb = LiveReconstruction(engine(4), None, LiveConfig(data_dir=tmp_path, max_wait_s=60))

    def lose_second_datum(name, doc):
        if not (name == "datum" and doc["datum_kwargs"].get("index") == 1):
            cb(name, doc)

    run_engine.subscribe(lose_second_datum)
    run_engine(count([sig], 4))
    assert cb.flush(timeout=120)
    cb.close()
    data = {
        k: [v for n, d in cb.documents if n == "event_page" for v in d["data"][k]]
        for k in ("raw_seq_num", "status", "reason")
    }
    assert data["raw_seq_num"] == [1, 2, 3, 4]
    assert data["status"][1] == "bad" and "no Datum document" in data["reason"][1]
    assert all(s in RECONSTRUCTED for i, s in enumerate(data["status"]) if i != 1)
    assert cb.stats["unresolved"] == 1


def test_ophyd_async_sim_blob_detector_hdf5(tiled_server, run_engine, tmp_path):
    from ophyd_async.core import init_devices
    from ophyd_async.sim import SimBlobDetector

    with init_devices():
        blob = SimBlobDetector(_path_provider(tmp_path), name="blob")
    rec = engine(3)
    cb = _live(rec, tiled_server)
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([blob], 3)).run_start_uids
    assert cb.flush(timeout=120)
    cb.close()

    meta, res = _results(tiled_server, raw_uid)
    assert meta["start"]["raw_image_key"] == "blob"  # not its "blob-sum" stream
    assert list(res["raw_seq_num"]) == [1, 2, 3]
    (h5,) = tmp_path.glob("*.h5")
    with h5py.File(h5, "r") as f:
        frames = f["/entry/data/data"][:3].astype(np.float32)  # (3, 240, 320) uint8 blobs
    offline = rec.reconstruct(frames, seed=0)
    assert res["amplitude"].shape == (3, 240, 320)
    np.testing.assert_allclose(res["chi2"], offline.chi2, rtol=1e-5)
    assert list(res["status"]) == list(offline.status)


def test_tiff_sequence_detector(tiled_server, run_engine, tmp_path):
    from ophyd_async.core import init_devices

    from cdi_beamline.devices import ReplayTIFFDetector

    source = SyntheticSource(n=4, seed=5)
    with init_devices():
        tdet = ReplayTIFFDetector(source, _path_provider(tmp_path), name="tdet")
    rec = engine(4)
    cb = _live(rec, tiled_server)
    run_engine.subscribe(cb)
    (raw_uid,) = run_engine(count([tdet], 4)).run_start_uids
    assert cb.flush(timeout=120)
    cb.close()

    assert len(list(tmp_path.glob("*_00000[0-3].tiff"))) == 4  # one file per frame, where the detector wrote it
    meta, res = _results(tiled_server, raw_uid)
    assert list(res["raw_seq_num"]) == [1, 2, 3, 4]
    offline = rec.reconstruct(np.stack([source.frame(i) for i in range(4)]), seed=0)
    np.testing.assert_allclose(res["chi2"], offline.chi2, rtol=1e-5)
    assert list(res["status"]) == ["ok"] * 4


# --- reading one StreamDatum -------------------------------------------------------------------

_FRAME_KEY = {"shape": [1, 8, 8], "dtype": "array", "dtype_numpy": "<f4", "source": "test", "external": "STREAM:"}


def _npy_resource(directory: Path) -> dict:
    return {
        "uid": "sres-1",
        "data_key": "det",
        "mimetype": "multipart/related;type=application/x-npy",
        "uri": f"file://localhost{directory}/seq",
        "parameters": {},
    }


def _datum(i0: int, i1: int) -> dict:
    return {
        "uid": f"sd-{i0}",
        "stream_resource": "sres-1",
        "descriptor": "desc-1",
        "indices": {"start": i0, "stop": i1},
        "seq_nums": {"start": i0 + 1, "stop": i1 + 1},
    }


def test_a_file_still_being_written_is_retried(tmp_path):
    frame = np.arange(64, dtype=np.float32).reshape(8, 8)
    late = threading.Timer(0.3, lambda: np.save(tmp_path / "seq_2.npy", frame))
    late.start()
    out = read_stream_datum(_npy_resource(tmp_path), _FRAME_KEY, _datum(2, 3), retry_s=60)
    late.join()
    np.testing.assert_array_equal(out, frame[np.newaxis])


def test_unreadable_frames_name_the_file_and_why(tmp_path):
    with pytest.raises(UnreadableFrames, match=r"cannot read frames 0:1 .*seq_0\.npy: FileNotFoundError"):
        read_stream_datum(_npy_resource(tmp_path), _FRAME_KEY, _datum(0, 1), retry_s=0)
    odd = {**_npy_resource(tmp_path), "mimetype": "application/x-odd"}
    with pytest.raises(UnreadableFrames, match="no reader for mimetype 'application/x-odd'"):
        read_stream_datum(odd, _FRAME_KEY, _datum(0, 1), retry_s=0)


def test_worker_records_unreadable_frames_as_bad(tmp_path):
    docs: list = []
    worker = ReconstructionWorker(engine(4), lambda n, d: docs.append((n, d)), LiveConfig(data_dir=tmp_path))
    worker.handle(RunStart({"uid": "raw-1", "time": 0.0, "scan_id": 1}))
    worker.handle(ImageSpec("raw-1", "det", (8, 8)))
    hdf5 = {**_npy_resource(tmp_path), "mimetype": "application/x-hdf5", "uri": f"file://localhost{tmp_path}/gone.h5"}
    hdf5["parameters"] = {"dataset": "/entry/data/data"}
    worker.handle(ExternalFrames("raw-1", hdf5, _FRAME_KEY, _datum(0, 3)))
    worker.handle(RunStop("raw-1", {"exit_status": "success"}))
    (page,) = [d for n, d in docs if n == "event_page"]
    assert page["data"]["raw_seq_num"] == [1, 2, 3] and page["data"]["status"] == ["bad"] * 3
    assert all("cannot read frames 0:3" in r and "gone.h5" in r for r in page["data"]["reason"])
    counts = worker.stops["raw-1"]["cdi_counts"]
    assert counts["bad"] == counts["received"] == counts["flagged"] == 3


def test_stream_datum_of_an_unknown_resource_is_noted(tmp_path, run_engine):
    from ophyd_async.core import init_devices

    from cdi_beamline.devices import ReplayTIFFDetector

    with init_devices():
        tdet = ReplayTIFFDetector(SyntheticSource(n=2, seed=5), _path_provider(tmp_path), name="tdet")
    cb = LiveReconstruction(engine(2), None, LiveConfig(data_dir=tmp_path, max_wait_s=60))
    run_engine.subscribe(lambda name, doc: None if name == "stream_resource" else cb(name, doc))
    run_engine(count([tdet], 2))
    assert cb.flush(timeout=120)
    cb.close()
    (stop,) = [d for n, d in cb.documents if n == "stop"]
    assert "unknown StreamResource" in stop["reason"] and cb.stats["unknown_stream_resource"] == 2
