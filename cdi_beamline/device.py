"""Device choice, resolved in one place: ``"auto" | "cpu" | "cuda" | "cuda:N"``."""

from __future__ import annotations

from .errors import CDIRuntimeError, CDIValueError

__all__ = ["resolve_device"]


def resolve_device(device: str | object = "auto"):
    """Return a ``torch.device``. ``"auto"`` picks CUDA when available, else the CPU.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when CUDA is asked
    for on a machine without it.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CDIRuntimeError(f"device {device!r} requested but CUDA is not available here")
        return torch.device(name)
    raise CDIValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
