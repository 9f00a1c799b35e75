"""Webhook errors, on the scheduler's tree (services.scheduler.errors).

    InvalidArgument ── TargetDenied (reason WEBHOOK_TARGET_DENIED), InvalidTarget (INVALID_WEBHOOK_URL)
    NotFound        ── WebhookNotFound (WEBHOOK_NOT_FOUND), DeliveryNotFound (WEBHOOK_DELIVERY_NOT_FOUND)
    Conflict        ── WebhooksDisabled (WEBHOOKS_DISABLED: no encryption key configured)
"""

from __future__ import annotations

from typing import Any

from services.scheduler.errors import Conflict, InvalidArgument, NotFound


class InvalidTarget(InvalidArgument):
    default_reason = "INVALID_WEBHOOK_URL"

    def __init__(self, message: str, field: str = "url") -> None:
        super().__init__(message, details=[{"field": field}])


class TargetDenied(InvalidArgument):
    """The URL is well formed but points where webhooks may not go (a denied address)."""

    default_reason = "WEBHOOK_TARGET_DENIED"

    def __init__(self, message: str, field: str = "url", **extra: Any) -> None:
        super().__init__(message, details=[{"field": field, **extra}])


class WebhookNotFound(NotFound):
    default_reason = "WEBHOOK_NOT_FOUND"

    def __init__(self, webhook_id: str) -> None:
        super().__init__("webhook not found", details=[{"id": webhook_id}])


class DeliveryNotFound(NotFound):
    default_reason = "WEBHOOK_DELIVERY_NOT_FOUND"

    def __init__(self, delivery_id: str) -> None:
        super().__init__("webhook delivery not found", details=[{"id": delivery_id}])


class WebhooksDisabled(Conflict):
    default_reason = "WEBHOOKS_DISABLED"

    def __init__(self) -> None:
        super().__init__("webhooks are not enabled on this server (no SCHEDULER_WEBHOOK_KEY_FILE)")
