"""Run the benchmarks that produce every figure of the README and docs/benchmarks.md.

    ./run bench                                  # the whole set, default repeats
    ./run bench phasing live --repeats 5         # a subset
    ./run bench phasing -- --cohere-n 8          # options after -- go to every named benchmark
    ./run bench -o phasing="--cohere-n 8" -o live="--frames 500"
    ./run bench phasing simulate --baseline-ref 3e650cd   # before/after, in one run
    ./run bench phasing --baseline-ref 3e650cd --after-ref main   # two commits, from any tree
    ./run bench benchmarks/phasing.py --help     # one script as before

Each benchmark runs in its own process (``python benchmarks/NAME.py``) with the package
under test on ``PYTHONPATH``. The record of the run (machine, load average before and
after, date, software, commit, every repeat's values with min–max and median, ratios
against baselines measured in the same repeat) goes to ``benchmarks/results/<date>-<host>.json``
(or ``--out``) with the markdown tables beside it (``.md``), and the tables are printed.

``--baseline-ref REF`` checks REF out into a temporary git worktree and runs each benchmark
``--repeats`` times against both trees, one repeat per process, alternating which tree goes
first, so that both see the same load; it prints after/before per measurement as the
min–max over the paired repeats; ``--after-ref REF`` puts a second commit on the "after"
side instead of the working tree. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _harness import (  # noqa: E402  (after the path is set: this file runs as a script)
    DEFAULT_REPEATS,
    fmt_range,
    git_commit,
    load_average,
    machine,
    markdown,
    now_utc,
    spread,
    summarise,
    versions,
)

BENCHMARKS = ["simulate", "phasing", "inference", "live", "preprocess", "aps", "accuracy", "devices", "nns", "scale"]
"""The whole set, in the order it runs (cheap and CPU-bound first)."""

REPEATS_OF = {"accuracy": 1}
"""Default repeats where the harness's default is not used: ``accuracy``'s values are fixed
(seeded) and one repeat takes a minute on 2 cores. ``--repeats`` overrides."""


def run_one(name: str, tree: Path, repeats: int, options: list[str], out: Path, log) -> dict[str, Any] | None:
    """One benchmark in a subprocess against the package in ``tree``; its record, or None."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--repeats", str(repeats), "--json", str(out), "--quiet"]
    cmd += options
    print(
        f"[bench] {name} ({repeats} repeat{'s' if repeats > 1 else ''}, tree {tree}) ...", file=sys.stderr, flush=True
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out.exists():
        print(f"[bench] {name} FAILED (exit {proc.returncode}); see the log", file=sys.stderr, flush=True)
        return None
    print(f"[bench] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads(out.read_text())


def merge(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Records of the same benchmark (one repeat each) as one record with all the repeats."""
    first = dict(records[0])
    first["values"] = {k: [v for r in records for v in r["values"][k]] for k in first["values"]}
    first["info"] = [i for r in records for i in r["info"]]
    first["repeats"] = sum(r["repeats"] for r in records)
    first["seconds"] = sum(r["seconds"] for r in records)
    first["load_before"], first["load_after"] = records[0]["load_before"], records[-1]["load_after"]
    return summarise(first)


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Per row and ratio: after / before of each paired repeat, with its spread."""
    out = []
    for row in after["rows"]:
        a, b = after["values"][row["key"]], before["values"].get(row["key"], [])
        pairs = [x / y for x, y in zip(a, b, strict=False) if y and x == x and y == y]
        out.append({"label": row["label"], "unit": row["unit"], "after_over_before": pairs, "spread": spread(pairs)})
    return out


def comparison_markdown(name: str, before: dict[str, Any], after: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    n = after["repeats"]
    lines = [
        f"### {after['title']}: after ({after.get('commit')}) vs before ({before.get('commit')})",
        "",
        f"| measurement | unit | before, min–max of {n} | after, min–max of {n} | after / before, paired |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row, cmp in zip(after["rows"], rows, strict=True):
        if not cmp["spread"]["n"]:
            continue
        d = row["digits"]
        lines.append(
            f"| {row['label']} | {row['unit']} | {fmt_range(before['values'][row['key']], d)} | "
            f"{fmt_range(after['values'][row['key']], d)} | {fmt_range(cmp['after_over_before'], 3)}× |"
        )
    lines += [
        "",
        f"Repeats alternate the trees (ABBA); load average before {before['load_before'][0]:.2f}, "
        f"after {after['load_after'][0]:.2f}. After / before above 1: slower for times, faster for rates.",
    ]
    return "\n".join(lines)


def worktree(ref: str, where: Path, name: str) -> Path:
    path = where / name
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True)
    return path


def header(record: dict[str, Any]) -> str:
    m = record["machine"]
    v = record["versions"]
    soft = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    lb, la = record["load_before"], record["load_after"]
    return "\n".join(
        [
            f"## Benchmarks, {record['started']} – {record['finished']} ({record['seconds'] / 60:.1f} min)",
            "",
            f"- Machine: {m['cpu']} ({m['arch']}), {m['cores']} cores ({m['cores_usable']} usable), "
            f"{m['memory_gib']} GiB memory, {m['os']}, {'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}.",
            f"- Load average (1/5/15 min) before {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}.",
            f"- Software: Python {m['python']}, {soft}; OMP_WAIT_POLICY={m['omp_wait_policy']}; commit {record['commit']}.",
            f"- Command: `{record['command']}`.",
        ]
    )


def parse(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: {' '.join(BENCHMARKS)})")
    ap.add_argument(
        "--repeats", type=int, help=f"repeats each (default {DEFAULT_REPEATS}; {REPEATS_OF} where deterministic)"
    )
    ap.add_argument("--out", type=Path, help="JSON record (default benchmarks/results/<date>-<host>.json)")
    ap.add_argument(
        "-o",
        "--options",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="options for one benchmark (repeatable)",
    )
    ap.add_argument("--baseline-ref", metavar="REF", help="also run each benchmark against git REF, alternating")
    ap.add_argument(
        "--after-ref",
        metavar="REF",
        help="with --baseline-ref: the 'after' side is git REF (default: this working tree)",
    )
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    if args.after_ref and not args.baseline_ref:
        ap.error("--after-ref needs --baseline-ref")
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {BENCHMARKS}")
    args.names = args.names or BENCHMARKS
    per: dict[str, list[str]] = {n: list(extra) for n in args.names}
    for item in args.options:
        name, _, opts = item.partition("=")
        if name not in BENCHMARKS:
            ap.error(f"--options {item!r}: unknown benchmark {name!r}")
        per.setdefault(name, []).extend(shlex.split(opts))
    args.per = per
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0].endswith(".py"):  # `./run bench benchmarks/x.py ARGS`: that script alone
        os.execv(sys.executable, [sys.executable, *argv])
    args = parse(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as ./run sets it: idle OpenMP threads sleep
    if args.list:
        for name in BENCHMARKS:
            paragraph = (HERE / f"{name}.py").read_text().split('"""')[1].strip().split("\n\n")[0]
            print(f"{name:10s} {' '.join(paragraph.split())}")
        return 0
    started, t0 = now_utc(), time.perf_counter()
    day = started.split()[0]
    out = args.out or HERE / "results" / f"{day}-{platform.node() or 'host'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    record: dict[str, Any] = {
        "started": started,
        "command": shlex.join(["./run", "bench", *argv]),
        "repeats": {name: args.repeats or REPEATS_OF.get(name, DEFAULT_REPEATS) for name in args.names},
        "load_before": load_average(),
        "machine": machine(),
        "versions": versions(),
        "commit": git_commit(ROOT),
        "benchmarks": {},
    }
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cdi-bench-") as tmp_name, open(log_path, "w") as log:
        tmp = Path(tmp_name)
        base_tree = worktree(args.baseline_ref, tmp, "baseline") if args.baseline_ref else None
        after_tree = worktree(args.after_ref, tmp, "after") if args.after_ref else ROOT
        try:
            for name in args.names:
                repeats = record["repeats"][name]
                if base_tree is None:
                    rec = run_one(name, ROOT, repeats, args.per[name], tmp / f"{name}.json", log)
                    record["benchmarks"][name] = rec or {"error": f"failed, see {log_path}"}
                    if rec:
                        tables.append(markdown(rec))
                        print(tables[-1] + "\n", flush=True)
                    continue
                runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
                for r in range(repeats):
                    order = [("before", base_tree), ("after", after_tree)]
                    for label, tree in order if r % 2 == 0 else order[::-1]:
                        rec = run_one(name, tree, 1, args.per[name], tmp / f"{name}-{label}-{r}.json", log)
                        if rec:
                            runs[label].append(rec)
                if not runs["before"] or not runs["after"]:
                    record["benchmarks"][name] = {"error": f"failed, see {log_path}"}
                    continue
                before, after = merge(runs["before"]), merge(runs["after"])
                rows = compare(before, after)
                record["benchmarks"][name] = {"before": before, "after": after, "after_over_before": rows}
                tables.append(comparison_markdown(name, before, after, rows))
                print(tables[-1] + "\n", flush=True)
        finally:
            for temporary in (base_tree, after_tree):
                if temporary is not None and temporary != ROOT:
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(temporary)], check=False
                    )
    record.update(finished=now_utc(), seconds=time.perf_counter() - t0, load_after=load_average())
    for bench in record["benchmarks"].values():  # torch (imported by the benchmarks) knows the GPU
        rec = bench.get("after", bench)
        if "machine" in rec:
            record["machine"]["gpu"] = rec["machine"].get("gpu")
            break
    out.write_text(json.dumps(record, indent=1, default=str))
    text = header(record) + "\n\n" + "\n\n".join(tables) + "\n"
    out.with_suffix(".md").write_text(text)
    print(header(record), flush=True)
    print(f"\n[bench] wrote {out}, {out.with_suffix('.md')} and {log_path}", file=sys.stderr)
    return 0 if all("error" not in b for b in record["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
