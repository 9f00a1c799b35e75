"""TLS by configuration: the gateway serves HTTPS, and every gRPC port takes only mTLS clients
with a certificate from the services' CA.

A throwaway CA and one service certificate are made at test time (certs.py); the suite runs
as processes with them (services/devrun.py `Suite(tls=...)`: COMFYFLEET_TLS_* on every
process, GATEWAY_TLS_* on the gateway) and a runner driving the ComfyUI double. A workflow
goes from upload to downloaded output over HTTPS (so gateway -> scheduler/storage and runner ->
scheduler/storage all ran over mTLS); plain HTTP to the listener fails; storage and the
scheduler refuse a client without a certificate, with a stranger's, and in plain text.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.devrun import Suite, SuiteTls, free_port
from tests.integration.fleet import start_double
from tests.integration.test_end_to_end import WORKFLOW, png
from tests.security.certs import make_ca, other_ca

TERMINAL = {"completed", "failed", "cancelled", "invalid"}


@pytest.fixture(scope="module")
def tls_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    root: Path = tmp_path_factory.mktemp("tls")
    double = start_double(root / "comfyui", node_delay_ms=0)
    suite = Suite(var_dir=root / "var", scheduler_port=free_port(), storage_port=free_port(),
                  gateway_port=free_port(), comfyui_url=double.url, tls=make_ca(root / "certs"),
                  extra_env={"GATEWAY_RATE_LIMIT_REQUESTS": "0"})
    try:
        suite.up()
        yield suite
    finally:
        suite.down()
        double.stop()
        for name in ("storage", "scheduler", "gateway", "runner"):
            log = root / "var" / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"\n--- {name}.log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-20:]))


def tls_of(suite: Suite) -> SuiteTls:
    assert suite.tls is not None
    return suite.tls


def test_a_workflow_completes_end_to_end_over_https_and_mtls(tls_suite: Suite) -> None:
    assert tls_suite.gateway_url.startswith("https://")
    trust = tls_of(tls_suite).ssl_context()
    photo = png(40, 30)
    with httpx.Client(base_url=tls_suite.gateway_url, verify=trust, timeout=30,
                      headers={"Authorization": f"Bearer {tls_suite.token}"}) as client:
        created = client.post("/v1/workflow", data={"name": "over tls", "$prefix": "tls", "#method": "area"},
                              files={"workflow_json": ("w.json", json.dumps(WORKFLOW), "application/json"),
                                     "$photo": ("cat.png", photo, "image/png")})
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
        deadline = time.monotonic() + 60
        while (record := client.get(f"/v1/workflow/{workflow_id}").json())["status"] not in TERMINAL:
            assert time.monotonic() < deadline, record
            time.sleep(0.2)
        assert record["status"] == "completed", record
        [output] = client.get(f"/v1/workflow/{workflow_id}/outputs").json()
    assert output["src"].startswith(tls_suite.gateway_url + "/v1/objects/")  # signed URLs name the https origin
    download = httpx.get(output["src"], verify=trust, timeout=30)
    assert download.status_code == 200 and download.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(download.content) == output["size"]


def test_plain_http_to_the_https_listener_fails(tls_suite: Suite) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_suite.gateway_port}/healthz", timeout=5)
    # and a client that does not trust the CA refuses the listener
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_suite.gateway_url}/healthz", verify=ssl.create_default_context(), timeout=5)
    assert httpx.get(f"{tls_suite.gateway_url}/healthz", verify=tls_of(tls_suite).ssl_context(),
                     timeout=5).status_code == 200


def health(address: str, channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("server", ["storage", "scheduler"])
def test_a_grpc_client_without_the_services_certificate_is_refused(
        tls_suite: Suite, server: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{tls_suite.storage_port if server == 'storage' else tls_suite.scheduler_port}"
    ours = tls_of(tls_suite)
    stranger = other_ca(tmp_path)
    clients = {
        "plain text": grpc.insecure_channel(address),
        "TLS, no client certificate": grpc.secure_channel(address, grpc.ssl_channel_credentials(ours.ca.read_bytes())),
        "a certificate from another CA": grpc.secure_channel(address, grpc.ssl_channel_credentials(
            ours.ca.read_bytes(), stranger.key.read_bytes(), stranger.cert.read_bytes())),
    }
    refused = {}
    for what, channel in clients.items():
        with channel:
            refused[what] = health(address, channel)
    assert refused == dict.fromkeys(clients, grpc.StatusCode.UNAVAILABLE)
    with grpc.secure_channel(address, ours.channel_credentials()) as channel:  # the control: our certificate
        assert health(address, channel) == grpc.StatusCode.OK
