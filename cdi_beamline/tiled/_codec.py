"""JSON for Bluesky documents, numpy arrays kept exactly (dtype, shape, bytes).

Two uses: the spool's JSON Lines (one ``[name, doc]`` per line) and the 0MQ wire
(:func:`encode_document` / :func:`decode_document` as the ``serializer`` / ``deserializer`` of
bluesky's ``Publisher`` / ``RemoteDispatcher``, whose default, pickle, runs whatever code a
message carries). Decoding is ``json.loads``: it builds dicts, lists, numbers, strings and
numpy arrays, never objects of a class a message names.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

__all__ = ["decode_document", "decode_line", "encode_document", "encode_line"]


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {
            "__ndarray__": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii"),
            "dtype": obj.dtype.str,
            "shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} in a document")


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


def encode_document(doc: dict) -> bytes:
    """A document as UTF-8 JSON: bluesky ``Publisher(..., serializer=encode_document)``."""
    return json.dumps(doc, default=_encode).encode()


def decode_document(data: bytes) -> dict:
    """The inverse of :func:`encode_document`: ``RemoteDispatcher(..., deserializer=decode_document)``.

    Raises
    ------
    ValueError
        ``data`` is not a JSON object (a pickle, say): the dispatcher drops the message.
    """
    doc = json.loads(data, object_hook=_decode)
    if not isinstance(doc, dict):
        raise ValueError(f"a document must be a JSON object, got {type(doc).__name__}")
    return doc
