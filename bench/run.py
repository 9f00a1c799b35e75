"""`python -m bench.run [--quick] [--profile] [--only NAME ...]`: every benchmark, one table.

Finds the benchmark modules by the convention in bench/__init__.py (a module of bench/ not
starting with `_`, other than this one, with `main(quick: bool) -> dict`), runs each in turn
(submit, overhead, throughput, scale first, then the others by name), prints a summary table
to stdout and writes everything to bench/results.json. A benchmark that raises is recorded
with its error and the others still run. Exit status 0 unless nothing could be measured:
figures that miss their targets are reported, not failed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import pkgutil
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
FIRST = ["submit", "overhead", "throughput", "scale"]
TOOLS = {"run", "compare"}  # modules of bench/ that are not benchmarks

Benchmark = Callable[[bool], dict[str, Any]]


SKIPPED: dict[str, str] = {}


def discover() -> dict[str, Benchmark]:
    """Name -> main, for each module of bench/ that follows the convention (others in SKIPPED)."""
    names = [m.name for m in pkgutil.iter_modules([str(BENCH_DIR)])
             if not m.name.startswith("_") and m.name not in TOOLS and not m.ispkg]
    order = [n for n in FIRST if n in names] + sorted(n for n in names if n not in FIRST)
    found: dict[str, Benchmark] = {}
    for name in order:
        module = importlib.import_module(f"bench.{name}")
        main = getattr(module, "main", None)
        if callable(main) and len(inspect.signature(main).parameters) >= 1:
            found[name] = main
        else:
            SKIPPED[name] = "no main(quick: bool) -> dict (see bench/__init__.py)"
    return found


def run(names: list[str] | None, quick: bool) -> dict[str, Any]:
    benchmarks = discover()
    chosen = names or list(benchmarks)
    unknown = [n for n in chosen if n not in benchmarks]
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(unknown)}; found: {', '.join(benchmarks)}")
    results: dict[str, Any] = {}
    for name, why in SKIPPED.items():
        if names is None:
            print(f"[bench] skipping bench/{name}.py: {why}", file=sys.stderr)
            results[name] = {"error": f"skipped: {why}", "figures": []}
    for name in chosen:
        print(f"[bench] {name} ({'quick' if quick else 'full'}) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            result = benchmarks[name](quick)
        except Exception as err:  # recorded, and the other benchmarks still run
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {err}", "figures": []}
        result["duration_s"] = round(time.perf_counter() - started, 1)
        results[name] = result
        print(f"[bench] {name} done in {result['duration_s']} s", file=sys.stderr, flush=True)
    return results


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit else text


def table(results: dict[str, Any]) -> str:
    header = ["benchmark", "figure", "value", "baseline", "ratio", "target", "met"]
    rows = [header]
    for name, result in results.items():
        if result.get("error"):
            rows.append([name, "ERROR", result["error"][:60], "", "", "", ""])
        for fig in result.get("figures", []):
            met = {True: "yes", False: "NO", None: ""}[fig.get("met")]
            unit = fig.get("unit", "")
            ratio = fig.get("ratio")
            rows.append([name, fig["name"], _fmt(fig.get("value"), unit), _fmt(fig.get("baseline"), unit),
                         f"{ratio:.3f}x" if isinstance(ratio, float | int) and not math.isnan(ratio) else "",
                         fig.get("target", "") or "", met])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles under bench/profiles/")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--output", default=str(RESULTS), help=f"results file (default {RESULTS})")
    args = parser.parse_args()
    if args.profile:
        os.environ["BENCH_PROFILE"] = "1"
    started = time.time()
    results = run(args.only, args.quick)
    report = {
        "quick": args.quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "python": platform.python_version()},
        "benchmarks": results,
    }
    Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\n{len(results)} benchmark(s) in {report['duration_s']} s; details in {args.output}")
    if failed := [name for name, r in results.items() if r.get("error")]:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
