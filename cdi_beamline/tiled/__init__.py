"""Tiled storage: the embedded server of a data directory, writers that survive outages,
result queries.

- :mod:`._server`: :class:`EmbeddedTiled` (SQLite or PostgreSQL catalog, its API key),
  :func:`connect`, :func:`serving`;
- :mod:`._spool`: :class:`SpoolingWriter` (a local journal, delivered by a thread of its own),
  :func:`make_writer`, :func:`quarantined`;
- :mod:`._shapes`: :class:`ShapeGuard` (a frame of another shape does not make a raw run unstorable);
- :mod:`._codec`: JSON for documents with numpy arrays (the spool's lines, the 0MQ wire);
- :mod:`._queries`: :func:`processed` (the derived runs' container), :func:`derived_runs`,
  :func:`derived_of`, :func:`raw_runs`, :func:`load_results`, :func:`load_raw_frames`, the 3D runs of rocking
  scans: :func:`volume_runs`, :func:`load_volume`.
"""

from ._codec import decode_document, decode_line, encode_document, encode_line
from ._queries import (
    derived_of,
    derived_runs,
    load_raw_frames,
    load_results,
    load_volume,
    processed,
    raw_runs,
    volume_runs,
)
from ._server import (
    CATALOG_KEY,
    MIN_API_KEY_CHARS,
    DataDir,
    EmbeddedTiled,
    close_at_exit,
    connect,
    reachable,
    redact,
    serving,
)
from ._shapes import ODD_SEQ_NUM, ShapeGuard, odd_stream
from ._spool import (
    FORCED_RETRY,
    MAX_REWRITES,
    QUARANTINE,
    SpoolingWriter,
    make_writer,
    quarantined,
    temporary,
    undelivered,
)

__all__ = [
    "CATALOG_KEY",
    "FORCED_RETRY",
    "MIN_API_KEY_CHARS",
    "MAX_REWRITES",
    "ODD_SEQ_NUM",
    "QUARANTINE",
    "DataDir",
    "EmbeddedTiled",
    "ShapeGuard",
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
    "load_volume",
    "make_writer",
    "odd_stream",
    "processed",
    "quarantined",
    "raw_runs",
    "reachable",
    "redact",
    "serving",
    "temporary",
    "undelivered",
    "volume_runs",
]
