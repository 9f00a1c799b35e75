"""The SDK's exceptions: one per kind of API answer, each carrying the API's error body.

    ComfyfleetError                    anything this SDK raises
    ├── TransportError                 no HTTP answer (refused, reset, timed out)
    ├── WatchError                     a watch could not resume after repeated failures
    └── APIError                       an HTTP error answer: status, message, reason, details
        ├── BadRequestError            400
        ├── AuthenticationError        401
        ├── PermissionDeniedError      403 (a tier limit or a permission)
        ├── NotFoundError              404 (absent, or not yours)
        ├── ConflictError              409
        ├── RequestTooLargeError       413
        ├── RateLimitError             429 (retry_after)
        ├── ServiceUnavailableError    503 (retry_after)
        └── ServerError                any other 5xx

    >>> try:
    ...     client.workflows.get("00000000-0000-0000-0000-000000000000")
    ... except NotFoundError as err:
    ...     print(err.status, err.reason, err.message)
    404 NOT_FOUND workflow not found
"""

from __future__ import annotations

from typing import Any

import httpx


class ComfyfleetError(Exception):
    """Base of every error this SDK raises."""


class TransportError(ComfyfleetError):
    """The request got no HTTP answer (connection refused or reset, timeout)."""


class WatchError(ComfyfleetError):
    """A watch failed to reconnect too many times in a row."""


class APIError(ComfyfleetError):
    """An HTTP error answer, with the API's error body.

    `status` (HTTP status), `message` (for people), `reason` (a stable machine code),
    `details` (what exactly failed, possibly empty), `body` (the whole decoded body),
    `retry_after` (seconds, from the Retry-After header, when present).
    """

    def __init__(self, status: int, message: str, reason: str = "", details: list[Any] | None = None,
                 body: Any = None, retry_after: float | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.message = message
        self.reason = reason
        self.details: list[Any] = list(details or [])
        self.body = body
        self.retry_after = retry_after
        self.request_id = request_id


class BadRequestError(APIError):
    """400: the request is not acceptable (a field, a placeholder, a tag...)."""


class AuthenticationError(APIError):
    """401: the token is missing, unknown or expired."""


class PermissionDeniedError(APIError):
    """403: a tier limit or a permission."""


class NotFoundError(APIError):
    """404: absent, or not yours."""


class ConflictError(APIError):
    """409: the resource is in a state that does not allow this."""


class RequestTooLargeError(APIError):
    """413: the request is over the size limit."""


class RateLimitError(APIError):
    """429: too many requests; `retry_after` says when to come back."""


class ServiceUnavailableError(APIError):
    """503: a dependency of the API is down; `retry_after` says when to come back."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds form only), or None."""
    raw = response.headers.get("retry-after", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def from_response(response: httpx.Response) -> APIError:
    """The typed error for an error answer; the body must already be read."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message, reason = "", ""
    details: Any = []
    if isinstance(body, dict):
        message = str(body.get("message") or "")
        reason = str(body.get("reason") or "")
        details = body.get("details") or []
    if not message:
        message = (body if isinstance(body, str) and body else None) or response.reason_phrase or "error"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, message, reason, details if isinstance(details, list) else [details], body,
               retry_after_seconds(response), response.headers.get("x-request-id"))
