"""Where webhooks may go: a pure policy over URLs and IP addresses.

An address is refused when it is in `deny_nets`; otherwise allowed when in `allow_nets`;
otherwise refused when it is not a public unicast address (loopback, private, carrier-grade
NAT, link-local, multicast, unspecified, reserved, documentation ranges: `not is_global`, or
multicast). An IPv6 address that carries an IPv4 one (v4-mapped ::ffff:a.b.c.d, 6to4 2002::/16,
NAT64 64:ff9b::/96) is judged by both. A URL must be https (http only with `allow_http`),
have a host and no user:password. A host name is judged by every address it resolves to,
at registration and again when connecting (sender.py), so DNS rebinding gains nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from services.scheduler.webhooks.errors import InvalidTarget, TargetDenied

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_CHARS = 2048
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_nets(raw: str) -> tuple[IPNetwork, ...]:
    """"127.0.0.0/8, ::1" -> networks (a bare address is a /32 or /128)."""
    try:
        return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in raw.split(",") if item.strip())
    except ValueError as err:
        raise ValueError(f"not a list of networks: {raw!r} ({err})") from None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # a name, or an IP literal without brackets
    port: int
    literal: IPAddress | None


@dataclass(frozen=True)
class TargetPolicy:
    allow_http: bool = False
    allow_nets: tuple[IPNetwork, ...] = ()
    deny_nets: tuple[IPNetwork, ...] = ()

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` is refused, or None when it is allowed."""
        candidates: list[IPAddress] = [ip]
        if (inner := embedded_ipv4(ip)) is not None:
            candidates.append(inner)
        for address in candidates:
            if any(address in net for net in self.deny_nets if net.version == address.version):
                return f"{address} is in a denied network"
        effective = candidates[-1]  # the IPv4 address an IPv6 one carries, if any
        if any(effective in net for net in self.allow_nets if net.version == effective.version):
            return None
        for address in candidates:
            if address.is_multicast or not address.is_global:
                return f"{address} is not a public address (loopback, private, link-local, multicast or reserved)"
        return None

    def check_addresses(self, host: str, addresses: Iterable[IPAddress], field: str = "url") -> None:
        """Raises TargetDenied unless every address is allowed (and there is one)."""
        found = list(addresses)
        if not found:
            raise TargetDenied(f"webhook host {host!r} has no address", field)
        for ip in found:
            if (why := self.refusal(ip)) is not None:
                raise TargetDenied(f"webhook target {host!r} is denied: {why}", field, address=str(ip))

    def check_url(self, url: str, field: str = "url") -> Target:
        """The URL's parts, after the checks that need no DNS (a literal IP is checked here)."""
        if not url or len(url) > MAX_URL_CHARS or "\x00" in url:
            raise InvalidTarget(f"{field} must be a URL of 1 to {MAX_URL_CHARS} characters", field)
        try:
            parts: SplitResult = urlsplit(url)
            port = parts.port
        except ValueError:
            raise InvalidTarget(f"{field} is not a valid URL", field) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidTarget(f"{field} must be an https URL", field)
        if scheme == "http" and not self.allow_http:
            raise TargetDenied(f"{field} must use https (plain http is not allowed here)", field)
        if parts.username is not None or parts.password is not None:
            raise InvalidTarget(f"{field} must not contain a user name or password", field)
        host = parts.hostname or ""
        if not host or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise InvalidTarget(f"{field} must be an absolute URL with a host", field)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self.check_addresses(host, [literal], field)
        return Target(scheme, host, port or (443 if scheme == "https" else 80), literal)
