"""The compiled backend: the torch backend's iteration through torch.compile.

Mode "reduce-overhead" on CUDA with ``RefineConfig.cuda_graphs`` (CUDA graphs: one launch
per iteration instead of ~10, which dominate at small batches; but each replay copies the
tensor arguments into the graph's own buffers, which may cost more than the launches at
large batches), "default" elsewhere; ``dynamic=False``, whole graph. Compiled on the first
call of each variant; beta and the support change only the values of the maps, so they
reuse the graph. If compiling or running fails (no C++ compiler, no Triton, ...), one
warning is logged per variant, the eager iteration runs instead, and the result says so.
"""

from __future__ import annotations

import logging
import types
import warnings
from collections.abc import Callable

import torch

from . import _torch
from ._common import Problem

_log = logging.getLogger(__name__)

#: Per variant (device, shape, dtype, mask or not, ER or not, positivity or not, CUDA
#: graphs or not): its compiled iteration, or why it is unavailable. Each from its own copy
#: of :func:`._torch.iteration`: dynamo keeps its graphs per code object, at most
#: ``recompile_limit`` (8) of them, and a copy per variant keeps every variant to one graph
#: without touching that global setting.
_cache: dict[tuple, Callable | str] = {}


def _compile(cuda_graphs: bool) -> Callable:
    # inductor warns once that it generates no code for complex operators, which "may be
    # worse than eager": here only the views view_as_real/view_as_complex are complex.
    warnings.filterwarnings(
        "ignore",
        "Torchinductor does not support code generation for complex",
        UserWarning,
        r"torch\._inductor\.lowering",
    )
    fn = _torch.iteration
    code = fn.__code__
    copy = types.FunctionType(code.replace(), fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return torch.compile(copy, mode="reduce-overhead" if cuda_graphs else "default", dynamic=False, fullgraph=True)


def _failure(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def run(p: Problem):
    """:func:`._torch.loop` over the compiled iteration. Returns its tuple and what ran:
    "compiled" or "torch (compiled unavailable: ...)"."""
    x = p.x
    cuda_graphs = x.device.type == "cuda" and p.config.cuda_graphs
    failures: list[str] = []

    def step(it, x, ca, cb, s, er, outside):
        args = (x, ca, cb, s, p.Mm, p.Mr, p.measured, p.unmeasured_r, p.smm, er, outside)
        key = (x.device, tuple(x.shape), x.dtype, p.measured is not None, er, outside is not None, cuda_graphs)
        compiled = _cache.get(key)
        if not isinstance(compiled, str):
            try:
                if compiled is None:
                    compiled = _cache[key] = _compile(cuda_graphs)
                out = compiled(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # compiling failed: never fail the reconstruction
                compiled = _cache[key] = _failure(exc)
                _log.warning("refine: compiled iteration unavailable, running the eager torch one: %s", compiled)
                _log.debug("refine: torch.compile failure", exc_info=True)
            else:
                # A CUDA graph's outputs are overwritten by its next replay, and x is fed back.
                return tuple(t.clone() for t in out) if cuda_graphs else out
        if compiled not in failures:
            failures.append(compiled)
        return _torch.iteration(*args)

    result = _torch.loop(p, step, complex_maps=False)
    backend = "compiled" if not failures else f"torch (compiled unavailable: {'; '.join(failures)})"
    return (*result, backend)
