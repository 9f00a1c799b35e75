"""Scheduler settings: read once from the environment in `main`, passed down, frozen."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.logs import LogFormat, parse_log_format
from services.common.service_auth import PLAIN, ServiceSecurity
from services.scheduler.core.tiers import DEFAULT_LIMITS, TierLimits, parse_limits
from services.scheduler.webhooks.settings import WebhookSettings


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    database_url: str = "sqlite+aiosqlite:///./var/scheduler.db"
    storage_address: str = "127.0.0.1:50052"
    # A runner is offline when nothing arrives on its session for this long (its lease), and
    # its work goes back to placement; it is told to send a heartbeat this often.
    # SCHEDULER_LEASE_SECONDS, SCHEDULER_HEARTBEAT_SECONDS.
    lease_seconds: float = 15.0
    heartbeat_seconds: float = 5.0
    # Executions per workflow before a lost runner makes it fail instead of requeue.
    max_attempts: int = 3
    # Per-tier limits: the defaults with SCHEDULER_LIMITS_FILE's overrides (core/tiers.py).
    tier_limits: Mapping[str, TierLimits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    # Where `make run` finds its development tokens; empty disables bootstrapping.
    bootstrap_dir: str = "./var"
    # Outputs older than this are deleted, objects and records (retention.py); 0 = forever.
    # SCHEDULER_OUTPUT_RETENTION_DAYS, SCHEDULER_RETENTION_SWEEP_SECONDS.
    output_retention_days: float = 30.0
    retention_sweep_seconds: float = 3600.0
    # GET /metrics over HTTP on this port, on the host of `listen` (0 = off); the log lines'
    # format, "text" or "json" (services/common/logs.py). SCHEDULER_METRICS_PORT,
    # COMFYFLEET_LOG_FORMAT.
    metrics_port: int = 9461
    log_format: LogFormat = "text"
    # How long an accepted API/runner token is trusted without reading the database again
    # (db/identity_store.py): a revocation by another process takes up to this long; 0 = off.
    # SCHEDULER_TOKEN_CACHE_SECONDS.
    token_cache_seconds: float = 10.0
    # The service token it shows storage, and mTLS on its port and channels
    # (COMFYFLEET_SERVICE_TOKEN[_FILE], COMFYFLEET_TLS_*: services/common/service_auth.py, tls.py).
    security: ServiceSecurity = PLAIN
    # Webhook deliveries: key, target policy, timeout, retry schedule (webhooks/settings.py).
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

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
            output_retention_days=float(e.get("SCHEDULER_OUTPUT_RETENTION_DAYS", d.output_retention_days)),
            retention_sweep_seconds=float(e.get("SCHEDULER_RETENTION_SWEEP_SECONDS", d.retention_sweep_seconds)),
            metrics_port=int(e.get("SCHEDULER_METRICS_PORT", d.metrics_port)),
            log_format=parse_log_format(e.get("COMFYFLEET_LOG_FORMAT", d.log_format)),
            token_cache_seconds=float(e.get("SCHEDULER_TOKEN_CACHE_SECONDS", d.token_cache_seconds)),
            tier_limits=parse_limits(Path(e["SCHEDULER_LIMITS_FILE"]).read_text())
            if e.get("SCHEDULER_LIMITS_FILE") else d.tier_limits,
            security=ServiceSecurity.from_env(e),
            webhooks=WebhookSettings.from_env(e),
        )

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_seconds < self.lease_seconds:
            raise ValueError("SCHEDULER_HEARTBEAT_SECONDS must be above 0 and below SCHEDULER_LEASE_SECONDS")
        if self.max_attempts < 1:
            raise ValueError("SCHEDULER_MAX_ATTEMPTS must be at least 1")
        if self.output_retention_days < 0 or self.retention_sweep_seconds <= 0:
            raise ValueError("SCHEDULER_OUTPUT_RETENTION_DAYS must be >= 0 and SCHEDULER_RETENTION_SWEEP_SECONDS > 0")
        if self.token_cache_seconds < 0:
            raise ValueError("SCHEDULER_TOKEN_CACHE_SECONDS must be >= 0")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("SCHEDULER_METRICS_PORT must be a port number (0 = off)")

    @property
    def bootstrap_path(self) -> Path | None:
        return Path(self.bootstrap_dir) if self.bootstrap_dir else None

    @property
    def webhook_key_path(self) -> Path | None:
        """SCHEDULER_WEBHOOK_KEY_FILE, else the development key beside the dev tokens; None = off."""
        if self.webhooks.key_file:
            return Path(self.webhooks.key_file)
        return self.bootstrap_path / "webhook-key" if self.bootstrap_path is not None else None
