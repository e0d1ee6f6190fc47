"""Ophyd (synchronous) simulated devices: an area detector replaying a frame source, and a
rocking motor θ, so that ``RE(scan([det], theta, -0.28, 0.72, 201))`` replays the measured
APS rocking scan frame by frame."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import StatusBase

from ..errors import CDIValueError
from ._sources import DEFAULT_SOURCE, FrameCursor, FrameSource, make_source

__all__ = ["ReplayDetector", "RockingMotor"]


class ImageSignal(Signal):
    """A 2D float32 image signal whose describe() gives its shape and numpy dtype."""

    def __init__(self, *args, shape: tuple[int, int] = (0, 0), **kwargs):
        super().__init__(*args, **kwargs)
        self.shape = tuple(shape)

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        desc[self.name].update({"dtype": "array", "shape": list(self.shape), "dtype_numpy": np.dtype(np.float32).str})
        return desc


class RockingMotor(SynAxis):
    """A simulated rocking axis θ in degrees (ophyd.sim ``SynAxis``: moves instantly)."""

    def __init__(self, name: str = "theta", **kwargs):
        kwargs.setdefault("egu", "deg")
        kwargs.setdefault("precision", 4)
        super().__init__(name=name, **kwargs)


class ReplayDetector(Device):
    """A simulated area detector that puts one replayed frame (float32 intensities) in each
    event, like ``ophyd.sim``'s image detectors.

    Event keys: ``{name}_image`` (H, W) float32 and ``{name}_frame_index`` (the source's
    frame number); configuration: ``{name}_source_info`` (the source's ``provenance()`` as
    JSON). ``stage()`` rewinds to frame 0; each ``trigger()`` reads the next frame,
    wrapping around at the end of a finite source. With ``motor`` given, ``trigger()``
    instead picks the frame whose rocking angle is nearest the motor's position.

    Parameters
    ----------
    source : FrameSource or str
        A frame source, or a spec for :func:`make_source` (``"aps34idc"``, ``"synthetic"``,
        a path).
    name : str
        Device name (event-key prefix).
    motor : ophyd positioner, optional
        The rocking axis; requires a source with ``angles``.
    """

    image = Cpt(ImageSignal, kind="hinted")
    frame_index = Cpt(Signal, value=-1, kind="normal")
    source_info = Cpt(Signal, value="{}", kind="config")

    def __init__(self, source: FrameSource | str = DEFAULT_SOURCE, name: str = "det", motor=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.source = make_source(source) if isinstance(source, str) else source
        if motor is not None and self.source.angles is None:
            raise CDIValueError(
                f"ReplayDetector {name!r}: motor {motor.name!r} given but the source "
                f"{self.source.provenance()['source']!r} has no rocking angles"
            )
        self.motor = motor
        self.image.shape = tuple(self.source.shape)
        self.source_info.put(json.dumps(self.source.provenance()))
        self.cursor = FrameCursor(self.source)

    def stage(self):
        self.cursor.rewind()
        return super().stage()

    def _choose_frame(self) -> int:
        if self.motor is not None:
            assert self.source.angles is not None  # checked in __init__
            return int(np.argmin(np.abs(self.source.angles - float(self.motor.position))))
        return self.cursor.advance()

    def trigger(self) -> StatusBase:
        i = self._choose_frame()
        self.image.put(self.source.frame(i))
        self.frame_index.put(i)
        status = StatusBase()
        status.set_finished()
        return status
