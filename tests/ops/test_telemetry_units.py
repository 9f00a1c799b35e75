"""The pieces on their own: the JSON log formatter, the gRPC server interceptor on a real
grpc.aio server on port 0, the metered storage backend, the settings."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from services.common import logs
from services.common.grpc_telemetry import REQUEST_ID_KEY, server_interceptors
from services.common.metrics import MetricsListener, metrics_host
from services.gateway.config import GatewaySettings
from services.gateway.errors import InvalidSettings
from services.runner.config import load_settings as runner_settings
from services.runner.errors import ConfigError
from services.scheduler.config import Settings as SchedulerSettings
from services.storage.config import load_settings as storage_settings
from services.storage.errors import ObjectNotFound, SettingsError
from services.storage.local_backend import LocalBackend
from services.storage.metrics import MeteredBackend


def record(message: str, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("services.test", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_the_bound_context_and_the_record_wins() -> None:
    formatter = logs.JsonFormatter()
    with logs.log_context(request_id="req-1", workflow_id="wf-ctx"):
        line = json.loads(formatter.format(record("hello", workflow_id="wf-extra")))
    assert line["message"] == "hello" and line["level"] == "INFO" and line["logger"] == "services.test"
    assert line["request_id"] == "req-1" and line["workflow_id"] == "wf-extra"
    assert "runner_id" not in line  # empty fields are left out
    assert line["time"].endswith("+00:00")
    outside = json.loads(formatter.format(record("after")))
    assert "request_id" not in outside and "workflow_id" not in outside


_CONFIGURED = """
import logging, sys
from services.common import logs
logs.configure_logging(sys.argv[1])
with logs.log_context(request_id="req-1"):
    logging.getLogger("services.test").info("created %s", "w-1", extra={"workflow_id": "w-1"})
print(logging.logThreads, logging.logProcesses, logging.logMultiprocessing, logging._srcfile)
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configured_lines_keep_their_fields_without_caller_thread_or_process(log_format: str) -> None:
    """configure_logging turns off what no format shows (the lines are as before)."""
    done = subprocess.run([sys.executable, "-c", _CONFIGURED, log_format], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.split() == ["False", "False", "False", "None"]
    line = done.stderr.strip()
    if log_format == "json":
        assert {k: v for k, v in json.loads(line).items() if k != "time"} == {
            "level": "INFO", "logger": "services.test", "message": "created w-1", "request_id": "req-1",
            "workflow_id": "w-1"}
    else:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO services.test: created w-1", line), line


def test_log_format_settings_reject_unknown_formats() -> None:
    assert logs.parse_log_format("") == "text" and logs.parse_log_format("JSON") == "json"
    with pytest.raises(ValueError, match="COMFYFLEET_LOG_FORMAT"):
        SchedulerSettings.from_env({"COMFYFLEET_LOG_FORMAT": "xml"})
    with pytest.raises(InvalidSettings):
        GatewaySettings.from_env({"COMFYFLEET_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError):
        runner_settings(["--token", "t", "--log-format", "xml"], {})


def test_metrics_ports_come_from_the_settings(tmp_path: Path) -> None:
    assert SchedulerSettings.from_env({}).metrics_port == 9461
    assert SchedulerSettings.from_env({"SCHEDULER_METRICS_PORT": "0"}).metrics_port == 0
    with pytest.raises(ValueError, match="SCHEDULER_METRICS_PORT"):
        SchedulerSettings.from_env({"SCHEDULER_METRICS_PORT": "70000"})
    env = {"STORAGE_URL_SIGNING_KEY": "k" * 32}
    assert storage_settings(env).metrics_port == 9462
    assert storage_settings({**env, "STORAGE_METRICS_PORT": "1234"}).metrics_port == 1234
    with pytest.raises(SettingsError):
        storage_settings({**env, "STORAGE_METRICS_PORT": "http"})
    assert runner_settings(["--token", "t"], {}).metrics_port == 9463
    assert runner_settings(["--token", "t"], {"RUNNER_METRICS_PORT": "0"}).metrics_port == 0
    assert metrics_host("0.0.0.0:50051") == "0.0.0.0" and metrics_host("[::]:50051") == "::"


def count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value("comfyfleet_grpc_server_handling_seconds_count",
                                      {"grpc_service": "test.Echo", "grpc_method": method, "grpc_code": code})
    return value or 0.0


async def test_the_interceptor_binds_the_request_id_and_times_each_call_by_code() -> None:
    seen: list[str] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen.append(logs.request_id.get())
        return request

    async def missing(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("abort raises")

    async def broken(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("bug")

    async def count_up(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([i])

    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Broken": grpc.unary_unary_rpc_method_handler(broken),
        "Count": grpc.unary_stream_rpc_method_handler(count_up),
    })
    server = grpc.aio.server(interceptors=server_interceptors())
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    before = {m: count(m, c) for m, c in [("Echo", "OK"), ("Missing", "NOT_FOUND"), ("Broken", "UNKNOWN"),
                                           ("Count", "OK")]}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/test.Echo/Echo")(b"hi", metadata=((REQUEST_ID_KEY, "abc-123"),)) == b"hi"
            await channel.unary_unary("/test.Echo/Echo")(b"hi", metadata=((REQUEST_ID_KEY, "not an id: spaces"),))
            with pytest.raises(grpc.aio.AioRpcError) as not_found:
                await channel.unary_unary("/test.Echo/Missing")(b"")
            assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary("/test.Echo/Broken")(b"")
            assert unknown.value.code() == grpc.StatusCode.UNKNOWN
            assert [r async for r in channel.unary_stream("/test.Echo/Count")(b"")] == [b"\x00", b"\x01", b"\x02"]
    finally:
        await server.stop(None)
    assert seen[0] == "abc-123"
    assert seen[1] != "not an id: spaces" and len(seen[1]) == 32  # an unusable id is replaced by a new one
    assert count("Echo", "OK") - before["Echo"] == 2
    assert count("Missing", "NOT_FOUND") - before["Missing"] == 1
    assert count("Broken", "UNKNOWN") - before["Broken"] == 1
    assert count("Count", "OK") - before["Count"] == 1


async def test_the_metered_backend_counts_bytes_and_errors(tmp_path: Path) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        yield b"y" * 24

    backend = MeteredBackend(await LocalBackend.open(tmp_path))
    uploaded, errors = sample("comfyfleet_storage_upload_bytes_total"), sample(
        "comfyfleet_storage_errors_total", {"operation": "get", "error": "ObjectNotFound"})
    try:
        ref = await backend.put("a/b.bin", chunks())
        _, stream = await backend.get("a/b.bin")
        assert b"".join([c async for c in stream]) == b"x" * 1000 + b"y" * 24
        with pytest.raises(ObjectNotFound):
            await backend.get("a/missing.bin")
    finally:
        await backend.close()
    assert ref.size_bytes == 1024
    assert sample("comfyfleet_storage_upload_bytes_total") - uploaded == 1024
    assert sample("comfyfleet_storage_errors_total", {"operation": "get", "error": "ObjectNotFound"}) - errors == 1


async def test_the_listener_serves_the_registry_after_refresh_and_survives_a_taken_port() -> None:
    refreshed: list[bool] = []

    async def refresh() -> None:
        refreshed.append(True)

    listener = await MetricsListener("127.0.0.1", 0, refresh=refresh).start()
    try:
        assert listener._runner is not None
        port = listener._runner.addresses[0][1]
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert reply.status_code == 200 and "comfyfleet_grpc_server_handling_seconds" in reply.text
        assert refreshed == [True]
        clash = await MetricsListener("127.0.0.1", port).start()  # taken: logged, no exception
        assert clash._runner is None
    finally:
        await listener.close()
