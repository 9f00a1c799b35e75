"""Upload throughput: a 50 MB `$file` through the gateway to the s3 backend vs a direct minio put.

Both go to one SeaweedFS server started here, in the same run, with the same bytes:

- gateway: `POST /v1/workflow` (multipart, the file as `$photo`) -> gateway -> storage (gRPC
  stream) -> S3 multipart upload; wall time of the request, so it includes the create.
- direct: `Minio.put_object` of the same bytes from this process (the baseline).

Reported: both MB/s (median of the rounds), their ratio (target >= 0.7), and the gateway's peak
RSS growth (VmHWM, reset before each phase through /proc/PID/clear_refs) for one upload at a
time and for 8 concurrent uploads (target < 8 MiB per concurrent upload). --quick: 20 MB, 4 at once.

`python -m bench.upload [--quick]` prints a table; `make bench` runs `main` with the others.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench._common import figure, log
from services.devrun import Suite, free_port
from tests.storage.seaweed import SeaweedS3

FILE_BYTES = 50 * 1000 * 1000  # "50 MB", under the gateway's 50 MiB request limit with the other parts
CONCURRENT = 8
QUICK_FILE_BYTES, QUICK_CONCURRENT = 20 * 1000 * 1000, 4  # --quick
BUCKET = "bench-upload"
MiB = 1024 * 1024
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _post(url: str, token: str, data: bytes, n: int) -> float:
    files: dict[str, tuple[str, str | bytes, str]] = {
        "workflow_json": ("workflow.json", json.dumps(WORKFLOW), "application/json"),
        "$photo": (f"upload-{n}.bin", data, "application/octet-stream"),
    }
    started = time.perf_counter()
    reply = httpx.post(f"{url}/v1/workflow", headers={"Authorization": f"Bearer {token}"},
                       data={"name": f"bench upload {n}"}, files=files, timeout=300)
    elapsed = time.perf_counter() - started
    if reply.status_code != 201:
        raise RuntimeError(f"upload {n}: {reply.status_code} {reply.text[:300]}")
    return elapsed


def _direct(seaweed: SeaweedS3, data: bytes, n: int) -> float:
    client = seaweed.client()
    started = time.perf_counter()
    client.put_object(BUCKET, f"direct/{n}.bin", io.BytesIO(data), len(data))
    return time.perf_counter() - started


def main(quick: bool = False) -> dict[str, Any]:
    rounds = 2 if quick else 4
    file_bytes, concurrent = (QUICK_FILE_BYTES, QUICK_CONCURRENT) if quick else (FILE_BYTES, CONCURRENT)
    data = bytes(range(256)) * (file_bytes // 256) + b"\0" * (file_bytes % 256)
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        seaweed = SeaweedS3(Path(tmp) / "seaweed")
        seaweed.start()
        suite = Suite(var_dir=Path(tmp) / "var", scheduler_port=free_port(), storage_port=free_port(),
                      gateway_port=free_port(), extra_env=seaweed.env(BUCKET))
        try:
            suite.up()
            token = suite.token
            # a registered (never reachable) runner, so creates are accepted and wait in the queue
            httpx.post(f"{suite.gateway_url}/v1/runner", headers={"Authorization": f"Bearer {token}"},
                       json={"name": "bench", "endpoint": "http://127.0.0.1:9"}, timeout=30).raise_for_status()
            gateway_pid = suite.procs["gateway"].pid
            _post(suite.gateway_url, token, data[: MiB], -1)  # warm-up: connections, imports
            seaweed.client().put_object(BUCKET, "direct/warm", io.BytesIO(data[:MiB]), MiB)

            peak_reset = _reset_peak(gateway_pid)
            before = _rss_kib(gateway_pid, "VmRSS")
            gateway_s: list[float] = []
            direct_s: list[float] = []
            for n in range(rounds):  # alternate, so drift on the shared machine hits both
                gateway_s.append(_post(suite.gateway_url, token, data, n))
                direct_s.append(_direct(seaweed, data, n))
                log(f"upload round {n}: gateway {gateway_s[-1]:.2f}s direct {direct_s[-1]:.2f}s")
            single_growth_mib = (_rss_kib(gateway_pid, "VmHWM") - before) / 1024

            _reset_peak(gateway_pid)
            before = _rss_kib(gateway_pid, "VmRSS")
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrent) as pool:
                list(pool.map(lambda n: _post(suite.gateway_url, token, data, 100 + n), range(concurrent)))
            concurrent_s = time.perf_counter() - started
            concurrent_growth_mib = (_rss_kib(gateway_pid, "VmHWM") - before) / 1024
        finally:
            suite.down()
            seaweed.stop()

    mb = file_bytes / 1e6
    gateway_mbps = mb / statistics.median(gateway_s)
    direct_mbps = mb / statistics.median(direct_s)
    ratio = gateway_mbps / direct_mbps
    per_upload = concurrent_growth_mib / concurrent
    note = "" if peak_reset else "VmHWM could not be reset: growth is since the gateway started"
    return {
        "figures": [
            figure("gateway upload", gateway_mbps, "MB/s", baseline=direct_mbps, ratio=ratio, target=">= 0.7 x direct",
                   met=ratio >= 0.7),
            figure("direct minio put_object", direct_mbps, "MB/s"),
            figure("gateway peak RSS growth, 1 upload", single_growth_mib, "MiB", note=note),
            figure(f"gateway peak RSS growth per upload, {concurrent} concurrent", per_upload, "MiB",
                   target="< 8 MiB", met=per_upload < 8, note=note),
            figure(f"{concurrent} concurrent uploads", concurrent * mb / concurrent_s, "MB/s"),
        ],
        "file_bytes": file_bytes,
        "rounds": rounds,
        "gateway_seconds": [round(s, 3) for s in gateway_s],
        "direct_seconds": [round(s, 3) for s in direct_s],
        "concurrent_seconds": round(concurrent_s, 3),
        "concurrent_growth_mib": round(concurrent_growth_mib, 2),
    }


def _table(result: dict[str, Any]) -> str:
    rows = [("figure", "value", "baseline", "ratio", "target", "met")]
    for f in result["figures"]:
        rows.append((f["name"], f"{f['value']} {f['unit']}", str(f.get("baseline", "")), str(f.get("ratio", "")),
                     f.get("target", ""), "" if f.get("met") is None else ("yes" if f["met"] else "NO")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    outcome = main(quick=args.quick)
    print(_table(outcome))
    print(json.dumps({k: v for k, v in outcome.items() if k != "figures"}), file=sys.stderr)
