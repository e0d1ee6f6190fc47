"""3D at the end of a rocking scan: detection, the stack, and the 3D derived run through a real
RunEngine and a real Tiled server."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bluesky.plans import count, scan
from helpers import engine

from cdi_beamline.callbacks import (
    LiveReconstruction,
    PhasedVolume,
    Volume,
    VolumeJobs,
    VolumeStack,
    reprocess,
    rocking_motor,
)
from cdi_beamline.cli import main
from cdi_beamline.config import ConfigError, LiveConfig, RefineConfig, RockingConfig
from cdi_beamline.cxi import read_cxi
from cdi_beamline.devices import FrameSource, ReplayDetector, RockingMotor
from cdi_beamline.phasing import align
from cdi_beamline.results import GEOMETRY, PARENT_UID, ROCKING, VOLUME_KIND, VOLUME_SUMMARY
from cdi_beamline.tiled import derived_runs, load_results, load_volume, make_writer, processed, volume_runs

N = 32  # frames of the simulated scan, and their side


def crystal(n: int = N) -> np.ndarray:
    """(n, n, n) complex64: a faceted crystal (a box with two cut corners, ~n/3 wide) with a
    smooth strain-like phase, centred; oversampled ~3 per axis."""
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    inside = (abs(z) <= 5) & (abs(y) <= 6) & (abs(x) <= 4) & (x + y <= 7) & (z - x <= 7)
    phase = 0.8 * np.sin(np.pi * (z + y) / 14.0) * np.cos(np.pi * x / 12.0)
    return (inside * np.exp(1j * phase)).astype(np.complex64)


def diffraction(obj: np.ndarray) -> np.ndarray:
    """|centred unitary FFT|^2 of a 3D object, scaled to a peak of 1e5 counts (float32)."""
    field = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(obj), norm="ortho"))
    intensity = np.abs(field) ** 2
    return (intensity * (1e5 / intensity.max())).astype(np.float32)


class RockingSource(FrameSource):
    """The slices of a 3D diffraction pattern along its first axis, one per rocking angle."""

    def __init__(self, volume: np.ndarray, angles: np.ndarray):
        self.frames = volume
        self.angles = angles
        self.n_frames = len(volume)
        self.shape = (int(volume.shape[1]), int(volume.shape[2]))

    def _frame(self, i):
        return self.frames[i].copy()

    def provenance(self):
        return {"source": "simulated rocking scan"}


ANGLES = np.round(np.linspace(10.0, 10.31, N), 4)  # degrees, step 0.01


@pytest.fixture(scope="module")
def source():
    return RockingSource(diffraction(crystal()), ANGLES)


@pytest.fixture()
def client(tiled_server):
    return tiled_server.client()


def _live(tiled_server, client, rocking: RockingConfig, **kw):
    writer = make_writer(processed(client), tiled_server.spool_dir)
    config = LiveConfig(data_dir=tiled_server.data_dir, max_wait_s=60, rocking=rocking)
    return LiveReconstruction(engine(8), writer, config, **kw)


def _scan(source, n=N):
    th = RockingMotor("th")
    det = ReplayDetector(source, name="det", motor=th)
    return scan([det], th, float(source.angles[0]), float(source.angles[n - 1]), n)


# --- which runs are rocking scans --------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "motor"),
    [
        ({"motors": ["th"], "detectors": ["det"], "plan_name": "scan"}, "th"),
        ({"motors": ["sample_Theta"], "detectors": ["det"], "plan_name": "rel_scan"}, "sample_Theta"),
        ({"motors": ["eta"], "detectors": ["det"], "plan_name": "list_scan"}, "eta"),
        ({"motors": ["x"], "detectors": ["det"], "plan_name": "scan"}, None),  # not an angle
        ({"motors": ["th", "x"], "detectors": ["det"], "plan_name": "grid_scan"}, None),  # two motors
        ({"motors": ["th"], "detectors": [], "plan_name": "scan"}, None),  # no detector
        ({"detectors": ["det"], "plan_name": "count"}, None),
    ],
)
def test_rocking_motor_from_the_start_document(start, motor):
    assert rocking_motor(start, RockingConfig()) == motor


def test_rocking_motor_names_are_configurable_and_the_3d_job_can_be_turned_off():
    start = {"motors": ["chi"], "detectors": ["det"]}
    assert rocking_motor(start, RockingConfig()) is None
    assert rocking_motor(start, RockingConfig(motors=("chi",))) == "chi"
    assert rocking_motor({"motors": ["th"], "detectors": ["det"]}, RockingConfig(enabled=False)) is None
    with pytest.raises(ConfigError, match="keep"):
        RockingConfig.build(starts=2, keep=3)


# --- the stack ----------------------------------------------------------------------------------


def test_stack_takes_the_depth_around_the_brightest_frame_and_masks_gaps():
    rng = np.random.default_rng(0)
    seqs = np.arange(1, 41)
    modulus = rng.random((40, 8, 8)).astype(np.float32)
    modulus[24] *= 10  # seq 25 is the brightest
    stack = VolumeStack({"uid": "raw"}, "th", RockingConfig(depth=16, min_frames=4))
    mask = np.ones((8, 8), bool)
    mask[0, 0] = False
    stack.add(seqs[:20], modulus[:20], mask)
    stack.add(np.array([21]), np.full((1, 8, 8), np.nan, np.float32), mask)  # not finite: a gap
    stack.add(seqs[21:], modulus[21:], mask)
    volume = stack.volume({int(s): 10 + 0.01 * s for s in seqs})
    assert isinstance(volume, Volume)
    np.testing.assert_array_equal(volume.seq_nums, np.arange(17, 33))
    assert volume.brightest == 25 and volume.missing == (21,) and volume.received == 39
    np.testing.assert_array_equal(volume.modulus[8], modulus[24])  # plane of seq 25
    assert not volume.mask[21 - 17].any() and (volume.mask[0] == mask).all()
    np.testing.assert_allclose(volume.angles, 10 + 0.01 * np.arange(17, 33))
    assert volume.step == pytest.approx(0.01)

    edge = VolumeStack({"uid": "raw"}, "th", RockingConfig(depth=16, min_frames=4))
    edge.add(seqs, modulus[::-1].copy(), None)  # brightest at seq 16: the window stays in the scan
    np.testing.assert_array_equal(edge.volume({}).seq_nums, np.arange(8, 24))  # type: ignore[union-attr]
    assert np.isnan(edge.volume({}).angles).all()  # type: ignore[union-attr]

    few = VolumeStack({"uid": "raw"}, "th", RockingConfig(min_frames=16))
    few.add(seqs[:10], modulus[:10], None)
    assert few.volume({}) == "10 frames with data, 16 needed for a 3D reconstruction (RockingConfig.min_frames)"


# --- through the RunEngine and Tiled ------------------------------------------------------------


def test_rocking_scan_gives_a_3d_run_linked_to_the_raw_run(source, tiled_server, client, run_engine, tmp_path):
    raw_writer = make_writer(client, tiled_server.spool_dir)
    rocking = RockingConfig(
        starts=2, keep=1, min_frames=16, refine=RefineConfig(schedule="(HIO**80 * ER**20)**2", shrinkwrap_start=50)
    )
    cb = _live(tiled_server, client, rocking)
    run_engine.subscribe(raw_writer)
    run_engine.subscribe(cb)
    geometry = {"energy_kev": 9.0, "detector_distance_m": 1.5, "delta_deg": 32.0, "gamma_deg": 12.0}
    (raw_uid,) = run_engine(_scan(source), **geometry).run_start_uids
    assert cb.flush(timeout=300) and raw_writer.flush(60)
    cb.close()

    (run,) = volume_runs(client, raw_uid)
    start = run.metadata["start"]
    assert start[PARENT_UID] == raw_uid and start["cdi_kind"] == VOLUME_KIND and cb.volume_uid(raw_uid) == start["uid"]
    assert start["scan_id"] == client[raw_uid].metadata["start"]["scan_id"]
    assert start[GEOMETRY] == {"energy_kev": 9.0, "distance_m": 1.5, "delta_deg": 32.0, "gamma_deg": 12.0}
    assert start[ROCKING]["motor"] == "th" and start[ROCKING]["depth"] == N and start[ROCKING]["missing_seq_nums"] == []
    assert start[ROCKING]["step_deg"] == pytest.approx(0.01)
    assert start["raw_image_key"] == "det_image" and start[ROCKING]["config"]["starts"] == 2
    vol = load_volume(client, start["uid"])
    assert vol["stop"][VOLUME_SUMMARY]["status"] == "ok" and vol["stop"][VOLUME_SUMMARY]["reason"] == ""
    assert vol["stop"][VOLUME_SUMMARY]["engine"].startswith("(HIO**80 * ER**20)**2 on ")
    assert vol["amplitude"].shape == vol["phase"].shape == vol["support"].shape == (N, N, N)
    assert vol["support"].dtype == bool and vol["chi2_starts"].shape == (2,)
    np.testing.assert_allclose(vol["rocking_angle"], ANGLES, atol=1e-9)  # the motor's readings
    np.testing.assert_array_equal(vol["raw_seq_num"], np.arange(1, N + 1))
    # 2 starts x 200 iterations: chi² 2.8e-4, support ~2200
    # voxels for a 1182-voxel crystal (2-core x86-64 CPU, 2026-12-03)
    assert vol["chi2"] < 1e-3 and vol["chi2"] == pytest.approx(vol["stop"][VOLUME_SUMMARY]["chi2"])
    truth = np.abs(crystal()) > 0
    assert truth.sum() <= vol["support"].sum() < 3 * truth.sum()
    done = vol["stop"][VOLUME_SUMMARY]["postprocess"]  # twin, ramp, offset, unwrapping; lab axes from the geometry
    assert done["unwrapped"] and done["offset"] == "centre" and done["lab"] == "orthogonal lab axes (z, y, x)"
    assert done["lab_voxel_nm"] > 0 and vol["lab_amplitude"].ndim == 3
    assert vol["lab_amplitude"].shape == vol["lab_phase"].shape == vol["lab_support"].shape
    # the crystal comes back: aligned amplitude rms error 0.15 (of 1), phase over the strong part spans 1.44 rad
    # once unwrapped and its ramp removed (the true field spans 1.6 rad) (2-core x86-64 CPU, 2026-12-03)
    pair = align(vol["amplitude"] * np.exp(1j * vol["phase"]), crystal(), support=truth)
    amplitude = np.abs(pair.recon) / np.abs(pair.recon)[truth].mean()
    assert np.sqrt(np.mean((amplitude - 1)[truth] ** 2)) < 0.4
    strong = vol["amplitude"] > 0.5 * vol["amplitude"].max()
    assert np.ptp(vol["phase"][strong]) < 2.5
    (derived,) = derived_runs(client, raw_uid)  # the per-frame 2D previews stay
    assert derived.metadata["stop"]["cdi_counts"]["received"] == N

    # export: the 3D run as one CXI volume (the default where there is one), the previews on request
    store = ["--uri", tiled_server.uri, "--api-key", tiled_server.api_key]
    assert main(["export", raw_uid, "--out", str(tmp_path / "v.cxi"), *store]) == 0
    cxi = read_cxi(tmp_path / "v.cxi")
    np.testing.assert_allclose(np.abs(cxi.object), vol["amplitude"], rtol=1e-6)
    np.testing.assert_array_equal(cxi.support, vol["support"])
    assert cxi.geometry["energy_kev"] == pytest.approx(9.0) and cxi.geometry["delta_deg"] == pytest.approx(32.0)
    assert main(["export", raw_uid, "--what", "previews", "--out", str(tmp_path / "p.cxi"), *store]) == 0
    assert read_cxi(tmp_path / "p.cxi").object.shape[0] == N

    # offline: reprocess rebuilds the 3D run too, its angles read back from the raw stream
    writer = make_writer(processed(client), tiled_server.spool_dir)
    reprocess(client, raw_uid, engine(8), writer, LiveConfig(data_dir=tiled_server.data_dir, rocking=rocking))
    assert writer.flush(60)
    live, again = volume_runs(client, raw_uid)
    redo = load_volume(client, again.metadata["start"]["uid"])
    assert again.metadata["start"]["reprocessed"] is True and live.metadata["start"]["uid"] == start["uid"]
    np.testing.assert_allclose(redo["rocking_angle"], ANGLES, atol=1e-9)
    assert redo["chi2"] == pytest.approx(vol["chi2"], rel=1e-5)  # same seed, same machine


def _fake_phased(volume: Volume) -> PhasedVolume:
    """A phased volume of the right shapes, for the tests about scheduling and failure."""
    obj = np.ones(volume.modulus.shape, np.complex64)
    return PhasedVolume(obj, np.ones(obj.shape, bool), 0.5, np.array([0.5, 0.6], np.float32), 0.1, 0.2, "ER**1", "test")


def test_3d_job_documents_validate_and_too_few_frames_give_none(tmp_path, caplog):
    from event_model import DocumentNames, schema_validators

    documents: list = []
    jobs = VolumeJobs(
        lambda name, doc: documents.append((name, doc)),
        tmp_path,
        RockingConfig(min_frames=6),
        phase=lambda volume, config, seed: _fake_phased(volume),
    )
    start = {"uid": "raw-1", "motors": ["th"], "detectors": ["det"], "scan_id": 7, "energy_kev": 9.0}
    stack = jobs.stack(start)
    assert stack is not None and jobs.stack({**start, "motors": ["x"]}) is None
    stack.add(np.arange(1, 5), np.ones((4, 8, 8), np.float32), None)
    with caplog.at_level("WARNING"):
        assert jobs.run(stack, {}, {}) is None  # 4 frames, 6 needed
    assert documents == [] and "rocking scan raw-1: no 3D reconstruction: 4 frames with data, 6 needed" in caplog.text
    assert jobs.skipped == {"raw-1": "4 frames with data, 6 needed for a 3D reconstruction (RockingConfig.min_frames)"}

    stack.add(np.arange(5, 9), np.ones((4, 8, 8), np.float32), None)
    uid = jobs.run(stack, {i: 10 + 0.01 * i for i in range(1, 9)}, {})
    names = [name for name, _ in documents]
    keys = (
        6  # amplitude, phase, support, chi2_starts, rocking_angle, raw_seq_num: no lab arrays without a whole geometry
    )
    assert names == ["start", "descriptor", *["stream_resource"] * keys, "event_page", *["stream_datum"] * keys, "stop"]
    for name, doc in documents:
        schema_validators[DocumentNames[name]].validate(doc)
    start_doc, stop = documents[0][1], documents[-1][1]
    assert start_doc["uid"] == uid and start_doc["scan_id"] == 7 and start_doc[GEOMETRY] == {"energy_kev": 9.0}
    assert stop[VOLUME_SUMMARY]["postprocess"]["lab"].startswith("invalid configuration")  # why no lab axes
    assert (tmp_path / f"{uid}.h5").is_file()


def test_a_failing_3d_job_gives_an_error_run_and_the_next_scan_goes_on(source, tiled_server, client, run_engine):
    def failing(volume, config, seed):
        raise RuntimeError("the 3D engine broke")

    cb = _live(tiled_server, client, RockingConfig(min_frames=4), phase_volume=failing)
    run_engine.subscribe(cb)
    first = run_engine(_scan(source, 8)).run_start_uids[0]
    second = run_engine(_scan(source, 8)).run_start_uids[0]
    assert cb.flush(timeout=120)
    cb.close()
    for raw_uid in (first, second):
        (run,) = volume_runs(client, raw_uid)
        vol = load_volume(client, run.metadata["start"]["uid"])
        assert vol["stop"][VOLUME_SUMMARY]["status"] == "error"
        assert vol["stop"][VOLUME_SUMMARY]["reason"] == "3D phasing failed: RuntimeError: the 3D engine broke"
        assert vol["stop"]["exit_status"] == "fail" and "amplitude" not in vol
        (derived,) = derived_runs(client, raw_uid)  # the 2D previews are all there
        assert derived.metadata["stop"]["cdi_counts"]["received"] == 8
    assert cb.worker.stats["volume_errors"] == 2 and cb.worker.stats["worker_errors"] == 0


def test_next_scan_is_not_delayed_by_the_3d_job_and_a_count_gets_none(source, tiled_server, client, run_engine):
    entered, release = threading.Event(), threading.Event()

    def slow(volume, config, seed):
        entered.set()
        release.wait(120)
        return _fake_phased(volume)

    cb = _live(tiled_server, client, RockingConfig(min_frames=4), phase_volume=slow)
    second_rows = threading.Event()
    raw: dict[str, str] = {}
    cb.add_listener(lambda uid, rows: second_rows.set() if uid == raw.get("count") else None)
    run_engine.subscribe(cb)
    raw["rocking"] = run_engine(_scan(source, 8)).run_start_uids[0]
    assert entered.wait(60)  # the 3D job of the rocking scan is running ...
    det = ReplayDetector(RockingSource(source.frames[:4], ANGLES[:4]), name="det")
    raw["count"] = run_engine(count([det], 4)).run_start_uids[0]
    assert second_rows.wait(120)  # ... and the next scan's frames are reconstructed meanwhile
    assert not release.is_set()
    release.set()
    assert cb.flush(timeout=120)
    cb.close()
    (run,) = volume_runs(client, raw["rocking"])
    vol = load_volume(client, run.metadata["start"]["uid"])
    assert vol["stop"][VOLUME_SUMMARY]["status"] == "ok" and vol["amplitude"].shape == (8, N, N)
    assert volume_runs(client, raw["count"]) == [] and cb.volume_uid(raw["count"]) is None
    assert load_results(client, cb.derived_uid(raw["count"]))["status"].shape == (4,)


def test_scan_overview_gains_the_slices_of_the_3d_run(tmp_path):
    import matplotlib.image

    from cdi_beamline.plotting import plot_scan_overview

    obj = crystal(16)
    res = {
        "status": np.array(["ok"] * 4),
        "amplitude": np.abs(obj[4:8]),
        "phase": np.angle(obj[4:8]),
        "support": np.abs(obj[4:8]) > 0,
        "chi2": np.full(4, 0.01),
        "raw_seq_num": np.arange(1, 5),
    }
    volume = {"amplitude": np.abs(obj), "phase": np.angle(obj), "support": np.abs(obj) > 0, "chi2": 0.006}
    assert plot_scan_overview(res, tmp_path / "frames.png")
    assert plot_scan_overview(res, tmp_path / "both.png", volume=volume)
    assert plot_scan_overview(res, tmp_path / "failed.png", volume={"stop": {}})  # a 3D run without arrays
    frames, both = (matplotlib.image.imread(tmp_path / f"{name}.png") for name in ("frames", "both"))
    assert (
        both.shape[0] > 2 * frames.shape[0] and matplotlib.image.imread(tmp_path / "failed.png").shape == frames.shape
    )
