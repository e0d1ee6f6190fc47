"""The only place where the benchmarks touch APIs that are changing (one function per change).

Each function detects which API the ``cdi_beamline`` under test has, so that the same
benchmark code times the tree before a refactor and the tree after it (``run_all.py
--baseline-ref``). When the old API is gone from every tree worth comparing with, delete the
old branch of each function:

* ``cdi_beamline.store`` -> ``cdi_beamline.tiled`` (:func:`load_results`);
* ``LiveConfig.batch_size`` -> ``ReconstructorConfig.batch_size`` only (:func:`live_config`);
* ``Reconstructor.describe()`` -> ``provenance()`` (:class:`HeldEngine` has both);
* ``RefineConfig.fused`` + module globals ``_cuda_graphs`` / ``_fused_failure`` ->
  ``RefineConfig.backend`` ("auto" | "numba" | "torch" | "compiled") + ``RefineConfig.cuda_graphs``,
  and ``RefineResult.backend`` says what ran (:func:`torch_path`, :func:`cuda_variants`,
  :func:`backend_ran`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np


def load_results(client: Any, uid: str) -> Any:
    """``load_results`` of the Tiled layer (``cdi_beamline.tiled``, formerly ``cdi_beamline.store``)."""
    try:
        mod = importlib.import_module("cdi_beamline.tiled")
    except ImportError:
        mod = importlib.import_module("cdi_beamline.store")
    return mod.load_results(client, uid)


def live_config(batch_size: int, **fields: Any) -> Any:
    """A ``LiveConfig``; the live batch is passed to it only where it still has ``batch_size``
    (afterwards the batch is ``ReconstructorConfig.batch_size`` alone)."""
    from cdi_beamline.config import LiveConfig

    if "batch_size" in LiveConfig.model_fields:
        fields["batch_size"] = batch_size
    return LiveConfig(**fields)


class HeldEngine:
    """A stand-in Reconstructor that waits for ``gate`` and returns empty results: with it the
    scan measures the callback's own cost in the RunEngine thread. It offers ``describe()``
    (old name) and ``provenance()`` (new name) and a ``config.batch_size``."""

    def __init__(self, gate: Any, batch_size: int):
        from cdi_beamline.config import ReconstructorConfig

        self.gate = gate
        self.config = ReconstructorConfig(batch_size=batch_size)

    def reconstruct(self, frames: np.ndarray, **_: Any) -> SimpleNamespace:
        self.gate.wait()
        b = len(frames)
        zeros = np.zeros(frames.shape, np.float32)
        return SimpleNamespace(
            amplitude=zeros,
            phase=zeros,
            support=zeros.astype(bool),
            chi2=np.full(b, np.nan),
            status=["ok"] * b,
            reason=[""] * b,
        )

    def provenance(self) -> dict[str, str]:
        return {"engine": "held (benchmark)"}

    describe = provenance


def _has_backend() -> bool:
    from cdi_beamline.config import RefineConfig

    return "backend" in RefineConfig.model_fields


@contextlib.contextmanager
def torch_path(cfg: Any) -> Iterator[Any]:
    """The refinement config of the torch element-wise path on the CPU (the engine without its
    numba kernels): ``backend="torch"``; before that option, the numba kernels switched off."""
    if _has_backend():
        yield cfg.model_copy(update={"backend": "torch"})
        return
    module = importlib.import_module("cdi_beamline.phasing.refine")
    load = getattr(module, "_load_cpu_kernels")  # noqa: B009  (the old API: absent from the new module)
    setattr(module, "_load_cpu_kernels", lambda: None)  # noqa: B010
    try:
        yield cfg
    finally:
        setattr(module, "_load_cpu_kernels", load)  # noqa: B010


@contextlib.contextmanager
def _old_cuda_graphs(on: bool) -> Iterator[None]:
    module = importlib.import_module("cdi_beamline.phasing.refine")
    setattr(module, "_cuda_graphs", on)  # noqa: B010  (the old API: absent from the new module)
    try:
        yield
    finally:
        setattr(module, "_cuda_graphs", True)  # noqa: B010


def cuda_variants(cfg: Any) -> list[tuple[str, Any, Any]]:
    """(name, config, context manager) of the CUDA rows: eager torch path, compiled with CUDA
    graphs, compiled without."""
    if _has_backend():
        return [
            ("eager", cfg.model_copy(update={"backend": "torch"}), contextlib.nullcontext()),
            (
                "compiled (torch.compile + CUDA graphs)",
                cfg.model_copy(update={"backend": "compiled", "cuda_graphs": True}),
                contextlib.nullcontext(),
            ),
            (
                "compiled, no CUDA graphs",
                cfg.model_copy(update={"backend": "compiled", "cuda_graphs": False}),
                contextlib.nullcontext(),
            ),
        ]
    return [
        ("eager", cfg.model_copy(update={"fused": "off"}), _old_cuda_graphs(True)),
        ("compiled (torch.compile + CUDA graphs)", cfg.model_copy(update={"fused": "on"}), _old_cuda_graphs(True)),
        ("compiled, no CUDA graphs", cfg.model_copy(update={"fused": "on"}), _old_cuda_graphs(False)),
    ]


def backend_ran(result: Any, cfg: Any) -> str:
    """What actually ran: ``RefineResult.backend``; before it, the config and the module's
    record of a failed compilation."""
    if hasattr(result, "backend"):
        return str(result.backend)
    module = importlib.import_module("cdi_beamline.phasing.refine")
    if getattr(cfg, "fused", "off") == "on":
        failure = getattr(module, "_fused_failure", None)
        return "compiled" if failure is None else f"eager (compile failed: {failure})"
    return "eager"
