"""The house rules that a reviewer would otherwise check by hand (docs/architecture.md).

- No module imports a private (underscore) module or name of another subpackage.
- The derived run's keys are spelled in :mod:`cdi_beamline.results` alone.
- Deliberate errors derive from :class:`cdi_beamline.errors.CDIError`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cdi_beamline
from cdi_beamline import results

PACKAGE = Path(cdi_beamline.__file__).parent


def _modules(package: Path = PACKAGE) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _owner(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: cdi_beamline.X."""
    return ".".join(module.split(".")[:2])


def _imports(module: str, path: Path):
    """(imported module, imported names) of every import statement, absolute."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]


def _private_reach_ins(package: Path = PACKAGE) -> list[str]:
    found = []
    for module, path in _modules(package):
        for target, names in _imports(module, path):
            if not target.startswith("cdi_beamline") or _owner(target) == _owner(module):
                continue
            private_parts = [p for p in target.split(".")[1:] if p.startswith("_") and p != "__init__"]
            private_names = [n for n in names if n.startswith("_") and n != "__version__"]
            if private_parts or private_names:
                found.append(f"{module} imports {target} {private_names or ''}".strip())
    return found


def test_no_private_import_across_subpackages():
    assert _private_reach_ins() == []


def test_the_checker_sees_a_private_reach_in(tmp_path):
    # The rule's own check: reaching into another subpackage's private module or name is
    # found; a subpackage's own private modules are its business.
    fake = tmp_path / "cdi_beamline"
    (fake / "a").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "a" / "__init__.py").write_text(
        "from ..b._impl import thing\nfrom ..c import _hidden\nfrom ._mine import x\n"
    )
    assert _private_reach_ins(fake) == [
        "cdi_beamline.a imports cdi_beamline.b._impl",
        "cdi_beamline.a imports cdi_beamline.c ['_hidden']",
    ]


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


# Keys that only the derived run has (the image keys amplitude/phase/support and chi2 are
# also ordinary words of the engine's result batch, so they are not policed here).
DERIVED_ONLY_KEYS = {
    results.KIND,
    results.DERIVED_KIND,
    results.PARENT_UID,
    results.RAW_IMAGE_KEY,
    results.RAW_STREAM,
    results.RECONSTRUCTOR,
    results.REPROCESSED,
    results.SUPERSEDES,
    results.COUNTS,
    results.CHI2_SUMMARY,
    "raw_seq_num",
    results.VOLUME_KIND,
    results.VOLUME_SUMMARY,
    results.ROCKING,
    "rocking_angle",
    "lab_amplitude",
}


@pytest.mark.parametrize("key", sorted(DERIVED_ONLY_KEYS))
def test_derived_run_keys_are_spelled_in_results_only(key):
    spelled = [
        str(path.relative_to(PACKAGE.parent))
        for _, path in _modules()
        if path != Path(results.__file__) and key in _string_constants(path)
    ]
    assert spelled == [], f"{key!r} spelled outside cdi_beamline/results.py"


def test_configuration_errors_are_cdi_errors():
    from cdi_beamline.config import ConfigError, ReconstructorConfig
    from cdi_beamline.errors import CDIError, CDIValueError

    assert issubclass(ConfigError, CDIValueError)
    with pytest.raises(CDIError, match="iterations"):
        ReconstructorConfig.build(iterations=-1)
