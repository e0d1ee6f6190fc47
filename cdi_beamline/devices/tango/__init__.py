"""Tango: device servers (``CDIReplayDetector``, ``CDIReconstructor``), the server runner
behind ``cdi-beamline tango-server``, and the ophyd-async client ``TangoReplayDetector``
(imported on first use: the server does not need Bluesky)."""

from __future__ import annotations

import importlib

from ._run import DETECTOR_NAME, RECONSTRUCTOR_NAME, SERVER_NAME, register, run_server, write_file_database
from ._servers import MAX_SIDE, CDIReconstructor, CDIReplayDetector

_LAZY = {"TangoReplayDetector": "._client"}

__all__ = [
    "CDIReplayDetector",
    "CDIReconstructor",
    "MAX_SIDE",
    "SERVER_NAME",
    "DETECTOR_NAME",
    "RECONSTRUCTOR_NAME",
    "register",
    "run_server",
    "write_file_database",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
