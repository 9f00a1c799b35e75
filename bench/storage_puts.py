"""Storage alone: small outputs put as the runners put them, against the file work on its own.

The storage service runs by itself (local directory backend). Through the runner's own client
(`services.runner.storage_client`), CONCURRENT puts at a time store small objects, each under
a new workflow's directory (`outputs/<workflow>/<node>/<file>`, as a fleet's outputs arrive);
it prints puts/s and storage's CPU per put. Next to it, the baseline: the same objects stored
by `LocalBackend._store_whole` called in this process, one after the other, on one thread (the
file work a put cannot avoid: temp file, fsync, rename, directory fsyncs), and its CPU per put.
The ratio is what serving a put costs on top of its file work.

No target of its own: it shows where storage's CPU per workflow in `bench.throughput` goes.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import cpu_seconds, figure, log
from services.common.service_auth import ServiceSecurity
from services.devrun import Suite, free_port
from services.runner.storage_client import StorageClient
from services.storage.local_backend import LocalBackend

CONCURRENT = 20
OBJECT_BYTES = 300  # a small PNG's size: the bench fleets' outputs are 8x8 images


def _key(run: str, n: int) -> str:
    return f"outputs/{run}-{n}/9/ComfyUI_00001_.png"


async def _served(address: str, token: str, count: int, data: bytes, pid: int) -> tuple[float, float]:
    """(puts/s, storage CPU ms per put) for `count` puts, CONCURRENT at a time."""
    client = StorageClient(address, ServiceSecurity.from_env({"COMFYFLEET_SERVICE_TOKEN": token}))
    slots = asyncio.Semaphore(CONCURRENT)

    async def put(key: str) -> None:
        async def chunks() -> Any:
            yield data
        async with slots:
            await client.put(key, "image/png", chunks())

    try:
        await put(_key("warm", 0))  # the stream, the directories above the workflows
        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(put(_key("served", n)) for n in range(count)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    finally:
        await client.close()
    return count / elapsed, 1000 * cpu / count


async def _in_process(root: Path, count: int, data: bytes) -> float:
    """This process's CPU ms per object stored by the file work alone, one after the other."""
    backend = await LocalBackend.open(root)
    try:
        backend._store_whole(_key("warm", 0), data, "image/png")
        before = os.times()
        for n in range(count):
            backend._store_whole(_key("alone", n), data, "image/png")
        after = os.times()
    finally:
        await backend.close()
    return 1000 * ((after.user - before.user) + (after.system - before.system)) / count


def main(quick: bool = False) -> dict[str, Any]:
    count = 300 if quick else 3000
    data = os.urandom(OBJECT_BYTES)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        suite = Suite(var_dir=Path(tmp) / "var", scheduler_port=free_port(), storage_port=free_port(),
                      gateway_port=free_port())
        try:
            suite.start("storage")
            suite.wait_ready("storage")
            token = (suite.var_dir / "service-token").read_text().strip()
            rate, served_ms = asyncio.run(_served(f"127.0.0.1:{suite.storage_port}", token, count, data,
                                                  suite.procs["storage"].pid))
        finally:
            suite.down()
        alone_ms = asyncio.run(_in_process(Path(tmp) / "alone", count, data))
    log(f"storage_puts: {rate:.0f} puts/s, {served_ms:.3f} ms CPU per put served, {alone_ms:.3f} ms file work alone")
    return {
        "figures": [
            figure("small puts/s, storage alone", rate, "/s",
                   note=f"{count} puts of {OBJECT_BYTES} B, {CONCURRENT} at a time, each in a new directory pair"),
            figure("storage CPU per put vs its file work alone", served_ms, "ms", baseline=alone_ms,
                   note="baseline: LocalBackend._store_whole in-process, one thread, one after the other"),
        ],
        "count": count, "concurrent": CONCURRENT, "object_bytes": OBJECT_BYTES,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
