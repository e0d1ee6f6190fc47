"""The spool's JSON Lines codec: one ``[name, doc]`` per line, numpy arrays kept exactly."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

__all__ = ["decode_line", "encode_line"]


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {
            "__ndarray__": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii"),
            "dtype": obj.dtype.str,
            "shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot spool {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if "__ndarray__" in obj:
        data = base64.b64decode(obj["__ndarray__"])
        return np.frombuffer(data, dtype=obj["dtype"]).reshape(obj["shape"]).copy()
    return obj


def encode_line(name: str, doc: dict) -> str:
    """One JSON line (newline included) holding a document; arrays keep dtype and shape."""
    return json.dumps([name, doc], default=_encode) + "\n"


def decode_line(line: str) -> tuple[str, dict]:
    """The ``(name, doc)`` of a line written by :func:`encode_line`."""
    name, doc = json.loads(line, object_hook=_decode)
    return name, doc
