"""Scheduler settings: read once from the environment in `main`, passed down, frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    database_url: str = "sqlite+aiosqlite:///./var/scheduler.db"
    storage_address: str = "127.0.0.1:50052"
    # A runner is offline when nothing arrives on its session for this long.
    lease_seconds: float = 10.0
    heartbeat_seconds: float = 2.0
    # Executions per workflow before a lost runner makes it fail instead of requeue.
    max_attempts: int = 3
    # Where `make run` finds its development tokens; empty disables bootstrapping.
    bootstrap_dir: str = "./var"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            listen=e.get("SCHEDULER_LISTEN", d.listen),
            database_url=e.get("SCHEDULER_DATABASE_URL", d.database_url),
            storage_address=e.get("SCHEDULER_STORAGE", d.storage_address),
            lease_seconds=float(e.get("SCHEDULER_LEASE_SECONDS", d.lease_seconds)),
            heartbeat_seconds=float(e.get("SCHEDULER_HEARTBEAT_SECONDS", d.heartbeat_seconds)),
            max_attempts=int(e.get("SCHEDULER_MAX_ATTEMPTS", d.max_attempts)),
            bootstrap_dir=e.get("SCHEDULER_BOOTSTRAP_DIR", d.bootstrap_dir),
        )

    @property
    def bootstrap_path(self) -> Path | None:
        return Path(self.bootstrap_dir) if self.bootstrap_dir else None
