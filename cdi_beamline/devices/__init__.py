"""Simulated and replay devices: frame sources (plain Python), an ophyd area detector and
rocking motor, ophyd-async detectors writing HDF5 or a TIFF sequence, and (in ``cdi_beamline.devices.tango``) Tango
device servers with their ophyd-async client.

The frame sources load without Bluesky; the ophyd and ophyd-async devices are imported on
first use, so that e.g. the Tango server does not pay for them.
"""

from __future__ import annotations

import importlib

from ._sources import (
    APS_WHITEFIELD_LEVEL,
    DEFAULT_SOURCE,
    ApsRockingSource,
    FileSource,
    FrameCursor,
    FrameSource,
    SyntheticSource,
    make_source,
)

_LAZY = {
    "ReplayDetector": "._ophyd_sim",
    "RockingMotor": "._ophyd_sim",
    "ReplayHDF5Detector": "._hdf5_detector",
    "ReplayTIFFDetector": "._tiff_detector",
}

__all__ = [
    "APS_WHITEFIELD_LEVEL",
    "DEFAULT_SOURCE",
    "ApsRockingSource",
    "FrameCursor",
    "FileSource",
    "FrameSource",
    "SyntheticSource",
    "make_source",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
