"""Errors of the storage service: subclasses of the shared tree in services.common.errors.

    ComfyfleetError
    ├── InvalidArgument
    │   ├── InvalidKey              KEY_INVALID            a key or prefix breaks the key rules
    │   └── RangeNotSatisfiable     RANGE_NOT_SATISFIABLE  a read starts past the object's end
    ├── PermissionDenied
    │   ├── UrlSignatureInvalid     URL_SIGNATURE_INVALID  a download URL was not made by us
    │   └── UrlExpired              URL_EXPIRED            a download URL is past its expiry
    ├── NotFound
    │   └── ObjectNotFound          OBJECT_NOT_FOUND
    ├── Conflict
    │   └── KeyConflict             KEY_CONFLICT           local backend: a key that is also a prefix
    ├── TooLarge
    │   └── ObjectTooLarge          OBJECT_TOO_LARGE       more bytes than max_size_bytes
    ├── Unavailable
    │   └── StorageFull             STORAGE_FULL           the disk or quota is full
    └── SettingsError               INVALID_SETTINGS       raised at start only, never over gRPC

The reasons are stable: the gateway maps them to HTTP (e.g. RANGE_NOT_SATISFIABLE -> 416).
"""

from __future__ import annotations

from services.common.errors import (
    ComfyfleetError,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unavailable,
)


class InvalidKey(InvalidArgument):
    default_reason = "KEY_INVALID"


class RangeNotSatisfiable(InvalidArgument):
    default_reason = "RANGE_NOT_SATISFIABLE"


class UrlSignatureInvalid(PermissionDenied):
    default_reason = "URL_SIGNATURE_INVALID"


class UrlExpired(PermissionDenied):
    default_reason = "URL_EXPIRED"


class ObjectNotFound(NotFound):
    default_reason = "OBJECT_NOT_FOUND"


class KeyConflict(Conflict):
    default_reason = "KEY_CONFLICT"


class ObjectTooLarge(TooLarge):
    default_reason = "OBJECT_TOO_LARGE"


class StorageFull(Unavailable):
    default_reason = "STORAGE_FULL"


class SettingsError(ComfyfleetError):
    """The service cannot start with these settings; the message says which and why."""

    default_reason = "INVALID_SETTINGS"
