"""The service token and TLS settings: read once, refused clearly when wrong; storage does not
start without a service token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from comfyfleet.storage.v1 import storage_service_pb2, storage_service_pb2_grpc

from services.common.service_auth import Credential, ServiceAuth, ServiceSecurity, ServiceToken
from services.common.tls import TlsFiles
from services.devrun import ROOT, ensure_service_token, free_port
from tests.security.certs import make_ca

TOKEN = "t" * 40


def test_the_token_comes_from_the_environment_or_its_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    assert ServiceSecurity.from_env({"COMFYFLEET_SERVICE_TOKEN": TOKEN}).service_token == TOKEN
    assert ServiceSecurity.from_env({"COMFYFLEET_SERVICE_TOKEN_FILE": str(path)}).service_token == TOKEN
    assert ServiceSecurity.from_env({}) == ServiceSecurity()
    assert TOKEN not in repr(ServiceSecurity.from_env({"COMFYFLEET_SERVICE_TOKEN": TOKEN}))


@pytest.mark.parametrize(("env", "message"), [
    ({"COMFYFLEET_SERVICE_TOKEN": "short"}, "at least 32 characters"),
    ({"COMFYFLEET_SERVICE_TOKEN_FILE": "/nonexistent/token"}, "cannot read COMFYFLEET_SERVICE_TOKEN_FILE"),
    ({"COMFYFLEET_TLS_CERT_FILE": "/x.pem"}, "missing COMFYFLEET_TLS_KEY_FILE, COMFYFLEET_TLS_CA_FILE"),
    ({"COMFYFLEET_TLS_CERT_FILE": "/x.pem", "COMFYFLEET_TLS_KEY_FILE": "/y", "COMFYFLEET_TLS_CA_FILE": "/z"},
     "cannot read the TLS certificate '/x.pem'"),
])
def test_bad_settings_are_refused_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceSecurity.from_env(env)


def test_tls_files_are_read_once_and_must_be_pem(tmp_path: Path) -> None:
    certs = make_ca(tmp_path)
    loaded = TlsFiles.from_env({"COMFYFLEET_TLS_CERT_FILE": str(certs.cert), "COMFYFLEET_TLS_KEY_FILE": str(certs.key),
                                "COMFYFLEET_TLS_CA_FILE": str(certs.ca)})
    assert loaded is not None and loaded.cert == certs.cert.read_bytes() and b"PRIVATE" not in repr(loaded).encode()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="is not PEM"):
        TlsFiles.load(tmp_path / "junk.pem", certs.key, certs.ca)


def test_the_server_keeps_a_digest_and_compares_whole_tokens() -> None:
    token = ServiceToken(TOKEN)
    assert token.accepts(TOKEN)
    assert not any(token.accepts(t) for t in ("", TOKEN[:-1], TOKEN + "t", TOKEN.upper()))
    assert TOKEN not in str(vars(token))


def test_rules_close_what_they_do_not_name() -> None:
    auth = ServiceAuth({"/a.S/": {Credential.SERVICE}, "/b.T/Open": {Credential.USER}}, ServiceToken(TOKEN))
    assert auth.accepts("/a.S/Get") == {Credential.SERVICE}
    assert auth.accepts("/b.T/Open") == {Credential.USER}
    assert auth.accepts("/b.T/Other") == frozenset() and auth.accepts("/c.U/Get") == frozenset()
    with pytest.raises(ValueError, match="COMFYFLEET_SERVICE_TOKEN"):
        ServiceAuth({"/a.S/": {Credential.SERVICE}}, None)  # a server taking service calls needs the token


def test_the_dev_token_file_is_made_once_and_private(tmp_path: Path) -> None:
    first = ensure_service_token(tmp_path / "var" / "service-token")
    assert len(first) >= 32 and ensure_service_token(tmp_path / "var" / "service-token") == first
    assert (tmp_path / "var" / "service-token").stat().st_mode & 0o777 == 0o600


def test_storage_does_not_start_without_a_service_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYFLEET_SERVICE_TOKEN")}
    done = subprocess.run([sys.executable, "-m", "services.storage"], cwd=tmp_path, capture_output=True, timeout=30,
                          env={**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
                               "STORAGE_LISTEN": f"127.0.0.1:{free_port()}"}, check=False)
    assert done.returncode == 2
    assert "COMFYFLEET_SERVICE_TOKEN or COMFYFLEET_SERVICE_TOKEN_FILE is required" in done.stderr.decode()


async def test_a_token_channel_reports_a_dead_peer_as_a_plain_channel_does() -> None:
    # what the runner's and the gateway's uploads handle: AioRpcError UNAVAILABLE from write()
    # (a client interceptor would raise InvalidStateError here instead)
    channel = ServiceSecurity(service_token=TOKEN).channel(f"127.0.0.1:{free_port()}", ())
    async with channel:
        call = storage_service_pb2_grpc.StorageServiceStub(channel).PutObject()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            for _ in range(3):
                await call.write(storage_service_pb2.PutObjectRequest(chunk=b"x"))
            await call
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
