"""`python -m services.storage` as a process: starts, serves, refuses bad settings, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
import pytest
from comfyfleet.storage.v1 import storage_service_pb2 as pb
from comfyfleet.storage.v1 import storage_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.service_auth import ServiceSecurity

pytestmark = pytest.mark.timeout(20)
REPO = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "storage-main-test-service-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start(env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.storage",
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}", "COMFYFLEET_SERVICE_TOKEN": SERVICE_TOKEN,
             **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="comfyfleet.storage.v1.StorageService"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"storage never became SERVING on {address}")


async def test_serves_with_defaults_under_var_and_stops_on_sigterm(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = await start({"STORAGE_LISTEN": address}, cwd=tmp_path)
    try:
        await wait_serving(address)
        async with ServiceSecurity(service_token=SERVICE_TOKEN).channel(address, ()) as channel:
            stub = storage_service_pb2_grpc.StorageServiceStub(channel)
            header = pb.PutObjectRequest(header=pb.PutObjectHeader(key="outputs/wf1/9/a.txt"))
            finish = pb.PutObjectRequest(finish=pb.PutObjectFinish(size_bytes=5))
            ref = (await stub.PutObject(iter([header, pb.PutObjectRequest(chunk=b"hello"), finish]))).object
            presigned = await stub.PresignObject(pb.PresignObjectRequest(key=ref.key))
        assert presigned.url.startswith("http://127.0.0.1:8080/v1/objects/outputs/wf1/9/a.txt?expires=")
        assert (tmp_path / "var/objects/data/outputs/wf1/9/a.txt").read_bytes() == b"hello"
        assert (tmp_path / "var/url-signing-key").stat().st_mode & 0o777 == 0o600
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    stderr = (await process.stderr.read()).decode() if process.stderr else ""
    assert "serving on" in stderr and "stopping" in stderr


async def test_an_unknown_backend_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    process = await start({"STORAGE_BACKEND": "s4", "STORAGE_LISTEN": f"127.0.0.1:{free_port()}"}, cwd=tmp_path)
    _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 2
    assert "STORAGE_BACKEND='s4' is unknown; supported: local" in stderr.decode()
    assert not (tmp_path / "var").exists()
