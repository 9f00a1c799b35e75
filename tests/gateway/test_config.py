"""Settings from GATEWAY_* variables."""

from __future__ import annotations

import pytest

from services.gateway.config import GatewaySettings
from services.gateway.errors import InvalidSettings


def test_defaults() -> None:
    settings = GatewaySettings.from_env({})
    assert settings == GatewaySettings(
        host="127.0.0.1", port=8080, scheduler_address="127.0.0.1:50051", storage_address="127.0.0.1:50052",
        max_request_bytes=50 * 1024 * 1024, sse_keepalive_seconds=15.0,
    )


def test_every_variable_is_read() -> None:
    settings = GatewaySettings.from_env({
        "GATEWAY_HOST": "0.0.0.0", "GATEWAY_PORT": "9000", "GATEWAY_SCHEDULER": "sched:1",
        "GATEWAY_STORAGE": "store:2", "GATEWAY_MAX_REQUEST_BYTES": "1024", "GATEWAY_SSE_KEEPALIVE_SECONDS": "0.5",
    })
    assert (settings.host, settings.port, settings.scheduler_address, settings.storage_address,
            settings.max_request_bytes, settings.sse_keepalive_seconds) == ("0.0.0.0", 9000, "sched:1", "store:2",
                                                                            1024, 0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "http"), ("GATEWAY_PORT", "70000"), ("GATEWAY_MAX_REQUEST_BYTES", "0"),
        ("GATEWAY_SSE_KEEPALIVE_SECONDS", "0"), ("GATEWAY_SSE_KEEPALIVE_SECONDS", "nan"),
        ("GATEWAY_SSE_KEEPALIVE_SECONDS", "soon"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(InvalidSettings, match=name):
        GatewaySettings.from_env({name: value})


def test_settings_are_frozen() -> None:
    settings = GatewaySettings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
