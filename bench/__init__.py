"""comfyfleet benchmarks: `make bench` (or `python -m bench.run [--quick] [--only NAME ...]`).

The convention every benchmark module follows, so `bench.run` finds it without a list:

- A module `bench/<name>.py` whose name does not start with `_` (helpers do) and is not
  `run` or `compare` is a benchmark when it defines `main(quick: bool) -> dict`.
- `main` starts what it needs (on free ports, under a temporary directory), measures, stops
  everything it started, and returns a dict with at least `"figures"`: a list of dicts

      {"name": "creates/s", "value": 812.0, "unit": "/s",
       "baseline": 3050.0,            # optional: the same load on a baseline in the same run
       "ratio": 0.27,                 # optional: value / baseline (or as the module defines)
       "target": ">= 1000/s",         # optional: the target, as text for people
       "met": False}                  # optional: True/False against the target, None = no target

  and anything else useful (raw samples, parameters) under other keys; it all lands in
  `bench/results.json` under the module's name. Use `bench._common.figure(...)` to build one.
- `quick=True` must finish in well under a minute; `quick=False` in a few minutes.
- Benchmarks print progress to stderr, never fail the build on a missed target, and raise
  only when they could not measure at all (the runner records the error and goes on).

The machine is shared and noisy: every figure is a ratio against a baseline measured in the
same run, or a median with its min and max. To judge a change, `python -m bench.compare REV`
runs this tree and commit REV side by side, run by run (bench/compare.py).
"""

# Before any benchmark imports grpc: the load generators, the floors and the suite then use
# one gRPC transport, the one services/__init__.py chooses.
import services  # noqa: F401
