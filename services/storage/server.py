"""Wiring of the storage service: settings -> backend -> servicer -> gRPC server."""

from __future__ import annotations

import grpc
from comfyfleet.storage.v1 import storage_service_pb2_grpc

from services.common.grpc_server import serve
from services.common.metrics import start_metrics
from services.common.service_auth import Credential
from services.storage.backend import Backend
from services.storage.config import Settings
from services.storage.local_backend import LocalBackend
from services.storage.metrics import MeteredBackend
from services.storage.s3_backend import S3Backend
from services.storage.servicer import StorageServicer

SERVICE_NAME = "comfyfleet.storage.v1.StorageService"
# Every storage method is a service-to-service call (gateway, scheduler, runners).
RULES = {f"/{SERVICE_NAME}/": {Credential.SERVICE}}


async def open_backend(settings: Settings) -> Backend:
    """The backend STORAGE_BACKEND names (config.py already rejected any other value)."""
    match settings.backend:
        case "local":
            return await LocalBackend.open(settings.local_dir)
        case "s3":
            assert settings.s3 is not None  # load_settings sets it for this backend
            return await S3Backend.open(settings.s3)


def build_servicer(settings: Settings, backend: Backend) -> StorageServicer:
    return StorageServicer(
        backend,
        signing_key=settings.url_signing_key,
        public_url=settings.public_url,
        default_ttl_seconds=settings.url_ttl_seconds,
    )


def register(server: grpc.aio.Server, servicer: StorageServicer) -> None:
    storage_service_pb2_grpc.add_StorageServiceServicer_to_server(servicer, server)


async def run(settings: Settings) -> None:
    """Serves StorageService on settings.listen until SIGTERM/SIGINT."""
    backend = MeteredBackend(await open_backend(settings))  # metrics.py
    servicer = build_servicer(settings, backend)
    metrics = await start_metrics(settings.listen, settings.metrics_port)
    try:
        await serve(
            settings.listen,
            lambda server: register(server, servicer),
            service_names=[SERVICE_NAME],
            on_stop=backend.close,
            before_stop=servicer.end_streams,
            auth=settings.security.server_auth(RULES),
            tls=settings.security.tls,
        )
    finally:
        if metrics is not None:
            await metrics.close()
