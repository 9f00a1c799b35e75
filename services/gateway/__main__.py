"""`python -m services.gateway`: read the settings once, serve the app with uvicorn until SIGTERM."""

from __future__ import annotations

import os
import resource
import sys

import uvicorn

from services.common.logs import configure_logging
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.errors import InvalidSettings

# Open SSE streams would hold a graceful shutdown forever; after this they are closed.
GRACEFUL_SHUTDOWN_SECONDS = 10
# Pending connections the listening socket queues (uvicorn's default is 2048): SSE clients
# reconnect all at once after a restart.
BACKLOG = 4096


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: every open SSE stream holds a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    try:
        settings = GatewaySettings.from_env(os.environ)
    except InvalidSettings as err:
        sys.exit(f"gateway: {err}")
    configure_logging(settings.log_format)
    raise_fd_limit()
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        ws="none",
        loop="auto",  # uvloop when installed (requirements.txt), else asyncio
        http="auto",  # httptools when installed (requirements.txt), else h11
        log_config=None,
        access_log=False,  # edge.py logs each request, with its request id
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        backlog=BACKLOG,
        ssl_certfile=settings.https_cert_file or None,  # HTTPS when both are set
        ssl_keyfile=settings.https_key_file or None,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
