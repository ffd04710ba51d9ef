"""The SSRF guard for webhook URLs: a tenant must not make llmq POST into our own network.

A URL is refused when its host is, or resolves to, a loopback, private, link-local, CGNAT
(100.64/10), multicast, reserved or unspecified address — IPv4-mapped IPv6 included. It is checked
at submit (a 422) and again at send time, and the sender connects to the very address that was
checked, so a DNS answer that changes in between (rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedDestination(ValueError):
    """The URL points at an address llmq refuses to send to."""


def is_forbidden(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return is_forbidden(ip.ipv4_mapped)
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return True
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve_checked(host: str, port: int) -> IPAddress:
    """Resolve ``host`` and return an address to connect to; refuse if ANY answer is forbidden."""
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise BlockedDestination(f"{host} does not resolve")
    for address in addresses:
        if is_forbidden(address):
            raise BlockedDestination(f"{host} resolves to a non-public address ({address})")
    return addresses[0]


def check_at_submit(url: str) -> None:
    """Refuse a URL whose host is or resolves to a forbidden address. A host that does not
    resolve now is accepted: it is checked again when the event is sent."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        resolve_checked(host, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror:
        return


@dataclass(frozen=True)
class PinnedRequest:
    """Where to connect (the checked address) and what to say (the original host)."""

    url: str
    host_header: str
    sni_hostname: str | None


def pin(url: str) -> PinnedRequest:
    """Resolve and check ``url`` now, and rewrite it to the checked address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_checked(host, port)
    netloc_host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{netloc_host}:{parts.port}" if parts.port else netloc_host
    host_header = f"{host}:{parts.port}" if parts.port else host
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return PinnedRequest(pinned, host_header, host if parts.scheme == "https" else None)
