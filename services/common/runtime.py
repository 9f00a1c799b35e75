"""Interpreter settings every service process starts with (`tune_interpreter`, from main).

The GIL switch interval. Every service runs an asyncio event loop and worker threads beside
it (the scheduler's SQLite thread, storage's file threads, gRPC's). With CPython's default
of 5 ms, a thread that is ready to run waits up to 5 ms while another runs Python code: a
gRPC message the event loop should answer waits behind a transaction's SQLAlchemy work on
the SQLite thread, and that thread's commit result waits behind the loop. At 1 ms these
hand-offs stay short. Measured with bench.overhead's runs (one workflow at a time through the
whole suite), the scheduler alone at 1 ms: median 57-74 ms against 79-110 ms at 5 ms in the
same session; the cost, a few more GIL switches under contention, is not measurable in
bench.throughput (bench/profiles/README.md).
"""

from __future__ import annotations

import sys

SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
