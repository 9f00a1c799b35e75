"""A channel to the scheduler that follows whichever scheduler process is active.

`addresses` is one `host:port`, or a comma-separated list of them (an active scheduler and
its standbys, services/scheduler/standby.py). The channel keeps a connection to each and
sends every call to one whose gRPC health says SERVING: the `round_robin` policy with gRPC's
client-side health checking (service config `healthCheckConfig`). A standby reports
NOT_SERVING until it takes over, and health is a watched stream, so the channel switches
within a moment of the takeover without any code here. A server without the health service
counts as healthy (gRFC A17).

One address gets a plain channel, as before (`pick_first` reconnects when a call needs it;
`round_robin` only on its own backoff). On Kubernetes the chart gives one address, the
scheduler's Service, whose readiness probe is the same health check. A list of several
addresses must be IP literals (the `ipv4:`/`ipv6:` target schemes).
"""

from __future__ import annotations

import ipaddress
import json

import grpc

from services.common.grpc_server import CHANNEL_OPTIONS
from services.common.service_auth import PLAIN, ServiceSecurity

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})


def target(addresses: str) -> str:
    """The gRPC target for one address or a comma-separated list of IP:port."""
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if not parts:
        raise ValueError("no scheduler address")
    if len(parts) == 1:
        return parts[0]
    hosts = [p.rsplit(":", 1)[0].strip("[]") for p in parts]
    try:
        versions = {ipaddress.ip_address(h).version for h in hosts}
    except ValueError:
        raise ValueError(f"several scheduler addresses must be IP:port, not host names: {addresses}") from None
    if len(versions) != 1:
        raise ValueError(f"scheduler addresses mix IPv4 and IPv6: {addresses}")
    return f"ipv{versions.pop()}:" + ",".join(parts)


def failover_channel(addresses: str, security: ServiceSecurity = PLAIN) -> grpc.aio.Channel:
    """TLS when `security` has it; no service token: every scheduler call carries its caller's
    own credential (user, pool or runner token)."""
    resolved = target(addresses)
    if resolved == addresses.strip(", "):  # one address
        return security.channel(resolved, CHANNEL_OPTIONS, as_service=False)
    return security.channel(resolved, [*CHANNEL_OPTIONS, ("grpc.service_config", SERVICE_CONFIG)], as_service=False)
