"""The base of every configuration model and a loader that names the bad field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import CDIValueError

__all__ = ["ConfigError", "FrozenModel", "load_config", "read_config_file"]

M = TypeVar("M", bound="FrozenModel")


class ConfigError(CDIValueError):
    """An invalid configuration value or file; the message names the offending field(s) or file."""


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


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of fields in a JSON or YAML file (``.yaml``/``.yml``), not yet validated.

    Raises
    ------
    ConfigError
        the file cannot be read, does not parse, or holds something else than a mapping.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror or exc}") from None
    values: Any
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration fields, got {type(values).__name__}")
    return values


def load_config(cls: type[M], path: str | Path | None = None, **overrides: Any) -> M:
    """Read ``cls`` from a JSON or YAML file (optional), apply ``overrides`` (None = not given), validate."""
    values = read_config_file(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls.build(**values)
