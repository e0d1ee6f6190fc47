"""CPU threads and batch workers, chosen in one place for the processes the package owns.

torch's default on an N-core CPU is N OpenMP threads per operation. The refiner's operations
on a 64x64 batch are too small for them: the threads spin between operations and, on a busy
machine, wait for each other. Splitting the batch instead, one torch thread per worker and one
worker per core, keeps every core on whole frames: torch's operations and the numba kernels
(``nogil=True``) release the GIL, so Python threads run them in parallel.

- :func:`plan` chooses: ``threads`` given (``--threads``) or ``OMP_NUM_THREADS`` set wins
  (that many torch threads, one worker); otherwise one torch thread per worker, one worker
  per core this process may run on.
- :func:`apply` sets it for the process (``torch.set_num_threads`` is process-global); the
  commands (``reconstruct``, ``demo``, ``worker``, ``reprocess``, ``tango-server``) and the
  IPython profile call it. A library user's process is left as it is unless they call it.
- :func:`current` is what the :class:`cdi_beamline.pipeline.Reconstructor` reads when it
  refines: the applied plan while torch still runs its thread count, otherwise (nothing
  applied, or ``torch.set_num_threads`` called since) torch's threads and one worker.
- :func:`split_batch` runs a function on contiguous slices of a batch in a thread pool.
- :func:`passive_openmp` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user has set it: idle
  OpenMP threads sleep instead of spinning. OpenMP reads it once, when torch is first
  imported, so the CLI's module calls it on import.
- :func:`skip_numba_extensions`, also called by the CLI's module, keeps numba from loading
  third-party extensions (awkward's, sparse's: ~0.7 s at the first jitted call) that the
  package's kernels never use; :func:`numba_extensions_skipped` is what
  :mod:`cdi_beamline.phasing._numba_kernels` reads when it imports numba.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from .errors import CDIValueError

__all__ = [
    "MIN_SLICE",
    "Plan",
    "apply",
    "cpu_count",
    "current",
    "numba_extensions_skipped",
    "passive_openmp",
    "plan",
    "skip_numba_extensions",
    "slices",
    "split_batch",
]

R = TypeVar("R")

MIN_SLICE = 16
"""Fewest frames per worker the :class:`cdi_beamline.pipeline.Reconstructor` gives a slice: each
slice pays the refiner's per-iteration Python overhead with the GIL held (~0.1 ms per
iteration, 2-core x86-64 CPU, 2026-12-03: 600 iterations cost ~90 ms per pattern at batch 1,
~21 ms at batch 64), so on a many-core machine thin slices would queue for the GIL."""


@dataclass(frozen=True)
class Plan:
    """How a process computes on the CPU.

    threads : torch intra-op threads (``torch.set_num_threads``), shared by the workers
    workers : slices of a batch refined at once, each in its own Python thread
    chosen_by : what decided: ``"cores"`` (the default), ``"threads"`` (given explicitly),
        ``"OMP_NUM_THREADS"``, or ``"torch"`` (torch's own setting: nothing applied, or
        ``torch.set_num_threads`` called since)
    """

    threads: int
    workers: int
    chosen_by: str

    def record(self) -> dict[str, int | str]:
        """JSON-able, for provenance: ``{"threads", "workers", "chosen_by"}``."""
        return {"threads": self.threads, "workers": self.workers, "chosen_by": self.chosen_by}


_applied: Plan | None = None


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int (its first level), or None when unset or unusable."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def plan(n_cores: int | None = None, threads: int | None = None) -> Plan:
    """The plan: ``threads`` torch threads and one worker when given (or ``OMP_NUM_THREADS``),
    else one torch thread and ``n_cores`` (default :func:`cpu_count`) workers.

    Raises
    ------
    CDIValueError
        ``threads`` or ``n_cores`` < 1
    """
    if threads is not None:
        if threads < 1:
            raise CDIValueError(f"threads must be >= 1, got {threads}")
        return Plan(threads=int(threads), workers=1, chosen_by="threads")
    env = _omp_num_threads()
    if env is not None:
        return Plan(threads=env, workers=1, chosen_by="OMP_NUM_THREADS")
    cores = cpu_count() if n_cores is None else n_cores
    if cores < 1:
        raise CDIValueError(f"n_cores must be >= 1, got {cores}")
    return Plan(threads=1, workers=int(cores), chosen_by="cores")


def apply(chosen: Plan) -> Plan:
    """Set torch's threads to ``chosen.threads`` for the whole process and make it :func:`current`."""
    import torch

    global _applied
    torch.set_num_threads(chosen.threads)
    _applied = chosen
    return chosen


def current() -> Plan:
    """The applied plan while torch runs its thread count; else torch's threads and one worker."""
    import torch

    threads = torch.get_num_threads()
    if _applied is not None and _applied.threads == threads:
        return _applied
    return Plan(threads=threads, workers=1, chosen_by="torch")


def passive_openmp() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless set: idle OpenMP threads sleep instead of spinning.

    Only effective before the OpenMP runtime starts (before ``import torch``).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_skip_numba_extensions = False


def skip_numba_extensions() -> None:
    """Let numba skip its ``numba_extensions`` entry points in this process.

    numba loads every installed extension at its first compilation or cache load (here:
    awkward's and sparse's, ~0.7 s); the package's kernels take plain arrays and need none.
    For processes the package owns (the CLI): a user's session may jit over awkward arrays.
    """
    global _skip_numba_extensions
    _skip_numba_extensions = True


def numba_extensions_skipped() -> bool:
    """Whether :func:`skip_numba_extensions` was called in this process."""
    return _skip_numba_extensions


def slices(n: int, workers: int, min_size: int = 1) -> list[slice]:
    """``min(workers, n // min_size)`` (at least 1) contiguous slices covering ``range(n)``,
    sizes differing by at most 1."""
    parts = max(1, min(workers, n // max(1, min_size)))
    size, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (k < extra)
        out.append(slice(start, stop))
        start = stop
    return out


def split_batch(fn: Callable[[slice], R], n: int, workers: int, min_size: int = 1) -> list[R]:
    """``[fn(s) for s in slices(n, workers, min_size)]``, the slices run in parallel Python threads.

    The first slice runs in the calling thread, the others in a pool; results come back in
    the slices' order, and the first exception raised is re-raised here. ``fn`` must release
    the GIL in its heavy work (torch operations, ``nogil`` numba kernels) to gain anything.
    """
    parts = slices(n, workers, min_size)
    if len(parts) == 1:
        return [fn(parts[0])]
    with ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="cdi-batch") as pool:
        rest = [pool.submit(fn, s) for s in parts[1:]]
        first = fn(parts[0])
        return [first, *(f.result() for f in rest)]
