"""The runner's exceptions.

    ComfyfleetError (services.common.errors)
    └── RunnerError                   base of this package
        ├── ConfigError               bad flags or environment; the process exits
        ├── ComfyUIError              ComfyUI answered something we cannot use
        │   ├── ComfyUIUnreachable    connection refused, reset or timed out
        │   ├── ComfyUIRejected       400 from POST /prompt (validation); carries the body
        │   └── ComfyUIServerError    any other non-2xx; carries the status and text
        ├── StorageError              the storage service failed a put or a get
        └── InvalidAssignment         the scheduler sent something we cannot run

`ComfyUIUnreachable` is the only one worth retrying: it says nothing about the prompt.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import ComfyfleetError


class RunnerError(ComfyfleetError):
    """Base of every runner error."""

    default_reason = "RUNNER_ERROR"


class ConfigError(RunnerError):
    """A flag or environment variable is missing or malformed."""

    default_reason = "RUNNER_CONFIG"


class ComfyUIError(RunnerError):
    """ComfyUI did not do what was asked."""

    default_reason = "COMFYUI_ERROR"


class ComfyUIUnreachable(ComfyUIError):
    """No answer from ComfyUI: refused, reset, or timed out.

    `connect_failed` is True when no connection was made at all (refused, no route): the
    request certainly did not reach ComfyUI, so e.g. a prompt was certainly not queued."""

    default_reason = "COMFYUI_UNREACHABLE"

    def __init__(self, message: str, *, connect_failed: bool = False) -> None:
        super().__init__(message)
        self.connect_failed = connect_failed


class ComfyUIRejected(ComfyUIError):
    """POST /prompt answered 400: the prompt failed validation."""

    default_reason = "COMFYUI_REJECTED"

    def __init__(self, message: str, *, body: dict[str, Any]) -> None:
        super().__init__(message)
        self.body = body


class ComfyUIServerError(ComfyUIError):
    """ComfyUI answered with an unexpected status (e.g. its plain-text 500)."""

    default_reason = "COMFYUI_SERVER_ERROR"

    def __init__(self, message: str, *, status: int, text: str) -> None:
        super().__init__(message)
        self.status = status
        self.text = text


class StorageError(RunnerError):
    """The storage service failed a put or a get."""

    default_reason = "STORAGE_ERROR"


class InvalidAssignment(RunnerError):
    """The assignment cannot be run as sent (e.g. prompt_json is not a JSON object)."""

    default_reason = "INVALID_ASSIGNMENT"
