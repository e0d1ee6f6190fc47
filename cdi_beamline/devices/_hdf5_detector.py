"""An ophyd-async StandardDetector that replays a frame source into an HDF5 file and emits
StreamResource/StreamDatum documents, as facility area detectors with a file writer do.

Structure as in ophyd-async: the detector is trigger + acquire + data logic around a plain
Python object (:class:`FrameFileWriter`) that owns the file and the frame cursor.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import h5py
import numpy as np
from ophyd_async.core import (
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    PathProvider,
    StandardDetector,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    soft_signal_r_and_setter,
    soft_signal_rw,
)

from ..errors import CDIRuntimeError
from ._sources import FrameCursor, FrameSource, make_source

__all__ = ["ReplayHDF5Detector", "FrameFileWriter", "IMAGE_DATASET", "INDEX_DATASET"]

#: HDF5 dataset of the frames, (N, H, W) float32 intensities.
IMAGE_DATASET = "/entry/data/data"
#: HDF5 dataset of the source's frame number of each written frame, (N,) int64.
INDEX_DATASET = "/entry/instrument/frame_index"


class FrameFileWriter:
    """Writes frames of a source to an HDF5 file (SWMR, one chunk per frame), counting them
    in the signal ``frames_written`` that ophyd-async watches.

    Parameters
    ----------
    source : FrameSource
        Where frames come from; read in sequence from a cursor that ``rewind()`` resets and
        that wraps around at the end of a finite source.
    """

    def __init__(self, source: FrameSource):
        self.source = source
        self.frames_written, self._set_frames_written = soft_signal_r_and_setter(int)
        self.number_of_frames = 1
        self.period = 0.0
        self.path: Path | None = None
        self._file: h5py.File | None = None
        self.cursor = FrameCursor(source)

    def rewind(self) -> None:
        self.cursor.rewind()

    def open(self, path: Path) -> None:
        """Create the file with empty, growable datasets."""
        h, w = self.source.shape
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.path, "w", libver="latest")
        self._file.create_dataset(
            IMAGE_DATASET, shape=(0, h, w), maxshape=(None, h, w), chunks=(1, h, w), dtype=np.float32
        )
        self._file.create_dataset(INDEX_DATASET, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.int64)
        self._file.swmr_mode = True  # readers may follow the file while it grows
        self._set_frames_written(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, frame: np.ndarray, index: int) -> int:
        if self._file is None:
            raise CDIRuntimeError("FrameFileWriter: open() a file before acquiring")
        images, indices = self._file[IMAGE_DATASET], self._file[INDEX_DATASET]
        n = images.shape[0]
        for dset, value in ((images, frame), (indices, index)):
            dset.resize(n + 1, axis=0)
            dset[n] = value
            dset.flush()
        return n + 1

    async def acquire(self) -> None:
        """Write ``number_of_frames`` frames, one per ``period`` seconds (0: as fast as the
        source serves them)."""
        start = time.monotonic()
        for k in range(1, self.number_of_frames + 1):
            i, frame = await asyncio.to_thread(self.cursor.read)
            await asyncio.sleep(max(0.0, start + k * self.period - time.monotonic()))
            self._set_frames_written(self._append(frame, i))


class _ReplayTriggerLogic(DetectorTriggerLogic):
    def __init__(self, writer: FrameFileWriter):
        self.writer = writer

    async def prepare_internal(self, num: int, livetime: float, deadtime: float):
        self.writer.number_of_frames = num
        self.writer.period = livetime + deadtime

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class _ReplayAcquireLogic(DetectorAcquireLogic):
    def __init__(self, writer: FrameFileWriter):
        self.writer = writer
        self.task: asyncio.Task | None = None

    async def ensure_ready(self):
        await self.ensure_stopped()
        self.writer.rewind()

    async def start_acquiring(self):
        self.task = asyncio.create_task(self.writer.acquire())

    async def wait_for_idle(self):
        if self.task:
            await self.task

    async def ensure_stopped(self):
        if self.task:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class _ReplayDataLogic(DetectorDataLogic):
    def __init__(self, writer: FrameFileWriter, path_provider: PathProvider):
        self.writer = writer
        self.path_provider = path_provider

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        info = self.path_provider(datakey_name)
        filename = f"{info.filename}.h5"
        self.writer.open(Path(info.directory_path) / filename)
        h, w = self.writer.source.shape
        return StreamResourceDataProvider(
            uri=f"{info.directory_uri}{filename}",
            resources=[
                StreamResourceInfo(
                    data_key=datakey_name,
                    shape=(h, w),
                    chunk_shape=(1, h, w),
                    dtype_numpy=np.dtype(np.float32).str,
                    parameters={"dataset": IMAGE_DATASET},
                ),
                StreamResourceInfo(
                    data_key=f"{datakey_name}-frame_index",
                    shape=(),
                    chunk_shape=(1024,),
                    dtype_numpy=np.dtype(np.int64).str,
                    parameters={"dataset": INDEX_DATASET},
                ),
            ],
            mimetype="application/x-hdf5",
            collections_written_signal=self.writer.frames_written,
        )

    async def stop(self) -> None:
        self.writer.close()

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]


class _ReplayDetector(StandardDetector):
    """A replay detector: ``writer_class`` writes the frames of a source to files, the shared
    trigger and acquire logic drive it, ``data_logic_class`` announces the files; the source's
    ``provenance()`` is the configuration signal ``source_info``."""

    writer_class: type[FrameFileWriter]
    data_logic_class: type[DetectorDataLogic]

    def __init__(self, source: FrameSource | str, path_provider: PathProvider, name: str = ""):
        self.source = make_source(source) if isinstance(source, str) else source
        self.file_writer = self.writer_class(self.source)
        self.add_detector_logics(
            _ReplayTriggerLogic(self.file_writer),
            _ReplayAcquireLogic(self.file_writer),
            self.data_logic_class(self.file_writer, path_provider),  # type: ignore[call-arg]
        )
        self.source_info = soft_signal_rw(str, initial_value=json.dumps(self.source.provenance()))
        self.add_config_signals(self.source_info)
        super().__init__(name=name)


class ReplayHDF5Detector(_ReplayDetector):
    """A replay area detector writing HDF5 (ophyd-async): each collection is one frame of
    ``source`` appended to ``{directory}/{filename}.h5`` (dataset ``/entry/data/data``,
    (N, H, W) float32), announced by StreamResource/StreamDatum documents.

    Event keys: ``{name}`` (external, shape [1, H, W] per event) and ``{name}-frame_index``;
    configuration: ``{name}-source_info`` (the source's ``provenance()`` as JSON).
    ``stage()`` rewinds the source to frame 0.

    Parameters
    ----------
    source : FrameSource or str
        A frame source or a :func:`make_source` spec.
    path_provider : ophyd_async.core.PathProvider
        Where files go (e.g. ``StaticPathProvider(UUIDFilenameProvider(), directory)``).
    name : str
        Device name.
    """

    writer_class = FrameFileWriter
    data_logic_class = _ReplayDataLogic
