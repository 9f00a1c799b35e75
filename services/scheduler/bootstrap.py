"""Development bootstrap for `make run` and the tests: an administrator with an API token, a
runner token and a pool token (`python -m services.runner --pool`), written to
`<bootstrap_dir>/dev-token`, `<bootstrap_dir>/runner-token` and `<bootstrap_dir>/pool-token`.

A token file whose token no longer authenticates (a new database) is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from services.scheduler.db.identity_store import API, POOL, RUNNER, IdentityStore
from services.scheduler.errors import Unauthenticated

log = logging.getLogger(__name__)

DEV_USER = "dev"


async def ensure_dev_tokens(identity: IdentityStore, directory: Path) -> None:
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    user = await identity.user_by_name(DEV_USER)
    if user is None:
        user = await identity.create_user(DEV_USER, tier="enterprise", email="dev@localhost", is_admin=True)
        log.info("created development user %s", user.id)
    for kind, filename in ((API, "dev-token"), (RUNNER, "runner-token"), (POOL, "pool-token")):
        path = directory / filename
        if await asyncio.to_thread(path.exists):
            try:
                await identity.authenticate((await asyncio.to_thread(path.read_text)).strip(), kind)
                continue
            except Unauthenticated:
                pass
        token = await identity.issue_token(user.id, kind)
        await asyncio.to_thread(_write_secret, path, token)
        log.info("wrote %s", path)


def _write_secret(path: Path, value: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
