"""ophyd-async client of the ``CDIReplayDetector`` Tango device, for Bluesky plans."""

from __future__ import annotations

import asyncio
from typing import Annotated as A

import numpy as np
import numpy.typing as npt
from bluesky.protocols import Triggerable
from ophyd_async.core import DEFAULT_TIMEOUT, AsyncStatus, SignalR, SignalRW, StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.tango.core import TangoDevice, get_full_attr_trl, tango_triggerable_command

__all__ = ["TangoReplayDetector"]


def use_executor_of_running_loop() -> None:
    """Point pytango's global asyncio executor at the running event loop.

    pytango keeps one process-wide executor bound to the loop it was made in. A new
    RunEngine brings a new loop (often in a thread with a recycled id, so pytango cannot
    tell), and the stale executor then fails every call; reset it when the loops differ.
    """
    from tango.asyncio_executor import AsyncioExecutor, get_global_executor, set_global_executor

    loop = asyncio.get_running_loop()
    if getattr(get_global_executor(), "loop", None) is not loop:
        set_global_executor(AsyncioExecutor(loop=loop))


class TangoReplayDetector(TangoDevice, StandardReadable, Triggerable):
    """A ``CDIReplayDetector`` seen through ``ophyd_async.tango``: ``trigger()`` runs the
    device's ``Acquire`` command; each event holds the frame (``{name}-image``, (H, W)) and
    its source index (``{name}-frame_index``); the configuration holds ``exposure_time``
    and ``source_info`` (what the device replays, JSON).

    The image is read from the device at each ``read()`` (not from a cache), and the
    device pushes change events, so subscribers (live plots) see every frame. The image
    signal is typed float64 because ophyd-async maps Tango's DevFloat to Python float;
    the arrays in the events are the device's float32 (descriptor ``dtype_numpy`` "<f4").
    ``stage()`` runs the device's ``Rewind``, so each run starts at frame 0.

    Parameters
    ----------
    trl : str
        Tango resource locator, e.g. ``"tango://127.0.0.1:45450/sim/cdi/detector#dbase=no"``
        or ``"sim/cdi/detector"`` with ``TANGO_HOST`` set.
    name : str
        Device name (event-key prefix).
    """

    image: A[SignalR[npt.NDArray[np.float64]], Format.HINTED_UNCACHED_SIGNAL]
    frame_index: A[SignalR[int], Format.UNCACHED_SIGNAL]
    frame_count: SignalR[int]
    exposure_time: A[SignalRW[float], Format.CONFIG_SIGNAL]
    source_info: A[SignalR[str], Format.CONFIG_SIGNAL]

    def __init__(self, trl: str, name: str = ""):
        # Tango commands are CamelCase; ophyd-async children are snake_case: map them here
        self.acquire = tango_triggerable_command(get_full_attr_trl(trl, "Acquire"))
        self.rewind = tango_triggerable_command(get_full_attr_trl(trl, "Rewind"))
        super().__init__(trl, support_events=True, auto_fill_signals=False, name=name)

    async def connect(self, *args, **kwargs) -> None:
        use_executor_of_running_loop()
        await super().connect(*args, **kwargs)

    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Start each run at frame 0 of the device's source, as the ophyd devices do."""
        await self.rewind.trigger()
        await super().stage()

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        exposure = await self.exposure_time.get_value()
        await self.acquire.trigger(timeout=exposure + DEFAULT_TIMEOUT)
