"""Webhook settings, part of the scheduler's Settings (config.py reads them from the environment).

    SCHEDULER_WEBHOOK_KEY_FILE        the key that encrypts endpoint secrets (sealing.py);
                                      default <bootstrap_dir>/webhook-key, made when missing;
                                      webhooks are off without either
    SCHEDULER_WEBHOOK_ALLOW_HTTP      1 = plain http targets allowed (default: https only)
    SCHEDULER_WEBHOOK_ALLOW_NETS      comma-separated networks allowed despite the default
                                      denials (e.g. "127.0.0.0/8,::1" in tests)
    SCHEDULER_WEBHOOK_DENY_NETS       networks denied on top of the defaults (targets.py)
    SCHEDULER_WEBHOOK_TIMEOUT_SECONDS one attempt's limit (default 10)
    SCHEDULER_WEBHOOK_RETRY           "base,cap,window,jitter" seconds/fraction
                                      (default "5,3600,86400,1": full jitter for 24 h)
    SCHEDULER_WEBHOOK_CONCURRENCY     attempts in flight at once (default 32)
    SCHEDULER_WEBHOOK_LOG_DAYS        finished deliveries are kept this long (default 30; 0 = forever)
    SCHEDULER_WEBHOOK_SWEEP_SECONDS   how often every tailed user is looked at unprompted (default 5)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.scheduler.webhooks.backoff import RetryPolicy
from services.scheduler.webhooks.targets import TargetPolicy, parse_nets


@dataclass(frozen=True)
class WebhookSettings:
    key_file: str = ""
    targets: TargetPolicy = field(default_factory=TargetPolicy)
    timeout_seconds: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 32
    # How often the dispatcher looks at every tailed user without a notification.
    sweep_seconds: float = 5.0
    log_days: float = 30.0

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0 or self.concurrency < 1 or self.sweep_seconds <= 0 or self.log_days < 0:
            raise ValueError("SCHEDULER_WEBHOOK_TIMEOUT_SECONDS, _CONCURRENCY and _SWEEP_SECONDS must be above 0, "
                             "_LOG_DAYS at least 0")

    @classmethod
    def from_env(cls, e: Mapping[str, str]) -> WebhookSettings:
        d = cls()
        retry = d.retry
        if raw := e.get("SCHEDULER_WEBHOOK_RETRY"):
            try:
                base, cap, window, jitter = (float(x) for x in raw.split(","))
            except ValueError:
                raise ValueError("SCHEDULER_WEBHOOK_RETRY must be 'base,cap,window,jitter'") from None
            retry = RetryPolicy(base, cap, window, jitter)
        return cls(
            key_file=e.get("SCHEDULER_WEBHOOK_KEY_FILE", d.key_file),
            targets=TargetPolicy(
                allow_http=e.get("SCHEDULER_WEBHOOK_ALLOW_HTTP", "0").lower() in ("1", "true", "yes"),
                allow_nets=parse_nets(e.get("SCHEDULER_WEBHOOK_ALLOW_NETS", "")),
                deny_nets=parse_nets(e.get("SCHEDULER_WEBHOOK_DENY_NETS", "")),
            ),
            timeout_seconds=float(e.get("SCHEDULER_WEBHOOK_TIMEOUT_SECONDS", d.timeout_seconds)),
            retry=retry,
            concurrency=int(e.get("SCHEDULER_WEBHOOK_CONCURRENCY", d.concurrency)),
            sweep_seconds=float(e.get("SCHEDULER_WEBHOOK_SWEEP_SECONDS", d.sweep_seconds)),
            log_days=float(e.get("SCHEDULER_WEBHOOK_LOG_DAYS", d.log_days)),
        )
