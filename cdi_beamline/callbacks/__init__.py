"""Live reconstruction in Bluesky: the callback, the worker, derived runs, the session.

``LiveReconstruction`` is subscribed to a RunEngine (or a 0MQ ``RemoteDispatcher``); it puts
typed work items on the queue of a ``ReconstructionWorker`` thread, which drives one
``RunAssembler`` (frames in, rows out) and one ``DerivedRun`` per raw run. ``LiveSession``
wires these to Tiled; ``reprocess`` drives the same worker from frames stored in Tiled.
With ``LiveConfig.cluster`` the worker's batches run on a Dask cluster (``DaskEngine``).
"""

from ._assembler import Engine, PendingRows, RunAssembler
from ._dask import DaskCluster, DaskEngine, parse_cluster
from ._derived import DerivedRun
from ._external import UnreadableFrames, read_stream_datum
from ._items import ExternalFrames, Frames, ImageSpec, Quit, RunStart, RunStop, Sync, Unreadable, WorkItem
from ._live import LiveReconstruction
from ._reprocess import reprocess
from ._session import Finished, LiveSession
from ._volume import PhasedVolume, PhaseVolume, Volume, VolumeJobs, VolumeStack, phase_volume, rocking_motor
from ._worker import ReconstructionWorker

__all__ = [
    "DaskCluster",
    "DaskEngine",
    "DerivedRun",
    "Engine",
    "ExternalFrames",
    "Finished",
    "Frames",
    "ImageSpec",
    "LiveReconstruction",
    "LiveSession",
    "PendingRows",
    "PhaseVolume",
    "PhasedVolume",
    "Quit",
    "ReconstructionWorker",
    "RunAssembler",
    "RunStart",
    "RunStop",
    "Sync",
    "Unreadable",
    "UnreadableFrames",
    "Volume",
    "VolumeJobs",
    "VolumeStack",
    "WorkItem",
    "parse_cluster",
    "phase_volume",
    "read_stream_datum",
    "reprocess",
    "rocking_motor",
]
