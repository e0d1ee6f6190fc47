"""Replay devices: events/s of a RunEngine ``count`` over each detector, as ratios against
``ophyd.sim.DirectImage`` (a 64x64 image signal returning a fixed array) measured in the
same run, plus the frame rates of the plain-Python sources. No callbacks, no writer.

    .venv/bin/python benchmarks/devices.py [--n 500]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="events per count (default 500)")
    args = parser.parse_args()
    n = args.n

    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import DirectImage
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices
    from tango.test_context import MultiDeviceTestContext

    from cdi_beamline.config import SimulationConfig
    from cdi_beamline.devices import ApsRockingSource, ReplayDetector, ReplayHDF5Detector, SyntheticSource
    from cdi_beamline.devices.tango import CDIReplayDetector, TangoReplayDetector

    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    aps = ApsRockingSource()
    RE = RunEngine({})
    fixed = aps.frame(99)
    baseline_det = DirectImage(name="img", func=lambda: fixed)
    rows = [("ophyd.sim.DirectImage (baseline)", events_per_s(RE, lambda k: count([baseline_det], k), n))]
    rows.append(("ReplayDetector (ophyd, APS)", events_per_s(RE, lambda k: count([ReplayDetector(aps)], k), n)))
    with tempfile.TemporaryDirectory() as tmp:
        with init_devices():
            hdet = ReplayHDF5Detector(aps, StaticPathProvider(UUIDFilenameProvider(), Path(tmp)), name="hdet")
        rows.append(
            ("ReplayHDF5Detector (ophyd-async, HDF5 + StreamDatum)", events_per_s(RE, lambda k: count([hdet], k), n))
        )
    devices = [
        {"class": CDIReplayDetector, "devices": [{"name": "sim/cdi/detector", "properties": {"Source": "aps34idc"}}]}
    ]
    with MultiDeviceTestContext(devices, process=True) as ctx:
        with init_devices():
            tdet = TangoReplayDetector(ctx.get_device_access("sim/cdi/detector"), name="tdet")
        rows.append(
            (
                "TangoReplayDetector (ophyd-async.tango, server in a subprocess)",
                events_per_s(RE, lambda k: count([tdet], k), n),
            )
        )
    base = rows[0][1]
    print(f"RunEngine count of {n} 64x64 frames, no callbacks:")
    for name, rate in rows:
        print(f"  {name:<66s} {rate:8.0f} events/s  x{rate / base:5.2f}")

    print("frame sources (frames/s, plain Python):")
    print(f"  {'ApsRockingSource.frame':<66s} {frames_per_s(aps, 20000):8.0f}")
    synth = SyntheticSource(n=None, config=SimulationConfig(), chunk=256, device="cpu")
    print(f"  {'SyntheticSource.frame (simulator, chunks of 256, CPU)':<66s} {frames_per_s(synth, 1024):8.0f}")


if __name__ == "__main__":
    main()
