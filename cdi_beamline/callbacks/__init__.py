"""Live reconstruction in Bluesky: the callback, the worker, derived runs, 0MQ glue.

``LiveReconstruction`` is subscribed to a RunEngine (or a 0MQ ``RemoteDispatcher``); it
hands frames to a worker thread that writes one derived run per raw run.
"""

from ._derived import DerivedRun, ResultRows
from ._live import LiveReconstruction, find_image_key
from ._reprocess import reprocess
from ._session import LiveSession
from ._worker import ReconstructionWorker

__all__ = [
    "LiveReconstruction",
    "DerivedRun",
    "ResultRows",
    "ReconstructionWorker",
    "find_image_key",
    "reprocess",
    "LiveSession",
]
