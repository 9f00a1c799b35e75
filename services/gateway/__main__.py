"""`python -m services.gateway`: read the settings once, serve the app with uvicorn until SIGTERM."""

from __future__ import annotations

import os
import sys

import uvicorn

from services.common.logs import configure_logging
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.errors import InvalidSettings

# Open SSE streams would hold a graceful shutdown forever; after this they are closed.
GRACEFUL_SHUTDOWN_SECONDS = 10


def main() -> None:
    try:
        settings = GatewaySettings.from_env(os.environ)
    except InvalidSettings as err:
        sys.exit(f"gateway: {err}")
    configure_logging(settings.log_format)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        ws="none",
        log_config=None,
        access_log=False,  # request_id.py logs each request, with its request id
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
