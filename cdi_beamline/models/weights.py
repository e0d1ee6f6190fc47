"""The registry of shipped weights (torchvision-style) and the ``cdinet`` builder.

Each entry names a ``.pt`` state_dict and a ``.json`` model card in
``cdi_beamline/models/weights/`` (read with :mod:`importlib.resources`; nothing is
downloaded) and the file's sha256, which is checked at every load.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import CDIRuntimeError, CDIValueError
from .network import CDINet

__all__ = ["Weights", "CDINetWeights", "cdinet", "load_state_dict"]


def load_state_dict(data: bytes, sha256: str, source: str) -> dict[str, torch.Tensor]:
    """Check ``data`` against ``sha256`` and deserialise it (tensors only, ``weights_only``).

    Raises
    ------
    CDIValueError
        when the bytes do not hash to ``sha256`` (a corrupt, truncated or modified file).
    """
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CDIValueError(
            f"weights {source} failed the integrity check: sha256 {digest} but the registry expects "
            f"{sha256} (file corrupt, truncated or modified; reinstall the package or retrain)"
        )
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


HISTORY_SUFFIX = ".history.jsonl"
"""Suffix (in place of ``.pt``) of the training history shipped beside a weights file."""


@dataclass(frozen=True)
class Weights:
    """One shipped set of weights: file names in ``models/weights/`` and the expected sha256."""

    file: str
    card: str
    sha256: str

    def _resource(self, name: str):
        return resources.files("cdi_beamline.models").joinpath("weights", name)

    @cached_property
    def meta(self) -> dict[str, Any]:
        """The model card: num_params, recipe, generator, metrics, machine, time, sha256..."""
        res = self._resource(self.card)
        if not res.is_file():
            raise CDIRuntimeError(f"model card {self.card} is missing from cdi_beamline/models/weights/")
        return json.loads(res.read_text())

    def history(self) -> Path | None:
        """The training history (``history.jsonl``: the loss curves of Fig. 3a) shipped with these
        weights, or None when it was not kept."""
        res = self._resource(Path(self.file).with_suffix(HISTORY_SUFFIX).name)
        return Path(str(res)) if res.is_file() else None

    def model_config(self) -> ModelConfig:
        """The architecture the weights belong to (from the card's recipe)."""
        return ModelConfig.build(**self.meta["recipe"]["model"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The verified state_dict (CPU tensors)."""
        res = self._resource(self.file)
        if not res.is_file():
            raise CDIRuntimeError(f"weights file {self.file} is missing from cdi_beamline/models/weights/")
        return load_state_dict(res.read_bytes(), self.sha256, self.file)


class CDINetWeights(Enum):
    """Shipped weights of :class:`CDINet`. ``DEFAULT`` is the best available."""

    CPU_REDUCED_V1 = Weights(
        file="cdinet_cpu_reduced_v1.pt",
        card="cdinet_cpu_reduced_v1.json",
        sha256="dc157bf7037e8b0bbed887f9a537f098216b34e1c41e20de9104c70d8c9bf60b",
    )
    CPU_FINETUNE_V2 = Weights(
        file="cdinet_cpu_finetune_v2.pt",
        card="cdinet_cpu_finetune_v2.json",
        sha256="40ded88846e5c8ac728ee4685de870c205d034af33bca28208e1f87ceecff465",
    )
    DEFAULT = CPU_FINETUNE_V2

    @property
    def meta(self) -> dict[str, Any]:
        """The model card of these weights."""
        return self.value.meta

    @property
    def sha256(self) -> str:
        return self.value.sha256

    @property
    def id(self) -> str:
        """Identifier recorded with results: the canonical member name."""
        return f"CDINetWeights.{self.name}"


def _from_path(path: Path) -> CDINet:
    """A training output (folder with model.pt + meta.json, or a model.pt beside its meta.json)."""
    folder, file = (path, path / "model.pt") if path.is_dir() else (path.parent, path)
    meta_path = folder / "meta.json"
    if not file.is_file():
        raise CDIValueError(f"weights file not found: {file}")
    if not meta_path.is_file():
        raise CDIValueError(f"{meta_path} not found: a weights file needs its meta.json (architecture, sha256)")
    try:
        meta = json.loads(meta_path.read_text())
        model, sha256 = meta["recipe"]["model"], meta["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CDIValueError(f"{meta_path} is not a training meta.json (recipe.model, sha256): {exc!r}") from None
    net = CDINet(ModelConfig.build(**model))
    state = load_state_dict(file.read_bytes(), sha256, str(file))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:  # torch's message for tensors that do not fit the architecture
        raise CDIValueError(
            f"{file} does not fit the architecture in {meta_path}: {str(exc).splitlines()[0]}"
        ) from None
    net.weights_id, net.weights_sha256 = str(file.resolve()), meta["sha256"]
    return net


def cdinet(weights: str | CDINetWeights | Path | None = "DEFAULT", config: ModelConfig | None = None) -> CDINet:
    """Build a :class:`CDINet` in eval mode on the CPU (``.to(device)`` after).

    Loaded nets carry ``weights_id`` and ``weights_sha256`` attributes (for provenance).

    Raises
    ------
    CDIValueError
        unknown name or path, a training output without its meta.json, weights that fail
        their sha256 check or do not fit their architecture;
    CDIRuntimeError
        shipped weights missing from the installed package.

    Parameters
    ----------
    weights : "DEFAULT" or another :class:`CDINetWeights` name/member -> the shipped,
        sha256-checked weights; a path to a training output folder or its ``model.pt``
        (checked against the sha256 in the ``meta.json`` beside it); None -> random init.
    config : architecture for ``weights=None`` (default :class:`ModelConfig`); must not
        be given with weights (the card fixes the architecture).
    """
    if weights is None:
        return CDINet(config).eval()
    if config is not None:
        raise CDIValueError("config is fixed by the weights' model card; pass config only with weights=None")
    if isinstance(weights, str) and weights in CDINetWeights.__members__:
        weights = CDINetWeights[weights]
    if isinstance(weights, CDINetWeights):
        net = CDINet(weights.value.model_config())
        net.load_state_dict(weights.value.state_dict())
        net.weights_id, net.weights_sha256 = weights.id, weights.sha256
        return net.eval()
    path = Path(weights)
    if not path.exists():
        names = ", ".join(CDINetWeights.__members__)
        raise CDIValueError(f"unknown weights {weights!r}: not one of {names} and no such file or folder")
    return _from_path(path).eval()
