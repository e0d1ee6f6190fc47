"""Run both devices in one Tango device server, with or without a Tango database."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ...errors import CDIValueError

__all__ = ["SERVER_NAME", "DETECTOR_NAME", "RECONSTRUCTOR_NAME", "run_server", "write_file_database", "register"]

#: Executable name of the device server in the Tango database (``CDIServer/<instance>``).
SERVER_NAME = "CDIServer"
DETECTOR_NAME = "sim/cdi/detector"
RECONSTRUCTOR_NAME = "sim/cdi/reconstructor"


def _devices(detector: str, reconstructor: str) -> dict[str, str]:
    return {"CDIReplayDetector": detector, "CDIReconstructor": reconstructor}


def _as_strings(props: dict[str, object]) -> dict[str, list[str]]:
    """Tango stores every property value as a list of strings."""
    return {k: [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)] for k, v in props.items()}


def write_file_database(
    path: str | Path,
    instance: str,
    properties: dict[str, dict[str, object]] | None = None,
    detector: str = DETECTOR_NAME,
    reconstructor: str = RECONSTRUCTOR_NAME,
) -> Path:
    """Write a Tango *file database* (the ``-file=`` mechanism of database-less servers)
    declaring both devices of ``CDIServer/<instance>`` and their device properties.

    ``properties`` maps a device name to ``{property: value}``.
    """
    import tango

    path = Path(path)
    lines = [f"{SERVER_NAME}/{instance}/DEVICE/{cls}: {dev}" for cls, dev in _devices(detector, reconstructor).items()]
    path.write_text("\n".join(lines) + "\n")
    db = tango.Database(str(path))
    for device, props in (properties or {}).items():
        db.put_device_property(device, _as_strings(props))
    return path


def register(
    instance: str,
    properties: dict[str, dict[str, object]] | None = None,
    detector: str = DETECTOR_NAME,
    reconstructor: str = RECONSTRUCTOR_NAME,
) -> None:
    """Register ``CDIServer/<instance>`` and its two devices (with ``properties``) in the
    Tango database named by ``TANGO_HOST``."""
    import tango

    db = tango.Database()
    for cls, dev in _devices(detector, reconstructor).items():
        info = tango.DbDevInfo()
        info.server, info._class, info.name = f"{SERVER_NAME}/{instance}", cls, dev
        db.add_device(info)
    for device, props in (properties or {}).items():
        db.put_device_property(device, _as_strings(props))


def run_server(
    instance: str = "cdi",
    *,
    nodb: bool = False,
    host: str = "127.0.0.1",
    port: int | None = None,
    properties: dict[str, dict[str, object]] | None = None,
    detector: str = DETECTOR_NAME,
    reconstructor: str = RECONSTRUCTOR_NAME,
    verbose: int = 0,
) -> None:
    """Serve ``CDIReplayDetector`` and ``CDIReconstructor`` until interrupted.

    Without ``nodb`` the devices must be registered in the Tango database of ``TANGO_HOST``
    (see :func:`register`); with it, a file database is written to a temporary file and
    the server listens on ``host:port``; clients then use
    ``tango://HOST:PORT/sim/cdi/reconstructor#dbase=no``.
    """
    from tango.server import run

    from ._servers import CDIReconstructor, CDIReplayDetector

    args = [SERVER_NAME, instance]
    if verbose:
        args.append(f"-v{int(verbose)}")
    db_file = None
    if nodb:
        if not port:
            raise CDIValueError("tango-server --nodb needs --port P (the port clients connect to)")
        handle, db_file = tempfile.mkstemp(prefix="cdi-tango-", suffix=".db")
        os.close(handle)
        write_file_database(db_file, instance, properties, detector, reconstructor)
        args += ["-ORBendPoint", f"giop:tcp:{host}:{int(port)}", f"-file={db_file}"]
    elif properties:
        raise CDIValueError("device properties on the command line need --nodb; with a database, set them there")
    try:
        run((CDIReplayDetector, CDIReconstructor), args=args, raises=True)
    finally:
        if db_file:
            Path(db_file).unlink(missing_ok=True)
