"""What each process holds, sampled from /proc over time: resident memory (VmRSS in
/proc/<pid>/status) and open file descriptors (the entries of /proc/<pid>/fd).

`Sampler` samples a fixed set of processes (name -> pid) every `interval` seconds in a thread
and tags each sample with the phase the test set (`sampler.phase = "load"`), so the verdicts
(tests/soak/flat.py) are taken over the phase they are about.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int | None:
    """VmRSS of `pid` in bytes; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # "VmRSS:   123456 kB"
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def fd_count(pid: int) -> int | None:
    """How many file descriptors `pid` has open; None when the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None


def fd_kinds(pid: int) -> Counter[str]:
    """What `pid`'s open fds are: "socket", "pipe", "anon_inode:[eventfd]", or a file path."""
    kinds: Counter[str] = Counter()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue  # closed meanwhile
            kinds[target.split(":[")[0] if target.startswith(("socket:", "pipe:")) else target] += 1
    except FileNotFoundError:
        pass
    return kinds


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    phase: str
    rss: int  # bytes
    fds: int


@dataclass
class Sampler:
    pids: dict[str, int]  # name -> pid
    interval: float = 1.0
    phase: str = "start"
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # processes that exited while sampled
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now, phase = time.monotonic(), self.phase
        for name, pid in self.pids.items():
            rss, fds = rss_bytes(pid), fd_count(pid)
            if rss is None or fds is None:
                self.gone.add(name)
                continue
            self.samples.setdefault(name, []).append(Sample(now, phase, rss, fds))

    def series(self, name: str, phase: str, what: str) -> list[tuple[float, float]]:
        """(seconds, value) of `what` ("rss" in MiB or "fds") for one process during one phase."""
        scale = MIB if what == "rss" else 1
        return [(s.at, getattr(s, what) / scale) for s in self.samples.get(name, []) if s.phase == phase]

    def kinds_now(self) -> dict[str, Counter[str]]:
        return {name: fd_kinds(pid) for name, pid in self.pids.items()}

    def fds_now(self) -> dict[str, int]:
        """Every process's open fds, read now (0 for one that is gone)."""
        return {name: fd_count(pid) or 0 for name, pid in self.pids.items()}
