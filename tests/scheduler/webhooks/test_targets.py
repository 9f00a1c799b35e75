"""Where webhooks may go: literal addresses of every denied kind, IPv4 inside IPv6, host names
that resolve to private addresses (at registration and at connect time), and the allow list."""

from __future__ import annotations

import ipaddress

import pytest

from services.scheduler.webhooks.errors import InvalidTarget, TargetDenied
from services.scheduler.webhooks.sender import PolicyResolver, Sender, check_target
from services.scheduler.webhooks.targets import TargetPolicy, parse_nets

DEFAULT = TargetPolicy()
TESTS = TargetPolicy(allow_http=True, allow_nets=parse_nets("127.0.0.0/8, ::1"))


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1",                          # loopback
    "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",  # private
    "100.64.0.1",                                              # carrier-grade NAT
    "fc00::1", "fd12:3456::1",                                 # unique local
    "169.254.169.254", "fe80::1",                              # link-local (cloud metadata)
    "224.0.0.1", "239.255.255.250", "ff02::1",                 # multicast
    "0.0.0.0", "::",                                           # unspecified
    "240.0.0.1", "255.255.255.255", "192.0.2.10",              # reserved, broadcast, documentation
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::a00:1", "2002:a00:1::1",                         # NAT64 and 6to4 of 10.0.0.1
])
def test_denied_by_default(address: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is not None
    with pytest.raises(TargetDenied) as caught:
        DEFAULT.check_url(f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook")
    assert caught.value.reason == "WEBHOOK_TARGET_DENIED"


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is None


def test_allow_list_and_deny_list() -> None:
    assert TESTS.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert TESTS.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None  # the IPv4 it carries is allowed
    assert TESTS.refusal(ipaddress.ip_address("10.0.0.1")) is not None  # allowing loopback is not allowing all
    both = TargetPolicy(allow_nets=parse_nets("10.0.0.0/8"), deny_nets=parse_nets("10.9.0.0/16, 8.8.8.8"))
    assert both.refusal(ipaddress.ip_address("10.1.0.1")) is None
    assert both.refusal(ipaddress.ip_address("10.9.0.1")) is not None  # deny wins
    assert both.refusal(ipaddress.ip_address("8.8.8.8")) is not None


@pytest.mark.parametrize(("url", "error"), [
    ("http://93.184.216.34/", TargetDenied),  # https required by default
    ("ftp://example.com/", InvalidTarget), ("https://", InvalidTarget), ("not a url", InvalidTarget),
    ("https://user:pw@example.com/", InvalidTarget), ("https://example.com:99999/", InvalidTarget),
    ("https://example.com/" + "a" * 2100, InvalidTarget), ("https://exa\x00mple.com/", InvalidTarget),
    ("https://example.com/a\nb", InvalidTarget), ("https://[::1/", InvalidTarget),
])
def test_malformed_or_plain_http_urls(url: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        DEFAULT.check_url(url)


async def test_a_name_resolving_to_loopback_is_denied_at_registration() -> None:
    with pytest.raises(TargetDenied) as caught:
        await check_target(DEFAULT, "https://localhost:8443/hook")
    assert "localhost" in caught.value.message
    await check_target(TESTS, "http://localhost:8443/hook")  # allowed where loopback is
    for unresolvable in ("https://no-such-host.invalid/hook", "https://" + "a" * 70 + ".example/",
                         "https://b\u00fccher\u200b.invalid/"):
        with pytest.raises(InvalidTarget):
            await check_target(DEFAULT, unresolvable)


async def test_the_resolver_refuses_denied_addresses_at_connect_time() -> None:
    with pytest.raises(OSError, match="denied"):
        await PolicyResolver(DEFAULT).resolve("localhost", 80)
    assert await PolicyResolver(TESTS).resolve("localhost", 80)
    # The sender re-checks every attempt: a name now resolving to loopback is never connected to.
    sender = Sender(TargetPolicy(allow_http=True), timeout_seconds=2)
    try:
        answer = await sender.post("http://localhost:9/hook", {}, b"{}")
        assert answer.status_code == 0 and answer.error.startswith("target denied"), answer
        answer = await sender.post("http://127.0.0.1:9/hook", {}, b"{}")
        assert answer.status_code == 0 and answer.error.startswith("target denied"), answer
    finally:
        await sender.close()
