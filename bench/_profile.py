"""py-spy around a measured phase: `with profiled({"gateway": pid, ...}, "submit"):`.

When profiling is on (`python -m bench.run --profile`, or BENCH_PROFILE=1), records each pid
with py-spy while the block runs and writes under bench/profiles/: `<tag>-<proc>.txt`
(collapsed stacks: open in speedscope or flamegraph.pl) and `<tag>-<proc>.top.txt` (the
frames with the largest share of samples, inclusive and self, and the busy samples by whose
code is on top: ours, grpc's, aiohttp's, SQLAlchemy's, the standard library's, or native code
under the event loop). Off, it does nothing.

Where Linux `perf` is installed, each pid is also sampled by it (on CPU only, every thread,
native code and the kernel included): `<tag>-<proc>.native.txt` gives the CPU's shares by
shared object (the interpreter running Python code, grpc's C core, SQLite, protobuf, the
kernel) and the top symbols. py-spy sees Python frames but not where C code spends; perf
sees that, and how much of a process's CPU is the kernel's (system calls, context switches).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench._common import env_flag, log

PROFILES = Path(__file__).resolve().parent / "profiles"


def enabled() -> bool:
    return env_flag("BENCH_PROFILE")


def _py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pids: dict[str, int], tag: str, *, rate: int = 100) -> Iterator[None]:
    spy = _py_spy() if enabled() and pids else None
    if enabled() and pids and spy is None:
        log("profiling asked for, but py-spy is not installed (pip install py-spy)")
    if spy is None:
        yield
        return
    PROFILES.mkdir(exist_ok=True)
    perf = shutil.which("perf")
    scratch = Path(tempfile.mkdtemp(prefix="comfyfleet-perf-"))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    for name, pid in pids.items():
        out = PROFILES / f"{tag}-{name}.txt"
        procs.append((f"py-spy for {name}", subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out),
             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        if perf is not None:
            procs.append((f"perf for {name}", subprocess.Popen(
                [perf, "record", "-F", "999", "-p", str(pid), "-o", str(scratch / f"{name}.data")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    if perf is not None:
        time.sleep(0.5)  # perf attaches to every thread of the pid before it samples
    try:
        yield
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for what, proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                log(f"{what} did not stop")
        for name in pids:
            raw = PROFILES / f"{tag}-{name}.txt"
            if raw.exists():
                (PROFILES / f"{tag}-{name}.top.txt").write_text(top_frames(raw))
            data = scratch / f"{name}.data"
            if perf is not None and data.exists():
                (PROFILES / f"{tag}-{name}.native.txt").write_text(native_shares(perf, data))
        shutil.rmtree(scratch, ignore_errors=True)
        log(f"profiles written to {PROFILES}/{tag}-*")


def native_shares(perf: str, data: Path, limit: int = 25) -> str:
    """perf's CPU samples of one process: the shares by shared object, then by symbol."""
    sections = []
    for key, title in (("dso", "CPU share by shared object"), ("sym", f"top {limit} symbols")):
        report = subprocess.run([perf, "report", "-i", str(data), "--sort", key, "--stdio"],
                                capture_output=True, text=True, timeout=120, check=False).stdout
        rows = [line.rstrip() for line in report.splitlines() if line.strip() and not line.startswith("#")]
        sections.append(f"{title}:\n" + "\n".join(rows[:limit]))
    return "\n\n".join(sections) + "\n"


def top_frames(collapsed: Path, limit: int = 40) -> str:
    """From py-spy's collapsed stacks: the frames holding the most samples (inclusive), self
    time, and the inclusive shares among the samples that are not waits (WAITS)."""
    inclusive: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    own: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    total = active = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        waiting = frames[-1].split(" (")[0] in WAITS
        total += count
        active += 0 if waiting else count
        for frame in set(frames):
            inclusive[frame] += count
            if not waiting:
                busy[frame] += count
        own[frames[-1]] += count
        if not waiting:
            owners[owner_of(stack.rsplit(";", 1)[-1])] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "inclusive share (a frame and everything it calls):"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in inclusive.most_common(limit)]
    lines += ["", "self share (samples where this frame was on top):"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in own.most_common(limit)]
    # py-spy's idle detection misses waits inside C calls: the event loop's epoll and aiosqlite's
    # worker threads blocked in SimpleQueue.get (which also hides SQLite's own C time) show as busy.
    if active:
        lines += ["", f"inclusive share of the {active} samples not in a wait ({', '.join(sorted(WAITS))}):"]
        lines += [f"{100 * n / active:6.1f}%  {frame}" for frame, n in busy.most_common(limit)]
        lines += ["", f"self share by whose code it is, of the {active} samples not in a wait:"]
        lines += [f"{100 * n / active:6.1f}%  {owner}" for owner, n in owners.most_common()]
    return "\n".join(lines) + "\n"


# The loop's own frame: on top, the thread runs C under it (uvloop's callbacks and system calls,
# grpc's Cython layer completing calls) with no Python frame of its own.
LOOP_FRAME = "Runner.run (asyncio/runners.py)"
OWNERS = (  # (path prefix of a py-spy frame, whose code), first match wins
    ("services/", "ours (services/)"),
    ("tests/", "the ComfyUI double (tests/)"),
    ("bench/", "the benchmark (bench/)"),
    ("grpc/", "grpc (its Python and Cython layers)"),
    ("google/", "protobuf"),
    ("aiohttp/", "aiohttp"), ("multidict/", "aiohttp"), ("yarl/", "aiohttp"),
    ("sqlalchemy/", "SQLAlchemy"), ("sqlmodel/", "SQLAlchemy"), ("aiosqlite/", "SQLAlchemy"),
    ("starlette/", "the web stack"), ("uvicorn/", "the web stack"), ("h11/", "the web stack"),
    ("httptools/", "the web stack"), ("anyio/", "the web stack"),
    ("prometheus_client/", "prometheus_client"),
)


def owner_of(frame: str) -> str:
    """Whose code a py-spy frame (`func (path/file.py:123)`) is: ours, a library's, or the
    interpreter's standard library; the loop's own frame on top stands for native code."""
    if _short(frame) == LOOP_FRAME:
        return "native under the event loop (uvloop, grpc's Cython and C core, system calls)"
    path = frame.partition(" (")[2]
    return next((owner for prefix, owner in OWNERS if path.startswith(prefix)), "the standard library (asyncio, ...)")


# Frames that, on top of a stack, mean the thread waits (or runs C code that py-spy cannot see into).
WAITS = {"EpollSelector.select", "_connection_worker_thread", "Condition.wait", "Thread.run", "_worker",
         "select", "Event.wait", "Queue.get", "SimpleQueue.get"}


def _short(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`: lines apart, same function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"
