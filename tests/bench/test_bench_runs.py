"""`make bench` keeps working: every benchmark runs in its quick mode, end to end, and reports
figures. What the figures are is not checked (benchmarks are never timed tests: the machine is
shared and noisy); that they exist is. A benchmark that breaks (a change of behaviour it relied
on, a renamed field) fails here instead of on the next person's `make bench`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = {"submit", "overhead", "throughput", "scale", "placement", "sse_fanout", "storage_puts", "upload"}

pytestmark = pytest.mark.timeout(600)


def test_every_benchmark_runs_in_quick_mode_and_reports_figures(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--output", str(output)],
                         cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["quick"] is True
    assert set(results["benchmarks"]) == BENCHMARKS
    for name, result in results["benchmarks"].items():
        assert "error" not in result, (name, result["error"])
        values = [figure["value"] for figure in result["figures"]]
        assert values, f"{name} reported no figures"
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), (name, values)
