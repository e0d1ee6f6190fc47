"""The package's exceptions: what the user can fix, told in one line.

Every error the package raises on purpose derives from :class:`CDIError` and also from
the builtin a caller would expect (event-model's pattern), so that ``except ValueError``
keeps working. The CLI turns a ``CDIError`` into a one-line message and exit status 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["CDIError", "CDIValueError", "CDIRuntimeError"]


class CDIError(Exception):
    """Base of every error cdi_beamline raises on purpose."""


class CDIValueError(CDIError, ValueError):
    """Bad input: a frame, an array, a file, an option or a configuration value."""


class CDIRuntimeError(CDIError, RuntimeError):
    """The environment failed us: a server unreachable, weights missing, a device absent."""
