"""`python -m services.storage`: runs the storage service with settings from the environment."""

from __future__ import annotations

import logging
import os
import sys

from services.common import event_loop
from services.common.logs import configure_logging
from services.storage.config import load_settings
from services.storage.errors import SettingsError
from services.storage.server import run


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("services.storage")
    try:
        settings = load_settings(os.environ)
        if not settings.security.service_token:  # else anyone reaching the port could read every object
            raise SettingsError("COMFYFLEET_SERVICE_TOKEN or COMFYFLEET_SERVICE_TOKEN_FILE is required")
        configure_logging(settings.log_format)
        log.info(
            "storage: backend=%s %s listen=%s public_url=%s",
            settings.backend,
            f"s3={settings.s3.endpoint}/{settings.s3.bucket}" if settings.s3 else f"dir={settings.local_dir}",
            settings.listen,
            settings.public_url,
        )
        event_loop.run(run(settings))
    except SettingsError as err:
        log.error("cannot start: %s", err.message)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
