"""The SSRF guard's address rules and the pinning of a URL to the address that was checked."""

from __future__ import annotations

import ipaddress

import pytest

from llmq.webhooks.ssrf import BlockedDestination, check_at_submit, is_forbidden, pin


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses(address: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/x", "http://[::ffff:10.0.0.1]:8080/x", "https://100.64.3.4/"]
)
def test_literal_private_urls_are_refused(url: str) -> None:
    with pytest.raises(BlockedDestination):
        check_at_submit(url)
    with pytest.raises(BlockedDestination):
        pin(url)


def test_localhost_is_refused_through_dns() -> None:
    with pytest.raises(BlockedDestination):
        check_at_submit("http://localhost:8000/hook")


def test_pin_keeps_the_host_header_and_sni() -> None:
    pinned = pin("https://93.184.215.14:8443/hooks/a?b=c")
    assert pinned.url == "https://93.184.215.14:8443/hooks/a?b=c"
    assert pinned.host_header == "93.184.215.14:8443"
    pinned6 = pin("http://[2606:4700:4700::1111]/x")
    assert pinned6.url == "http://[2606:4700:4700::1111]/x" and pinned6.sni_hostname is None


def test_unresolvable_host_is_left_for_the_send_time_check() -> None:
    check_at_submit("https://no-such-host.invalid/hook")
