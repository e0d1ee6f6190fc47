"""Frame sources and the Bluesky replay devices, in a real RunEngine."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky.plans import count, scan

from cdi_beamline import devices
from cdi_beamline.devices import (
    ApsRockingSource,
    FileSource,
    FrameCursor,
    ReplayDetector,
    ReplayHDF5Detector,
    RockingMotor,
    SyntheticSource,
    make_source,
)
from cdi_beamline.errors import CDIValueError

APS = "aps34idc_S0054"
TEST_DATA = Path(__file__).parent / "data"
APS_SCAN_SHA256 = "23784c3c8340aadad48ebe03bffd6eeffee8e9d45a9226aaa89f9c1624e7caa3"


@pytest.fixture(scope="module")
def aps() -> ApsRockingSource:
    return ApsRockingSource()


@pytest.fixture
def RE():
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    engine.subscribe(lambda name, doc: docs.append((name, doc)))
    engine.docs = docs
    yield engine
    engine.loop.call_soon_threadsafe(engine.loop.stop)


# --- sources -------------------------------------------------------------------------


def test_aps_flatfield_frame99_reproduces_reference(aps):
    # the flat-field-corrected reference (full-detector flat field, not shipped): tests/data
    ref = np.load(TEST_DATA / f"{APS}_frame099_crop64_wfcorr.npy")
    frame = aps.frame(99)
    assert frame.dtype == np.float32 and frame.shape == (64, 64)
    np.testing.assert_allclose(frame, ref, rtol=1e-6, atol=0)


def test_aps_raw_frame99_is_the_measured_crop():
    raw = ApsRockingSource(corrected=False)
    ref = np.load(TEST_DATA / f"{APS}_frame099_crop64_raw.npy")
    np.testing.assert_array_equal(raw.frame(99), ref)
    assert np.unravel_index(raw.frame(99).argmax(), (64, 64)) == (32, 32)
    # the shipped example data is the measured file, byte for byte (sha256 of the measured
    # file, recorded in tests/data/PROVENANCE.md)
    shipped = Path(devices.__file__).parent / "data" / f"{APS}_rocking_201x128x128.npz"
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == APS_SCAN_SHA256


def test_aps_geometry_and_errors(aps):
    assert len(aps) == 201 and aps.n_frames == 201 and aps.shape == (64, 64)
    assert aps.angles.shape == (201,)
    np.testing.assert_allclose(aps.angles[[0, 99, 200]], [-0.28, 0.215, 0.72])
    assert aps.provenance()["detector_rows"] == [94, 157]
    # the rocking curve peaks at the centre of the scan
    totals = np.array([aps.frame(i).sum() for i in range(0, 201, 10)])
    assert 80 <= 10 * totals.argmax() <= 120
    big = ApsRockingSource(crop=128)
    np.testing.assert_allclose(big.frame(99)[32:96, 32:96], aps.frame(99))
    assert aps.mask is None, "no bad pixel in the central 64x64"
    assert (~big.mask).sum() == 1 and (big.frame(50)[~big.mask] == 0).all(), "the hot dark pixel is masked"
    with pytest.raises(ValueError, match="crop must be an even number"):
        ApsRockingSource(crop=65)
    with pytest.raises(IndexError, match="frame 201 out of range"):
        aps.frame(201)


def test_file_source_formats(tmp_path, aps):
    stack = np.stack([aps.frame(i) for i in (98, 99, 100)])
    np.save(tmp_path / "i.npy", stack)
    np.savez(tmp_path / "i.npz", data=stack, mask=np.ones((64, 64), bool))
    with h5py.File(tmp_path / "sim.h5", "w") as f:  # the layout of `cdi-beamline simulate`
        f["modulus"] = np.sqrt(stack)
        f["amplitude"] = np.zeros((3, 32, 32), np.float32)
    for name in ("i.npy", "i.npz", "sim.h5"):
        src = make_source(str(tmp_path / name))
        assert isinstance(src, FileSource) and len(src) == 3 and src.shape == (64, 64)
        np.testing.assert_allclose(src.frame(1), aps.frame(99), rtol=1e-5)
        assert src.frame(0).dtype == np.float32
    assert make_source(str(tmp_path / "sim.h5")).provenance()["squared_modulus"] is True
    assert make_source(str(tmp_path / "i.npz")).mask.all()


def test_file_source_bad_inputs(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(5))
    with pytest.raises(ValueError, match=r"shape \(5,\); expected \(N, H, W\)"):
        FileSource(tmp_path / "v.npy")
    np.savez(tmp_path / "two.npz", a=np.ones((2, 4, 4)), b=np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="several arrays"):
        FileSource(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="no dataset 'c'"):
        FileSource(tmp_path / "two.npz", dataset="c")
    with pytest.raises(CDIValueError, match="no such file"):
        FileSource(tmp_path / "missing.h5")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="unsupported file type"):
        FileSource(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="unknown frame source 'nonsense'"):
        make_source("nonsense")


def test_synthetic_source_is_reproducible_and_noisy():
    from cdi_beamline.config import SimulationConfig
    from cdi_beamline.physics import simulate_batch

    fast = SimulationConfig.build(nz=8)  # a coarse projection: the source, not the physics, is tested
    a = SyntheticSource(n=10, config=fast, seed=3, chunk=4)
    b = SyntheticSource(n=10, config=fast, seed=3, chunk=4)
    assert len(a) == 10 and a.shape == (64, 64)
    for i in (0, 5, 9):  # frames in different chunks, read out of order
        np.testing.assert_array_equal(a.frame(i), b.frame(i))
    assert not np.array_equal(a.frame(0), a.frame(5))
    assert not np.array_equal(a.frame(0), SyntheticSource(n=1, config=fast, seed=4, chunk=1).frame(0))
    # noiseless frames are the simulator's modulus squared
    modulus = simulate_batch(4, a.config, seed=a.chunk_seed(1), device="cpu").modulus.numpy()
    np.testing.assert_allclose(a.frame(5), modulus[1] ** 2, rtol=1e-5)
    assert a.frame(5).dtype == np.float32
    noisy = SyntheticSource(n=2, config=fast, seed=3, photons=1e5, chunk=2)
    g = noisy.frame(0)
    assert np.array_equal(g, np.round(g)) and (g >= 0).all(), "Poisson counts"
    assert abs(g.sum() / 1e5 - 1) < 0.02
    masked = SyntheticSource(n=2, config=fast, seed=3, photons=1e5, mask=True, chunk=2)
    assert masked.mask.shape == (64, 64) and not masked.mask[32, 32] and masked.mask.mean() > 0.9
    np.testing.assert_array_equal(masked.frame(0), np.where(masked.mask, g, 0))
    endless = SyntheticSource(n=None, config=fast, chunk=2)
    assert endless.n_frames is None and endless.frame(7).shape == (64, 64)
    with pytest.raises(TypeError, match="endless"):
        len(endless)
    with pytest.raises(ValueError, match="detector.photons"):
        SyntheticSource(n=1, photons=0)


def test_frame_cursor_wraps_rewinds_and_is_thread_safe(tmp_path, aps):
    import threading

    np.save(tmp_path / "three.npy", np.stack([aps.frame(i) for i in (10, 11, 12)]))
    cursor = FrameCursor(FileSource(tmp_path / "three.npy"))
    assert [cursor.advance() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    cursor.rewind()
    i, frame = cursor.read()
    assert i == 0
    np.testing.assert_array_equal(frame, aps.frame(10))
    # an endless source never wraps
    endless = FrameCursor(SyntheticSource(n=None, chunk=1))
    assert [endless.advance() for _ in range(3)] == [0, 1, 2]
    # Tango and ophyd-async advance from other threads: no index is served twice
    shared = FrameCursor(aps)
    got: list[int] = []
    lock = threading.Lock()

    def take():
        mine = [shared.advance() for _ in range(50)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(200))


def test_replay_detector_wraps_at_the_end_of_a_finite_source(RE, aps, tmp_path):
    np.save(tmp_path / "two.npy", np.stack([aps.frame(i) for i in (98, 99)]))
    det = ReplayDetector(FileSource(tmp_path / "two.npy"), name="det")
    RE(count([det], 5))
    events = [d for n, d in RE.docs if n == "event"]
    assert [e["data"]["det_frame_index"] for e in events] == [0, 1, 0, 1, 0]
    np.testing.assert_array_equal(events[3]["data"]["det_image"], aps.frame(99))


# --- ophyd (sync) replay detector ------------------------------------------------------


def test_replay_detector_count(RE, aps):
    det = ReplayDetector(aps, name="det")
    RE(count([det], 5))
    counts = Counter(name for name, _ in RE.docs)
    assert counts == {"start": 1, "descriptor": 1, "event": 5, "stop": 1}
    (desc,) = [d for n, d in RE.docs if n == "descriptor"]
    key = desc["data_keys"]["det_image"]
    assert key["shape"] == [64, 64] and key["dtype"] == "array" and key["dtype_numpy"] == "<f4"
    assert json.loads(desc["configuration"]["det"]["data"]["det_source_info"])["source"] == "aps34idc"
    events = [d for n, d in RE.docs if n == "event"]
    assert [e["data"]["det_frame_index"] for e in events] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(events[3]["data"]["det_image"], aps.frame(3))
    # a new run starts the replay again at frame 0
    RE(count([det], 1))
    assert [d for n, d in RE.docs if n == "event"][-1]["data"]["det_frame_index"] == 0


def test_rocking_scan_replays_the_measured_scan(RE, aps, tmp_path):
    theta = RockingMotor()
    det = ReplayDetector(aps, name="det", motor=theta)
    RE(scan([det], theta, -0.28, 0.72, 201))
    events = [d for n, d in RE.docs if n == "event"]
    assert len(events) == 201
    assert [e["data"]["det_frame_index"] for e in events] == list(range(201))
    np.testing.assert_allclose(events[99]["data"]["theta"], 0.215)
    np.testing.assert_array_equal(events[99]["data"]["det_image"], aps.frame(99))
    # going backwards picks frames by angle, not by order
    RE(scan([det], theta, 0.72, 0.62, 3))
    assert [e["data"]["det_frame_index"] for e in [d for n, d in RE.docs if n == "event"][-3:]] == [200, 190, 180]
    np.save(tmp_path / "f.npy", aps.frame(0))
    with pytest.raises(ValueError, match="has no rocking angles"):
        ReplayDetector(FileSource(tmp_path / "f.npy"), motor=theta)


# --- ophyd-async HDF5 replay detector ---------------------------------------------------


def test_hdf5_detector_writes_frames_and_stream_documents(RE, aps, tmp_path):
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices

    with init_devices():
        hdet = ReplayHDF5Detector(aps, StaticPathProvider(UUIDFilenameProvider(), tmp_path), name="hdet")
    RE(count([hdet], 7))
    counts = Counter(name for name, _ in RE.docs)
    assert counts["event"] == 7 and counts["stream_resource"] == 2 and counts["stream_datum"] == 14
    (desc,) = [d for n, d in RE.docs if n == "descriptor"]
    assert desc["data_keys"]["hdet"]["shape"] == [1, 64, 64]
    assert desc["data_keys"]["hdet"]["external"] == "STREAM:"
    assert json.loads(desc["configuration"]["hdet"]["data"]["hdet-source_info"])["crop"] == 64
    (res,) = [d for n, d in RE.docs if n == "stream_resource" and d["data_key"] == "hdet"]
    assert res["mimetype"] == "application/x-hdf5" and res["parameters"]["dataset"] == "/entry/data/data"
    datums = [d for n, d in RE.docs if n == "stream_datum" and d["stream_resource"] == res["uid"]]
    assert [(d["indices"]["start"], d["indices"]["stop"]) for d in datums] == [(i, i + 1) for i in range(7)]
    path = Path(res["uri"].removeprefix("file://localhost"))
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][()]
        index = f["/entry/instrument/frame_index"][()]
    assert frames.shape == (7, 64, 64) and frames.dtype == np.float32
    np.testing.assert_array_equal(index, np.arange(7))
    np.testing.assert_array_equal(frames, np.stack([aps.frame(i) for i in range(7)]))


def test_hdf5_detector_fly_scan_streams_ranges(RE, aps, tmp_path):
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from ophyd_async.core import StaticPathProvider, TriggerInfo, UUIDFilenameProvider, init_devices

    with init_devices():
        hdet = ReplayHDF5Detector(aps, StaticPathProvider(UUIDFilenameProvider(), tmp_path), name="hdet")

    @bpp.stage_decorator([hdet])
    @bpp.run_decorator()
    def fly():
        yield from bps.prepare(hdet, TriggerInfo(number_of_events=12, livetime=0.005), wait=True)
        yield from bps.declare_stream(hdet, name="primary", collect=True)
        yield from bps.kickoff(hdet, wait=True)
        yield from bps.collect_while_completing(flyers=[hdet], dets=[hdet], flush_period=0.02)

    RE(fly())
    (res,) = [d for n, d in RE.docs if n == "stream_resource" and d["data_key"] == "hdet"]
    ranges = [d["indices"] for n, d in RE.docs if n == "stream_datum" and d["stream_resource"] == res["uid"]]
    assert ranges[0]["start"] == 0 and ranges[-1]["stop"] == 12
    assert all(a["stop"] == b["start"] for a, b in zip(ranges, ranges[1:])), "contiguous ranges"
    with h5py.File(Path(res["uri"].removeprefix("file://localhost")), "r") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][()], np.stack([aps.frame(i) for i in range(12)]))


def test_file_source_reads_the_simulate_hdf5(tmp_path):
    from cdi_beamline.config import DEFAULT_MASK, SimulationConfig
    from cdi_beamline.physics import simulate_batch, write_h5

    config = SimulationConfig.build(nz=8, detector=DEFAULT_MASK)
    batch = simulate_batch(3, config, seed=2, device="cpu")
    path = write_h5(tmp_path / "sim.h5", batch, config, seed=2)
    src = make_source(str(path))
    assert src.provenance()["dataset"] == "modulus" and len(src) == 3
    np.testing.assert_allclose(src.frame(2), batch.modulus[2].numpy() ** 2, rtol=1e-6)
    np.testing.assert_array_equal(src.mask, batch.mask[0].numpy())
    assert not src.mask[32, 32] and (src.frame(0)[~src.mask] == 0).all()
