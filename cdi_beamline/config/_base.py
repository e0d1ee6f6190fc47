"""The base of every configuration model and a loader that names the bad field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError", "FrozenModel", "load_config"]

M = TypeVar("M", bound="FrozenModel")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the offending field(s)."""


class FrozenModel(BaseModel):
    """Frozen, strict pydantic model: unknown fields are refused, values validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def build(cls: type[M], **values: Any) -> M:
        """Validate ``values`` into the model, raising :class:`ConfigError` naming fields."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(cls.__name__, exc)) from None


def describe_validation_error(model: str, exc: ValidationError) -> str:
    """One line per problem: ``Model.field: message (got value)``."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{model}.{field}: {err['msg']}{got_txt}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(cls: type[M], path: str | Path | None = None, **overrides: Any) -> M:
    """Read ``cls`` from a JSON or YAML file (optional), apply ``overrides``, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of {cls.__name__} fields")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls.build(**values)
