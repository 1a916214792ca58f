"""Which hosts the service may connect to on a caller's behalf (SSRF): a URL's host is
resolved once and every address it resolves to must be public, unless private targets are
allowed. Webhooks use it for `callback_url`; a provider's `base_url` can use the same rule.

IPv6 addresses that carry an IPv4 address are judged by that IPv4 address: IPv4-mapped
(`::ffff:a.b.c.d`), 6to4 (`2002::/16`) and NAT64 (`64:ff9b::/96`, RFC 6052), so that
`64:ff9b::7f00:1` is refused like 127.0.0.1 while `64:ff9b::808:808` passes like 8.8.8.8."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from aiintegration.errors import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: the IPv4 address sits where the operator's translator
# puts it, so it cannot be read back; treated as private.
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, well-known NAT64)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, shared (CGNAT),
    multicast, reserved or unspecified, judged by the embedded IPv4 address if there is one."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return is_public(inner)
    if ip in NAT64_LOCAL_USE:
        return False
    # Python 3.11 counts multicast and most of ::/8 (IPv4-compatible, ...) as global.
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def parse_address(text: str) -> IPAddress:
    """An address as getaddrinfo returns it (an IPv6 zone `%eth0` is dropped)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def public_addresses(url: str, *, allow_private: bool, field: str = "url", setting: str = "") -> list[str]:
    """The addresses `url`'s host resolves to, each checked. Raises ValidationError (details
    under `field`) for a URL that cannot be parsed, is not http(s) or has a bad port, and, unless
    `allow_private`, for a host with any non-public address (`setting` names the variable
    that allows them). Raises OSError when the name does not resolve.

    A caller connects to one of these addresses and never resolves the name again, so a DNS
    answer that changes between check and connect (rebinding) cannot steer it inside."""
    try:
        parsed = urlparse(url)
    except ValueError as exc:  # an unbalanced or invalid bracketed host: `http://[::1`, `http://[zz]/`
        raise ValidationError(f"{field} has an invalid host", details={field: "not a valid URL host"}) from exc
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError(f"{field} must be an http(s) URL", details={field: url})
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as exc:  # a port out of range or not a number
        raise ValidationError(f"{field} has an invalid port", details={field: url}) from exc
    try:
        infos = socket.getaddrinfo(parsed.hostname, port, proto=socket.IPPROTO_TCP)
    except ValueError as exc:  # a name IDNA cannot encode, a NUL byte
        raise ValidationError(f"{field} has an invalid host name", details={field: url}) from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if not allow_private and not is_public(parse_address(address)):
            hint = f" (set {setting} to allow)" if setting else ""
            raise ValidationError(f"{field} points at a private or loopback address",
                                  details={field: f"refused{hint}"})
        if address not in addresses:
            addresses.append(address)
    return addresses
