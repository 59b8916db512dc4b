"""The one identity of a device's address, and what counts as a host name.

Pure functions, no I/O: nothing here resolves a name (:mod:`fragileprobe._scope` does that, after checking
the name's syntax with :func:`is_host_name`). Everything that names a host (scope checks, target lists,
per-host limiters, the inventory and the store) uses :func:`canonical_address`, so one device is never
counted as two.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TypeAlias

__all__ = [
    "HOSTNAME_RE",
    "IPAddress",
    "IPNetwork",
    "canonical_address",
    "canonical_host",
    "canonical_network",
    "is_host_name",
    "parse_address",
    "zone_of",
]

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# Host names: RFC 1123 labels. Checked before resolving so junk never reaches the resolver. A name whose
# last label is a number ("127.0.0.300", "10.1", "2130706433", "0x7f.1") is a malformed or legacy-form
# address, not a host name (RFC 1123 2.1, RFC 3696 2: top-level labels are never all-numeric): the resolver
# would either send it to DNS or read it the inet_aton way as some other address.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NUMERIC_LAST_LABEL = r"(?!(?:.*\.)?(?:[0-9]+|0[xX][0-9A-Fa-f]*)\.?$)"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_NUMERIC_LAST_LABEL}{_LABEL}(\.{_LABEL})*\.?$")

# IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2): ::ffff:a.b.c.d is the IPv4 host a.b.c.d, reached through a
# dual-stack socket. Written either way it is one device, so it gets one identity.
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")


def canonical_address(addr: IPAddress) -> IPAddress:
    """The one identity of an address: an IPv4-mapped IPv6 address is its IPv4 address.

    An IPv6 zone id (``fe80::1%eth0``) is kept: the same link-local address on another interface is another
    device (RFC 4007 6). Everything that names a host (scope checks, target lists, per-host limiters, the
    inventory and the store) uses this form, so one device is never counted as two.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
    return addr


def parse_address(text: str) -> IPAddress | None:
    """An address in its canonical form (see :func:`canonical_address`), or None."""
    try:
        return canonical_address(ipaddress.ip_address(text))
    except ValueError:
        return None


def canonical_host(host: str) -> str:
    """:func:`canonical_address` of an address string (other text, such as a host name, is only stripped)."""
    text = host.strip()
    addr = parse_address(text)
    return text if addr is None else str(addr)


def canonical_network(net: IPNetwork) -> IPNetwork:
    """A block inside ::ffff:0:0/96 is the IPv4 block it maps (its hosts are IPv4 hosts); others unchanged."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_V4):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def zone_of(addr: IPAddress) -> str | None:
    """The IPv6 zone id of ``addr`` (``eth0`` in ``fe80::1%eth0``), None for IPv4 or no zone."""
    return addr.scope_id if isinstance(addr, ipaddress.IPv6Address) else None


def is_host_name(text: str) -> bool:
    """True when ``text`` is a syntactically valid host name (RFC 1123), never an address in legacy form."""
    return HOSTNAME_RE.match(text) is not None
