"""Shared plumbing of the benchmarks: machine and software record, repeats, ranges, JSON, tables.

A benchmark module defines::

    NAME, TITLE                  # short key, one-line title
    ROWS: list[Row]              # what one repeat measures (key, label, unit)
    RATIOS: list[Ratio]          # ratios of two rows, formed per repeat (same run, same load)
    add_arguments(parser)        # its own options
    setup(args) -> state         # untimed: data, warm-up (compilation, first calls)
    measure(args, state) -> dict # one repeat: {row key: value, ...}; may add "info": {...}
    params(args) -> dict         # optional: what the tables' heading says was run
    teardown(state)              # optional: close servers, contexts

and ends with ``if __name__ == "__main__": main(sys.modules[__name__])``. :func:`main` runs
``setup`` once and ``measure`` ``--repeats`` times, records the machine, the load average
before and after, the software and the git commit of the package under test, prints the
markdown tables (min–max over the repeats, median) and writes the JSON (``--json``).
Nothing here asserts a timing: the numbers are reported, not judged.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_REPEATS = 3
"""Repeats per benchmark unless ``--repeats`` says otherwise (the whole set stays ≲ 10 min on 2 cores)."""

PACKAGES = (
    "cdi-beamline",
    "numpy",
    "scipy",
    "torch",
    "numba",
    "cohere-core",
    "bluesky",
    "ophyd",
    "ophyd-async",
    "tiled",
)


@dataclass(frozen=True)
class Row:
    """One measured quantity: ``key`` in ``measure``'s dict, shown as ``label`` (formatted with
    the command-line options, e.g. ``"batch {batch}"``) in ``unit``."""

    key: str
    label: str
    unit: str
    digits: int = 1


@dataclass(frozen=True)
class Ratio:
    """``num / den`` of two rows, formed repeat by repeat (both measured in the same repeat)."""

    label: str
    num: str
    den: str
    digits: int = 2


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """CPU model, cores (and those this process may use), memory, OS, GPU if torch sees one."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def package_tree() -> Path | None:
    """The source tree of the ``cdi_beamline`` under test (PYTHONPATH decides which)."""
    try:
        import cdi_beamline
    except ImportError:
        return None
    return Path(cdi_beamline.__file__).resolve().parent.parent


def git_commit(tree: Path | None) -> str | None:
    """``HEAD`` of ``tree``, with ``+dirty`` when tracked files differ from it."""
    if tree is None:
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def spread(values: list[float]) -> dict[str, float | int]:
    """min, max, median and count of ``values`` (NaNs dropped)."""
    v = [float(x) for x in values if x == x]
    if not v:
        return {"n": 0}
    return {"min": min(v), "max": max(v), "median": statistics.median(v), "n": len(v)}


def fmt_range(values: list[float], digits: int) -> str:
    """``"min–max (median m)"``, or the single value; thousands separated above 10,000."""
    s = spread(values)
    if not s["n"]:
        return "n/a"

    def f(x: float) -> str:
        return f"{x:,.{digits}f}" if abs(x) >= 10_000 else f"{x:.{digits}f}"

    if s["n"] == 1 or f(s["min"]) == f(s["max"]):
        return f(s["min"])
    return f"{f(s['min'])}–{f(s['max'])} (median {f(s['median'])})"


def summarise(bench: dict[str, Any]) -> dict[str, Any]:
    """Add ``spread`` to every row and the per-repeat ratios with theirs (in place, returned)."""
    values = bench["values"]
    for row in bench["rows"]:
        row["spread"] = spread(values.get(row["key"], []))
    for ratio in bench["ratios"]:
        num, den = values.get(ratio["num"], []), values.get(ratio["den"], [])
        ratio["values"] = [a / b if b else float("nan") for a, b in zip(num, den, strict=False)]
        ratio["spread"] = spread(ratio["values"])
    return bench


def markdown(bench: dict[str, Any]) -> str:
    """The benchmark's tables: rows, then ratios (min–max over the repeats, median)."""
    n = bench["repeats"]
    lines = [f"### {bench['title']}", ""]
    if bench.get("params"):
        lines += ["Parameters: " + ", ".join(f"{k} {v}" for k, v in bench["params"].items()) + ".", ""]
    rows = [r for r in bench["rows"] if r["spread"]["n"]]
    ratios = [r for r in bench["ratios"] if r["spread"]["n"]]
    lines += [f"| measurement | min–max of {n} (median) | unit |", "| --- | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['label']} | {fmt_range(bench['values'][row['key']], row['digits'])} | {row['unit']} |")
    if ratios:
        lines += ["", f"| ratio, same repeat | min–max of {n} (median) |", "| --- | ---: |"]
        for ratio in ratios:
            lines.append(f"| {ratio['label']} | {fmt_range(ratio['values'], ratio['digits'])}× |")
    missing = [f"{r['label']} ({r['unit']})" for r in bench["rows"] if not r["spread"]["n"]]
    if missing:
        lines += ["", "Not measured on this machine: " + "; ".join(missing) + "."]
    for note in bench.get("notes", []):
        lines += ["", note]
    lb, la = bench["load_before"], bench["load_after"]
    lines += [
        "",
        f"Load average (1/5/15 min) before {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after "
        f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}; {bench['seconds']:.0f} s; commit {bench.get('commit')}.",
    ]
    return "\n".join(lines)


def run(module: ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    """``setup`` once, ``measure`` ``args.repeats`` times; the record :func:`markdown` prints."""
    load_before, t0, started = load_average(), time.perf_counter(), now_utc()
    state = module.setup(args)
    values: dict[str, list[float]] = {row.key: [] for row in module.ROWS}
    info: list[dict[str, Any]] = []
    try:
        for _ in range(args.repeats):
            got = module.measure(args, state)
            info.append(got.pop("info", {}))
            for key in values:
                values[key].append(float(got.get(key, float("nan"))))
    finally:
        if hasattr(module, "teardown"):
            module.teardown(state)
    params = module.params(args) if hasattr(module, "params") else {}
    bench = {
        "name": module.NAME,
        "title": module.TITLE.format(**vars(args)),
        "started": started,
        "repeats": args.repeats,
        "params": params,
        "rows": [dict(asdict(r), label=r.label.format(**vars(args))) for r in module.ROWS],
        "ratios": [dict(asdict(r), label=r.label.format(**vars(args))) for r in module.RATIOS],
        "values": values,
        "info": info,
        "notes": list(getattr(module, "NOTES", [])),
        "load_before": load_before,
        "load_after": load_average(),
        "seconds": time.perf_counter() - t0,
        "machine": machine(),
        "versions": versions(),
        "commit": git_commit(package_tree()),
        "tree": str(package_tree()),
    }
    return summarise(bench)


def parser_for(module: ModuleType) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=module.TITLE)
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help=f"repeats (default {DEFAULT_REPEATS})")
    ap.add_argument("--json", type=Path, help="write the record here")
    ap.add_argument("--quiet", action="store_true", help="do not print the tables")
    module.add_arguments(ap)
    return ap


def main(module: ModuleType, argv: list[str] | None = None) -> dict[str, Any]:
    """Command line of one benchmark module: ``python benchmarks/NAME.py [--repeats N] [--json F] ...``."""
    args = parser_for(module).parse_args(argv)
    bench = run(module, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(bench, indent=1, default=str))
    if not args.quiet:
        print(markdown(bench), flush=True)
    return bench
