"""Tiled storage: the embedded server of a data directory, writers that survive outages,
result queries.

- :mod:`._server`: :class:`EmbeddedTiled` (+ its API key), :func:`connect`, :func:`serving`;
- :mod:`._spool`: :class:`SpoolingWriter`, :func:`make_writer`;
- :mod:`._codec`: JSON for documents with numpy arrays (the spool's lines, the 0MQ wire);
- :mod:`._queries`: :func:`processed` (the derived runs' container), :func:`derived_runs`,
  :func:`derived_of`, :func:`load_results`, :func:`load_raw_frames`.
"""

from ._codec import decode_document, decode_line, encode_document, encode_line
from ._queries import derived_of, derived_runs, load_raw_frames, load_results, processed
from ._server import CATALOG_KEY, DataDir, EmbeddedTiled, close_at_exit, connect, reachable, serving
from ._spool import SpoolingWriter, make_writer

__all__ = [
    "CATALOG_KEY",
    "DataDir",
    "EmbeddedTiled",
    "SpoolingWriter",
    "close_at_exit",
    "connect",
    "decode_document",
    "decode_line",
    "derived_of",
    "derived_runs",
    "encode_document",
    "encode_line",
    "load_raw_frames",
    "load_results",
    "make_writer",
    "processed",
    "reachable",
    "serving",
]
