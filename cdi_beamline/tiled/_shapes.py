"""Keep a raw run storable when a detector frame does not have the run's shape.

Tiled stores an event stream's array field as one (N, H, W) array: a single frame of another
shape makes the whole run unwritable. :class:`ShapeGuard`, in front of the raw writer, puts a
zero frame of the run's shape in the frame's place (so the stream keeps one row per event and
its seq_nums) and records the frame as it was in a stream of its own,
``<stream>_odd_<H>x<W>``, beside the event's ``seq_num``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from event_model import unpack_event_page

__all__ = ["ODD_SEQ_NUM", "ShapeGuard", "odd_stream"]

logger = logging.getLogger(__name__)

ODD_SEQ_NUM = "stream_seq_num"
"""Field of an odd-shape stream: the ``seq_num``, in the stream it came from, of the event whose frame it holds."""


def odd_stream(stream: str, shape: tuple[int, ...]) -> str:
    """Name of the stream holding ``stream``'s frames of shape ``shape``: ``primary_odd_32x48``."""
    return f"{stream}_odd_{'x'.join(str(n) for n in shape)}"


class ShapeGuard:
    """Document filter in front of ``writer``: frames of another shape than their stream's are
    replaced by zeros of that shape and stored apart (see the module docstring).

    The run's shape of an array field is its descriptor's ``shape`` when that is 2-D or more,
    else the shape of its first frame. Documents are passed on unchanged otherwise.

    Attributes
    ----------
    odd_frames : int
        Frames stored apart so far.
    """

    def __init__(self, writer: Callable[[str, dict], Any]):
        self._writer = writer
        self._fields: dict[str, dict[str, tuple[int, ...] | None]] = {}  # descriptor uid -> key -> shape
        self._desc: dict[str, dict] = {}
        self._odd: dict[tuple[str, tuple[int, ...]], dict] = {}  # (descriptor uid, shape) -> odd descriptor
        self._odd_seq: dict[str, int] = {}
        self.odd_frames = 0

    def __call__(self, name: str, doc: dict) -> None:
        try:
            self._filter(name, doc)
        except Exception:  # noqa: BLE001 - the document goes on as it came
            logger.exception("shape guard failed on a %s document; passed on unchanged", name)
            self._writer(name, doc)

    def _filter(self, name: str, doc: dict) -> None:
        if name == "descriptor":
            self._fields[doc["uid"]] = {
                key: tuple(dk["shape"]) if len(dk.get("shape") or ()) >= 2 else None
                for key, dk in doc.get("data_keys", {}).items()
                if dk.get("dtype") == "array" and not dk.get("external")
            }
            self._desc[doc["uid"]] = doc
        elif name == "event" and doc["descriptor"] in self._fields:
            doc = self._event(doc)
        elif name == "event_page" and doc["descriptor"] in self._fields and self._any_odd(doc):
            for event in unpack_event_page(doc):  # type: ignore[arg-type]
                self._writer("event", self._event(event))
            return
        elif name == "stop":
            self._forget(doc["run_start"])
        self._writer(name, doc)

    def _any_odd(self, page: dict) -> bool:
        fields = self._fields[page["descriptor"]]
        for key, shape in fields.items():
            rows = [np.shape(v) for v in page["data"].get(key, ())]
            want = shape or (rows[0] if rows else None)
            if any(r != want for r in rows):
                return True
        return False

    def _event(self, event: dict) -> dict:
        fields = self._fields[event["descriptor"]]
        data = event["data"]
        for key, shape in fields.items():
            if key not in data:
                continue
            frame = np.asarray(data[key])
            if shape is None:
                fields[key] = shape = frame.shape
            if frame.shape == shape:
                continue
            self._store_apart(event, key, frame)
            filler = np.zeros(shape, dtype=frame.dtype if frame.dtype.kind in "biuf" else np.float64)
            event = {**event, "data": {**data, key: filler}}
            data = event["data"]
        return event

    def _store_apart(self, event: dict, key: str, frame: np.ndarray) -> None:
        desc = self._desc[event["descriptor"]]
        odd_key = (desc["uid"], frame.shape)
        if odd_key not in self._odd:
            dk = dict(desc["data_keys"][key])
            dk["shape"] = list(frame.shape)
            self._odd[odd_key] = odd = {
                "uid": str(uuid.uuid4()),
                "run_start": desc["run_start"],
                "time": time.time(),
                "name": odd_stream(desc.get("name", "primary"), frame.shape),
                "data_keys": {
                    key: dk,
                    ODD_SEQ_NUM: {"source": "cdi_beamline.ShapeGuard", "dtype": "integer", "shape": []},
                },
                "object_keys": {},
                "configuration": {},
                "hints": {},
            }
            self._odd_seq[odd["uid"]] = 0
            self._writer("descriptor", odd)
        odd = self._odd[odd_key]
        self._odd_seq[odd["uid"]] += 1
        now = time.time()
        self._writer(
            "event",
            {
                "uid": str(uuid.uuid4()),
                "descriptor": odd["uid"],
                "seq_num": self._odd_seq[odd["uid"]],
                "time": now,
                "data": {key: frame, ODD_SEQ_NUM: event["seq_num"]},
                "timestamps": {key: event["timestamps"].get(key, now), ODD_SEQ_NUM: now},
                "filled": {},
            },
        )
        self.odd_frames += 1
        logger.warning(
            "raw run %s: frame %s of %r has shape %s, the stream's is %s: zeros in its place, "
            "the frame kept in stream %r",
            desc["run_start"],
            event["seq_num"],
            key,
            frame.shape,
            self._fields[desc["uid"]][key],
            odd["name"],
        )

    def _forget(self, run_uid: str) -> None:
        for uid in [u for u, d in self._desc.items() if d["run_start"] == run_uid]:
            del self._desc[uid], self._fields[uid]
        for k in [k for k, d in self._odd.items() if d["run_start"] == run_uid]:
            self._odd_seq.pop(self._odd.pop(k)["uid"], None)
