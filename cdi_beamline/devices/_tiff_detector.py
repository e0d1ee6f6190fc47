"""An ophyd-async StandardDetector that replays a frame source into a TIFF file sequence, one
file per frame, announced as ophyd-async's areaDetector TIFF writer does: a StreamResource of
mimetype ``multipart/related;type=image/tiff`` whose ``template`` names the files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from ophyd_async.core import (
    DetectorDataLogic,
    PathProvider,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
)

from ..errors import CDIRuntimeError
from ._hdf5_detector import FrameFileWriter, _ReplayDetector

__all__ = ["ReplayTIFFDetector", "TIFF_MIMETYPE", "TiffSequenceWriter"]

#: The mimetype of a TIFF file sequence (bluesky-tiled-plugins' TIFFConsolidator).
TIFF_MIMETYPE = "multipart/related;type=image/tiff"


class TiffSequenceWriter(FrameFileWriter):
    """Writes each frame of a source to its own TIFF file ``{prefix}_{n:06d}.tiff`` (n from 0,
    float32), counting them in ``frames_written``, like areaDetector's NDFileTIFF plugin."""

    def open(self, path: Path) -> None:
        """Start a sequence: ``path`` is the directory joined with the file-name prefix."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self._set_frames_written(0)

    def close(self) -> None:
        self.path = None

    def file(self, n: int) -> Path:
        """The file of frame ``n`` (0-based) of the open sequence."""
        if self.path is None:
            raise CDIRuntimeError("TiffSequenceWriter: open() a sequence before acquiring")
        return self.path.with_name(f"{self.path.name}_{n:06d}.tiff")

    def _append(self, frame: np.ndarray, index: int) -> int:
        tifffile.imwrite(self.file(self._n), np.asarray(frame, np.float32), metadata={"frame_index": index})
        self._n += 1
        return self._n


class _TiffDataLogic(DetectorDataLogic):
    def __init__(self, writer: TiffSequenceWriter, path_provider: PathProvider):
        self.writer = writer
        self.path_provider = path_provider

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        info = self.path_provider(datakey_name)
        self.writer.open(Path(info.directory_path) / info.filename)
        h, w = self.writer.source.shape
        return StreamResourceDataProvider(
            uri=info.directory_uri,
            resources=[
                StreamResourceInfo(
                    data_key=datakey_name,
                    shape=(h, w),
                    chunk_shape=(1, h, w),
                    dtype_numpy=np.dtype(np.float32).str,
                    parameters={"template": info.filename + "_{:06d}.tiff"},
                )
            ],
            mimetype=TIFF_MIMETYPE,
            collections_written_signal=self.writer.frames_written,
        )

    async def stop(self) -> None:
        self.writer.close()

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]


class ReplayTIFFDetector(_ReplayDetector):
    """A replay area detector writing a TIFF sequence (ophyd-async): each collection is one
    frame of ``source`` written to ``{directory}/{filename}_{n:06d}.tiff`` (float32), announced
    by StreamResource (``multipart/related;type=image/tiff``, ``template``) and StreamDatum
    documents.

    Event key: ``{name}`` (external, shape [1, H, W] per event); configuration:
    ``{name}-source_info``. ``stage()`` rewinds the source to frame 0.

    Parameters
    ----------
    source : FrameSource or str
        A frame source or a :func:`make_source` spec.
    path_provider : ophyd_async.core.PathProvider
        Where files go (e.g. ``StaticPathProvider(UUIDFilenameProvider(), directory)``).
    name : str
        Device name.
    """

    writer_class = TiffSequenceWriter
    data_logic_class = _TiffDataLogic
