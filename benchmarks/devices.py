"""Replay devices: events/s of a RunEngine ``count`` over each detector, as ratios against
``ophyd.sim.DirectImage`` (a 64x64 image signal returning a fixed array) measured in the
same repeat, plus the frame rates of the plain-Python sources. No callbacks, no writer.

    ./run bench devices [--repeats N] -- [--n 500]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from _harness import Ratio, Row, main

NAME = "devices"
TITLE = "Replay devices: RunEngine count of {n} 64×64 frames, no callbacks"
ROWS = [
    Row("direct", "ophyd.sim.DirectImage (baseline)", "events/s", 0),
    Row("replay", "ReplayDetector (ophyd, APS)", "events/s", 0),
    Row("hdf5", "ReplayHDF5Detector (ophyd-async, HDF5 + StreamDatum)", "events/s", 0),
    Row("tango", "TangoReplayDetector (ophyd-async.tango, server in a subprocess)", "events/s", 0),
    Row("aps_frames", "ApsRockingSource.frame, plain Python", "frames/s", 0),
    Row("synth_frames", "SyntheticSource.frame (simulator, chunks of 256, CPU)", "frames/s", 0),
]
RATIOS = [
    Ratio("ReplayDetector / DirectImage", "replay", "direct"),
    Ratio("ReplayHDF5Detector / DirectImage", "hdf5", "direct"),
    Ratio("TangoReplayDetector / DirectImage", "tango", "direct"),
]


def events_per_s(RE, plan_factory, n: int) -> float:
    RE(plan_factory(min(n, 20)))  # warm up (connections, first file, caches)
    t0 = time.perf_counter()
    RE(plan_factory(n))
    return n / (time.perf_counter() - t0)


def frames_per_s(source, n: int) -> float:
    source.frame(0)
    t0 = time.perf_counter()
    for i in range(n):
        source.frame(i % source.n_frames if source.n_frames else i)
    return n / (time.perf_counter() - t0)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=500, help="events per count (default 500)")


def setup(args: argparse.Namespace) -> dict:
    from bluesky import RunEngine
    from ophyd.sim import DirectImage
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices
    from tango.test_context import MultiDeviceTestContext

    from cdi_beamline.devices import ApsRockingSource, ReplayDetector, ReplayHDF5Detector
    from cdi_beamline.devices.tango import CDIReplayDetector, TangoReplayDetector

    stack = contextlib.ExitStack()
    RE = RunEngine({})  # first: ophyd-async devices connect in its event loop
    aps = ApsRockingSource()
    fixed = aps.frame(99)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    with init_devices():
        hdet = ReplayHDF5Detector(aps, StaticPathProvider(UUIDFilenameProvider(), tmp), name="hdet")
    tango_devices = [
        {"class": CDIReplayDetector, "devices": [{"name": "sim/cdi/detector", "properties": {"Source": "aps34idc"}}]}
    ]
    ctx = stack.enter_context(MultiDeviceTestContext(tango_devices, process=True))
    with init_devices():
        tdet = TangoReplayDetector(ctx.get_device_access("sim/cdi/detector"), name="tdet")
    return {
        "stack": stack,
        "RE": RE,
        "aps": aps,
        "dets": {
            "direct": DirectImage(name="img", func=lambda: fixed),
            "replay": ReplayDetector(aps),
            "hdf5": hdet,
            "tango": tdet,
        },
    }


def measure(args: argparse.Namespace, state: dict) -> dict:
    from bluesky.plans import count

    from cdi_beamline.config import SimulationConfig
    from cdi_beamline.devices import SyntheticSource

    out = {key: events_per_s(state["RE"], lambda k, d=det: count([d], k), args.n) for key, det in state["dets"].items()}
    out["aps_frames"] = frames_per_s(state["aps"], 20000)
    synth = SyntheticSource(n=None, config=SimulationConfig(), chunk=256, device="cpu")
    out["synth_frames"] = frames_per_s(synth, 1024)
    return out


def teardown(state: dict) -> None:
    state["stack"].close()


if __name__ == "__main__":
    main(sys.modules[__name__])
