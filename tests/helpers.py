"""Shared test helpers (importable as ``helpers`` beside ``oracle``): a list-replaying frame
source and the small CPU engine of the live tests."""

from __future__ import annotations

from cdi_beamline.config import ReconstructorConfig
from cdi_beamline.devices import FrameSource
from cdi_beamline.pipeline import Reconstructor


class ListSource(FrameSource):
    """Replays a fixed list of frames, bad or odd-shaped ones included."""

    def __init__(self, frames):
        self.frames = frames
        self.n_frames = len(frames)
        self.shape = (64, 64)

    def _frame(self, i):
        return self.frames[i]

    def provenance(self):
        return {"source": "list"}


ITER = 20  # refinement iterations: enough to exercise the engine, small for CI
_ENGINES: dict[int, Reconstructor] = {}


def engine(batch_size: int) -> Reconstructor:
    """The test engine (CPU, ITER iterations) whose batch is ``batch_size`` frames."""
    if batch_size not in _ENGINES:
        config = ReconstructorConfig(iterations=ITER, saturation=1e7, batch_size=batch_size)
        _ENGINES[batch_size] = Reconstructor(config, device="cpu")
    return _ENGINES[batch_size]
