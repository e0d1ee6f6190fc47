"""Tango device classes: a replay detector and a reconstruction service.

Both are pytango high-level ``Device`` classes (default synchronous green mode), served
together by ``cdi-beamline tango-server`` as ``sim/cdi/detector`` and
``sim/cdi/reconstructor``. Images are pushed as change events by the code (no polling
needed): a client subscribing to ``image`` gets every frame, not a stale polled copy.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import tango
from tango import AttrWriteType, DevState
from tango.server import Device, attribute, command, device_property

from ...config import LIVE_ITERATIONS, ModelConfig, ReconstructorConfig
from ...pipeline import Reconstructor, validate_frame
from ...results import RECONSTRUCTED
from .. import DEFAULT_SOURCE, FrameCursor, FrameSource, make_source

__all__ = ["CDIReplayDetector", "CDIReconstructor", "MAX_SIDE"]

#: Largest image side served or accepted (pixels).
MAX_SIDE = 1024

logger = logging.getLogger(__name__)


def _image(doc: str, writable: bool = False, dtype=np.float32, unit: str = "") -> attribute:
    return attribute(
        dtype=((dtype,),),
        max_dim_x=MAX_SIDE,
        max_dim_y=MAX_SIDE,
        access=AttrWriteType.READ_WRITE if writable else AttrWriteType.READ,
        doc=doc,
        unit=unit,
    )


class CDIReplayDetector(Device):
    """A simulated 2D detector replaying diffraction patterns from a frame source.

    ``Acquire`` waits ``exposure_time`` seconds, takes the next frame of the source
    (wrapping around at its end), and pushes change events for ``image``,
    ``frame_index`` and ``frame_count``. ``Rewind`` goes back to frame 0. A ``Source``
    that cannot be opened leaves the device in FAULT with the reason as status.
    """

    Source = device_property(
        dtype=str,
        default_value=DEFAULT_SOURCE,
        doc="Frame source: 'aps34idc' (measured, flat-field corrected), 'aps34idc-raw', "
        "'synthetic' (endless simulator) or a file path (.h5 of simulate, .npy, .npz)",
    )

    def init_device(self):
        super().init_device()
        self.set_state(DevState.INIT)
        self._lock = threading.Lock()
        self._frame_count = 0
        self._frame_index = -1
        self._exposure_time = 0.0
        self.source: FrameSource | None = None
        self.cursor: FrameCursor | None = None
        try:
            self.source = make_source(self.Source)
        except Exception as exc:  # a bad property must leave a device that says why
            self._image = np.zeros((1, 1), np.float32)
            self.set_state(DevState.FAULT)
            self.set_status(f"cannot open frame source {self.Source!r}: {exc}")
            return
        self.cursor = FrameCursor(self.source)
        self._image = np.zeros(self.source.shape, np.float32)
        for name in ("image", "frame_count", "frame_index"):
            self.set_change_event(name, True, False)
        self.set_state(DevState.ON)
        n = self.source.n_frames
        self.set_status(
            f"ready: source {self.Source!r}, {n if n is not None else 'endless'} frames of "
            f"{self.source.shape[0]}x{self.source.shape[1]}"
        )

    image = _image("Last acquired frame: detector intensities (counts), float32", unit="counts")

    def read_image(self):
        return self._image

    @attribute(dtype=str, doc="What the device replays: the frame source's description (JSON)")
    def source_info(self):
        return json.dumps(self.source.provenance()) if self.source is not None else "{}"

    @attribute(dtype=int, doc="Frames acquired since the device started")
    def frame_count(self):
        return self._frame_count

    @attribute(dtype=int, doc="Index in the source of the last frame (-1: none yet)")
    def frame_index(self):
        return self._frame_index

    @attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        unit="s",
        min_value=0.0,
        max_value=3600.0,
        doc="Exposure time per Acquire (s); the replay sleeps this long",
    )
    def exposure_time(self):
        return self._exposure_time

    def write_exposure_time(self, value: float):
        self._exposure_time = float(value)

    def is_Acquire_allowed(self):
        return self.get_state() == DevState.ON

    @command
    def Acquire(self):
        """Expose for ``exposure_time`` and publish the next frame (change events)."""
        with self._lock:
            if self._exposure_time:
                time.sleep(self._exposure_time)
            assert self.cursor is not None  # Acquire is allowed only in ON, after a source opened
            self._frame_index, self._image = self.cursor.read()
            self._frame_count += 1
            self.push_change_event("image", self._image)
            self.push_change_event("frame_index", self._frame_index)
            self.push_change_event("frame_count", self._frame_count)

    @command
    def Rewind(self):
        """Start the replay again at frame 0 (frame_count keeps counting)."""
        if self.cursor is not None:
            self.cursor.rewind()


class CDIReconstructor(Device):
    """A reconstruction service: write a diffraction ``pattern`` (intensities), run
    ``Reconstruct``, read ``amplitude``, ``phase``, ``support`` and ``chi2``.

    ``Reconstruct`` returns at once and works in the background: the state is RUNNING
    until the result is there (ON) or the pattern failed (FAULT). Writing a bad pattern
    (wrong shape, negative pixels, all zero) puts the device in FAULT with a status that
    says what is wrong; the next good pattern brings it back to ON. (NaN/inf never get
    here: Tango refuses non-finite float writes itself, with an error naming the element.)
    The engine is
    :class:`cdi_beamline.pipeline.Reconstructor`, as in the CLI and the Bluesky callback.
    """

    PatternShape = device_property(
        dtype=(int,),
        default_value=[ModelConfig().input_size] * 2,
        doc="Expected (rows, cols) of a pattern (default: the CNN's input)",
    )
    TorchDevice = device_property(dtype=str, default_value="auto", doc="Torch device: auto, cpu, cuda, cuda:N")
    Iterations = device_property(
        dtype=int,
        default_value=LIVE_ITERATIONS,
        doc=f"Initial value of `iterations` (default {LIVE_ITERATIONS}, the live preview's)",
    )
    InitMode = device_property(
        dtype=str,
        default_value=ReconstructorConfig.model_fields["init"].default,
        doc="Initial value of `init_mode` (cnn|random)",
    )

    INITS = ("cnn", "random")

    def init_device(self):
        super().init_device()
        self._shape = tuple(int(v) for v in self.PatternShape)
        self._pattern: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._iterations = int(self.Iterations)
        self._init = str(self.InitMode)
        self._seed = 0
        self._engine_key, self._engine_obj = None, None
        self._clear_result()
        for name in ("amplitude", "phase", "support", "chi2"):
            self.set_change_event(name, True, False)
        if len(self._shape) != 2 or min(self._shape) < 32 or max(self._shape) > MAX_SIDE:
            self._fault(f"bad property PatternShape {list(self._shape)}: need 2 sides in 32..{MAX_SIDE}")
        elif self._init not in self.INITS:
            self._fault(f"bad property InitMode {self._init!r}: use one of {', '.join(self.INITS)}")
        else:
            # warm up before saying ready: the engine built and, for a CNN start, its weights loaded
            # (the first pattern write or Reconstruct must not pay for it: Tango clients time out at 3 s)
            try:
                engine = self._engine(self._init, self._iterations)
                if self._init == "cnn":
                    engine.cnn()
            except Exception as exc:  # the device must report, not die
                self._fault(f"cannot build the reconstruction engine: {type(exc).__name__}: {exc}")
                return
            self.set_state(DevState.ON)
            self.set_status(f"ready: write a {self._shape[0]}x{self._shape[1]} pattern, then run Reconstruct")

    def _clear_result(self):
        zeros = np.zeros(self._shape, np.float32)
        self._amplitude, self._phase = zeros, zeros.copy()
        self._support = np.zeros(self._shape, bool)
        self._chi2 = float("nan")

    def _fault(self, why: str):
        self.set_state(DevState.FAULT)
        self.set_status(why)
        logger.warning("%s: %s", self.get_name(), why)

    # --- attributes ------------------------------------------------------------------
    pattern = _image("Diffraction pattern to reconstruct: intensities (counts), centred", writable=True, unit="counts")

    def read_pattern(self):
        return self._pattern if self._pattern is not None else np.zeros(self._shape, np.float32)

    def is_pattern_allowed(self, req_type):
        return req_type == tango.AttReqType.READ_REQ or self.get_state() != DevState.RUNNING

    def write_pattern(self, value):
        frame = np.asarray(value, dtype=np.float32)
        self._pattern = None
        self._clear_result()
        if frame.shape != self._shape:
            self._fault(
                f"bad pattern: shape {frame.shape[0]}x{frame.shape[1]}, expected "
                f"{self._shape[0]}x{self._shape[1]}; write a new pattern"
            )
            return
        reason = validate_frame(frame)
        if reason is not None:
            self._fault(f"bad pattern: {reason}; write a new pattern")
            return
        self._pattern = frame
        self.set_state(DevState.ON)
        self.set_status(f"pattern {frame.shape[0]}x{frame.shape[1]} ready ({frame.sum():.4g} counts)")

    mask = _image("Measured pixels (True) of the patterns; write an all-True image to clear", writable=True, dtype=bool)

    def read_mask(self):
        return self._mask if self._mask is not None else np.ones(self._shape, bool)

    def is_mask_allowed(self, req_type):
        return req_type == tango.AttReqType.READ_REQ or self.get_state() != DevState.RUNNING

    def write_mask(self, value):
        mask = np.asarray(value, dtype=bool)
        if mask.shape != self._shape:
            tango.Except.throw_exception(
                "CDI_BadMask",
                f"mask shape {mask.shape[0]}x{mask.shape[1]} differs from the pattern's "
                f"{self._shape[0]}x{self._shape[1]}",
                "write_mask",
            )
        if not mask.any():
            tango.Except.throw_exception("CDI_BadMask", "mask marks no pixel as measured", "write_mask")
        self._mask = None if mask.all() else mask

    amplitude = _image("Amplitude |object| of the last reconstruction")
    phase = _image("Phase of the last reconstruction (radians, wrapped to (-pi, pi])", unit="rad")
    support = _image("Support (True = inside the object) of the last reconstruction", dtype=bool)

    def read_amplitude(self):
        return self._amplitude

    def read_phase(self):
        return self._phase

    def read_support(self):
        return self._support

    @attribute(dtype=float, doc="chi² (eq. 5, scale invariant) of the last reconstruction; NaN if none")
    def chi2(self):
        return self._chi2

    @attribute(
        dtype=int,
        access=AttrWriteType.READ_WRITE,
        min_value=1,
        max_value=100000,
        doc="Refinement iterations (the ER/HIO schedule is scaled to this)",
    )
    def iterations(self):
        return self._iterations

    def write_iterations(self, value: int):
        self._iterations = int(value)

    # Named init_mode, not init: Tango names are case-insensitive and every device has the
    # command Init, which DeviceProxy.init would return instead of the attribute.
    @attribute(dtype=str, access=AttrWriteType.READ_WRITE, doc="Initial estimate: cnn or random")
    def init_mode(self):
        return self._init

    def write_init_mode(self, value: str):
        if value not in self.INITS:
            tango.Except.throw_exception(
                "CDI_BadInit", f"init_mode must be one of {', '.join(self.INITS)}; got {value!r}", "write_init_mode"
            )
        self._init = value

    @attribute(dtype=int, access=AttrWriteType.READ_WRITE, doc="Seed of the random start")
    def seed(self):
        return self._seed

    def write_seed(self, value: int):
        self._seed = int(value)

    # --- commands --------------------------------------------------------------------
    def is_Reconstruct_allowed(self):
        return self.get_state() == DevState.ON

    @command
    def Reconstruct(self):
        """Start reconstructing the pattern in the background (state RUNNING)."""
        if self._pattern is None:
            tango.Except.throw_exception(
                "CDI_NoPattern", "no pattern: write the `pattern` attribute first", "Reconstruct"
            )
        self.set_state(DevState.RUNNING)
        self.set_status(f"reconstructing ({self._init} start, {self._iterations} iterations)")
        job = (self._pattern, self._mask, self._init, self._iterations, self._seed)
        threading.Thread(target=self._reconstruct, args=job, name="CDIReconstructor", daemon=True).start()

    def _engine(self, init: str, iterations: int):
        """The Reconstructor for these settings (the last one is kept: CNN loaded once)."""
        if self._engine_key != (init, iterations):
            config = ReconstructorConfig.build(init=init, iterations=iterations)
            self._engine_obj = Reconstructor(config, device=self.TorchDevice)
            self._engine_key = (init, iterations)
        return self._engine_obj

    def _reconstruct(self, pattern: np.ndarray, mask: np.ndarray | None, init: str, iterations: int, seed: int):
        with tango.EnsureOmniThread():
            t0 = time.perf_counter()
            try:
                out = self._engine(init, iterations).reconstruct(pattern[None], mask=mask, seed=seed)
            except Exception as exc:  # the device must report, not die
                self._fault(f"reconstruction failed: {type(exc).__name__}: {exc}")
                return
            if out.status[0] not in RECONSTRUCTED:
                self._fault(f"bad pattern: {out.reason[0]}; write a new pattern")
                return
            self._amplitude = out.amplitude[0]
            self._phase = out.phase[0]
            self._support = out.support[0]
            self._chi2 = float(out.chi2[0])
            for name in ("amplitude", "phase", "support"):
                self.push_change_event(name, getattr(self, f"_{name}"))
            self.push_change_event("chi2", self._chi2)
            self.set_state(DevState.ON)
            self.set_status(
                f"reconstructed: chi2 {self._chi2:.4g}, {iterations} iterations, start "
                f"{out.init[0]}, {time.perf_counter() - t0:.2f} s"
                + ("" if out.status[0] == "ok" else f"; {out.status[0]}: {out.reason[0]}")
            )
