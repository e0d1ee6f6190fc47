"""Frame sources for tests (importable as ``sources`` beside ``oracle``)."""

from __future__ import annotations

from cdi_beamline.devices import FrameSource


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
