"""Authorized scope, target specs and port specs.

A :class:`Scope` is the list of address ranges the user is authorized to touch. Every probe path checks it
*before* a socket is created, so a typo (``10.0.0.0/8`` for ``10.0.0.0/24``) or a host name that resolves
somewhere unexpected raises :class:`~fragileprobe.ScopeError` and nothing is sent.

Spec grammar (comma separated, whitespace ignored):

==========================  ===================================================
``127.0.1.5``               one IPv4 or IPv6 address
``127.0.1.0/24``            a CIDR block (usable hosts: IPv4 network/broadcast are skipped)
``127.0.1.5-40``            an IPv4 last-octet range, inclusive
``127.0.1.5-127.0.1.40``    an address range, inclusive, same family
``pump-3.ward.example``     a host name: resolved with ``getaddrinfo``, then checked against the scope
==========================  ===================================================

Ports: ``"21-23,8080"``, ints, iterables of either, and the named sets in :data:`PORT_SETS`.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from typing import TYPE_CHECKING

from fragileprobe import _validate
from fragileprobe._addresses import (
    HOSTNAME_RE,
    IPAddress,
    IPNetwork,
    canonical_address,
    canonical_host,
    canonical_network,
    parse_address,
    zone_of,
)
from fragileprobe._errors import ConfigError, ScopeError
from fragileprobe._numbers import is_ascii_decimal
from fragileprobe._ports import PORT_SETS, parse_ports
from fragileprobe._target import Target

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "LARGE_RANGE_HOSTS",
    "MAX_TARGET_HOSTS",
    "PORT_SETS",
    "Scope",
    "Target",
    "canonical_address",
    "canonical_host",
    "canonical_network",
    "parse_ports",
    "parse_targets",
]

# A /20 (4,096 addresses) is larger than any single clinical VLAN we have seen (those are /24 to /22), so
# anything bigger is far more likely a typo (/8 for /24, /16 for /26) than a plan. Bigger ranges need
# ``allow_large=True``, an explicit statement that the size is intended.
LARGE_RANGE_HOSTS = 4096

# Hard cap on how many addresses parse_targets will ever expand into a list, even with allow_large: a /16.
# It bounds memory (a list of 65,536 short strings is a few MB) and a scan of more hosts belongs in a tool
# built for it, not in a gentle prober.
MAX_TARGET_HOSTS = 65536

# The names these helpers had before they moved to _addresses (the CLI still imports them from here).
_HOSTNAME_RE = HOSTNAME_RE
_parse_address = parse_address
_zone = zone_of


def _scope_network(text: str) -> IPNetwork:
    """Parse one scope entry; an entry with host bits set is refused, naming the network it would mean.

    ``127.0.79.5/24`` is either a typo for ``127.0.79.5`` or for ``127.0.79.0/24``: guessing the larger one
    (as ``strict=False`` does) would authorize 255 hosts nobody named.
    """
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"scope entry {text!r} is not an address or CIDR block: {exc}") from exc
    if "/" in text:
        given = ipaddress.ip_address(text.partition("/")[0].strip())
        if int(given) != int(net.network_address):
            raise ConfigError(
                f"scope entry {text!r} has host bits set: it would mean the network {net.with_prefixlen}; "
                f"write {net.with_prefixlen} for the whole block, or {given} for the one address"
            )
    return canonical_network(net)


def _resolve(name: str) -> list[IPAddress]:
    """Resolve a host name to its addresses (getaddrinfo order, duplicates removed)."""
    if not _HOSTNAME_RE.match(name):
        raise ConfigError(f"target {name!r} is neither an IP address, a range nor a valid host name")
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"host name {name!r} does not resolve: {exc}") from exc
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = _parse_address(str(sockaddr[0]).split("%", 1)[0])
        if addr is not None:
            seen[addr] = None
    if not seen:
        raise ConfigError(f"host name {name!r} resolved to no usable address")
    return list(seen)


# Networks a Scope names in its str() (and so in a ScopeError message) before "... (N more)".
_STR_MAX_NETWORKS = 8


class Scope:
    """The address ranges the user is authorized to probe.

    Args:
        ranges: CIDR blocks and single addresses (IPv4 or IPv6), as one comma-separated string or an
            iterable of strings.
        allow_large: permit a range of more than :data:`LARGE_RANGE_HOSTS` addresses.

    Raises:
        ConfigError: the scope is empty, a range is malformed, or a range is large without ``allow_large``.
    """

    __slots__ = ("_index", "_networks")

    def __init__(self, ranges: str | Iterable[str], *, allow_large: bool = False) -> None:
        items = ranges.split(",") if isinstance(ranges, str) else list(ranges)
        networks: list[IPNetwork] = []
        for raw in items:
            if not isinstance(raw, str):
                raise ConfigError(f"scope entry {raw!r} must be a string like '127.0.1.0/24'")
            text = raw.strip()
            if not text:
                continue
            net = _scope_network(text)
            if net.num_addresses > LARGE_RANGE_HOSTS and not allow_large:
                raise ConfigError(
                    f"scope entry {text!r} covers {net.num_addresses} addresses, more than "
                    f"{LARGE_RANGE_HOSTS}; pass allow_large=True if that is really authorized"
                )
            networks.append(net)
        if not networks:
            raise ConfigError("scope is empty: give at least one authorized address or CIDR block")
        self._networks: tuple[IPNetwork, ...] = tuple(networks)
        # Per IP version: merged [first, last] address intervals, sorted, for a bisect lookup. A scope listing
        # thousands of single addresses (an asset list) is then checked in O(log n) per host, not O(n):
        # checking 5,000 targets against 5,000 entries took 5 s, 65,536 would take 15 minutes.
        # The key is (IP version, IPv6 zone id): a zone is part of an address's identity, so fe80::1%eth0 in
        # the scope never authorizes fe80::1%eth1 (another interface's neighbour) nor a zoneless fe80::1.
        index: dict[tuple[int, str | None], tuple[list[int], list[int]]] = {}
        keys = {(n.version, _zone(n.network_address)) for n in networks}
        for key in keys:
            spans = sorted(
                (int(n.network_address), int(n.broadcast_address))
                for n in networks
                if (n.version, _zone(n.network_address)) == key
            )
            starts: list[int] = []
            ends: list[int] = []
            for first, last in spans:
                if ends and first <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], last)
                else:
                    starts.append(first)
                    ends.append(last)
            index[key] = (starts, ends)
        self._index = index

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        """The authorized networks, in the order given."""
        return self._networks

    def _contains_address(self, addr: IPAddress) -> bool:
        starts, ends = self._index.get((addr.version, _zone(addr)), ([], []))
        value = int(addr)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def __contains__(self, host: object) -> bool:
        """True if ``host`` (an IP address string) is inside the scope; never raises, never resolves."""
        if not isinstance(host, str):
            return False
        addr = _parse_address(host.strip())
        return addr is not None and self._contains_address(addr)

    def check(self, host: str) -> str:
        """Return the address to connect to for ``host``, or raise if it is outside the scope.

        IP literals are checked directly; a host name is resolved and the first resolved address that lies
        inside the scope is returned (the caller connects to that address only, never to the name).

        Raises:
            ScopeError: the address (or every resolved address) lies outside the scope. Nothing was sent.
            ConfigError: ``host`` is neither an address nor a resolvable host name.
        """
        if not isinstance(host, str) or not host.strip():
            raise _validate.fail("host", "a non-empty string", host)
        text = host.strip()
        addr = _parse_address(text)
        candidates = [addr] if addr is not None else _resolve(text)
        for candidate in candidates:
            if self._contains_address(candidate):
                return str(candidate)
        shown = ", ".join(str(c) for c in candidates)
        what = text if addr is not None else f"{text} ({shown})"
        raise ScopeError(f"target {what} is outside the authorized scope {self}; nothing was sent")

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self._networks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and other._networks == self._networks

    def __hash__(self) -> int:
        return hash(self._networks)

    def __str__(self) -> str:
        # Shown in every ScopeError: a scope of thousands of entries must not make a 100 KB message.
        shown = ", ".join(str(n) for n in self._networks[:_STR_MAX_NETWORKS])
        more = len(self._networks) - _STR_MAX_NETWORKS
        return "[" + shown + (f", ... ({more} more)" if more > 0 else "") + "]"

    def __repr__(self) -> str:
        return f"Scope({[str(n) for n in self._networks]!r})"


def _is_range(text: str) -> bool:
    """``a-b`` where ``a`` is an address (host names may contain dashes, so the left side decides)."""
    left, sep, _ = text.partition("-")
    return bool(sep) and _parse_address(text) is None and _parse_address(left.strip()) is not None


def _size_check(text: str, count: int, *, allow_large: bool, budget: int) -> None:
    """Refuse an item of ``count`` addresses above the large-range opt-in or the remaining budget."""
    if count > LARGE_RANGE_HOSTS and not allow_large:
        raise ConfigError(
            f"target range {text!r} has {count} addresses, more than {LARGE_RANGE_HOSTS}; "
            "pass allow_large=True if that is intended"
        )
    if count > budget:
        raise ConfigError(f"target spec expands to more than max_hosts addresses at {text!r}")


def _cidr_hosts(text: str, *, allow_large: bool, budget: int) -> list[IPAddress]:
    """The usable hosts of a CIDR item (IPv4 network/broadcast skipped; a /32 or /128 is its address)."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"target {text!r} is not a valid CIDR block: {exc}") from exc
    _size_check(text, net.num_addresses, allow_large=allow_large, budget=budget)
    return list(net.hosts()) if net.num_addresses > 1 else [net.network_address]


def _range_end(text: str, start: IPAddress, end_text: str) -> IPAddress:
    """The last address of ``start-end_text``: an IPv4 last octet, or an address of the same family."""
    if is_ascii_decimal(end_text) and isinstance(start, ipaddress.IPv4Address):
        last = int(end_text)
        if last > 255:
            raise ConfigError(f"target range {text!r}: last octet {last} is above 255")
        return ipaddress.IPv4Address((int(start) & 0xFFFFFF00) | last)
    end = _parse_address(end_text)
    if end is None:
        raise ConfigError(f"target range {text!r}: {end_text!r} is not an IP address or octet")
    if end.version != start.version:
        raise ConfigError(f"target range {text!r} mixes IPv4 and IPv6")
    return end


def _range_hosts(text: str, *, allow_large: bool, budget: int) -> list[IPAddress]:
    """Every address of an inclusive range item (``a-b``), refused when reversed or too large."""
    start_text, _, end_text = text.partition("-")
    start = _parse_address(start_text.strip())
    if start is None:  # unreachable: _is_range parsed it; kept for the type checker
        raise ConfigError(f"target range {text!r}: {start_text!r} is not an IP address")
    end = _range_end(text, start, end_text.strip())
    if int(end) < int(start):
        raise ConfigError(f"target range {text!r} is reversed (ends before it starts)")
    _size_check(text, int(end) - int(start) + 1, allow_large=allow_large, budget=budget)
    cls = type(start)
    return [cls(i) for i in range(int(start), int(end) + 1)]


def _expand_item(text: str, *, allow_large: bool, budget: int) -> list[IPAddress]:
    """Expand one target item into addresses, refusing sizes above the limits before expanding."""
    if "/" in text:
        return _cidr_hosts(text, allow_large=allow_large, budget=budget)
    if _is_range(text):
        return _range_hosts(text, allow_large=allow_large, budget=budget)
    addr = _parse_address(text)
    return [addr] if addr is not None else _resolve(text)


def _spec_items(spec: str | Iterable[str]) -> list[str]:
    """The comma-separated items of a target spec, as written (not yet stripped)."""
    if isinstance(spec, str):
        return spec.split(",")
    items: list[str] = []
    for element in spec:
        if not isinstance(element, str):
            raise ConfigError(f"target {element!r} must be a string")
        items.extend(element.split(","))
    return items


def _item_addresses(text: str, *, scope: Scope | None, allow_large: bool, budget: int) -> list[str]:
    """The canonical address strings one target item stands for, each checked against ``scope``."""
    is_name = "/" not in text and not _is_range(text) and _parse_address(text) is None
    if is_name and scope is not None:
        # A name means one host: the scope picks which of its addresses we may use.
        addrs: list[IPAddress] = [ipaddress.ip_address(scope.check(text))]
    else:
        addrs = _expand_item(text, allow_large=allow_large, budget=budget)
        if is_name:
            addrs = addrs[:1]
    out = [str(canonical_address(addr)) for addr in addrs]  # one device, one entry: ::ffff:a.b.c.d is a.b.c.d
    for address in out:
        if scope is not None and address not in scope:
            raise ScopeError(
                f"target {address} (from {text!r}) is outside the authorized scope {scope}; nothing was sent"
            )
    return out


def parse_targets(
    spec: str | Iterable[str],
    *,
    scope: Scope | None = None,
    max_hosts: int = MAX_TARGET_HOSTS,
    allow_large: bool = False,
) -> list[str]:
    """Expand a target spec into a list of IP address strings (order kept, duplicates removed).

    A host name becomes one address: the first resolved address inside ``scope`` (or simply the first one
    when no scope is given).

    Args:
        spec: a comma-separated string (see the module docstring) or an iterable of such strings.
        scope: when given, every address must lie inside it.
        max_hosts: refuse specs that expand to more addresses than this (memory bound).
        allow_large: permit single ranges of more than :data:`LARGE_RANGE_HOSTS` addresses.

    Raises:
        ConfigError: malformed, empty, reversed or oversized specs (the message names the item).
        ScopeError: an address lies outside ``scope``; nothing was sent.
    """
    _validate.positive_int("max_hosts", max_hosts)
    items = _spec_items(spec)
    out: dict[str, None] = {}
    for raw in items:
        text = raw.strip()
        if not text:
            if len(items) > 1:
                raise ConfigError(f"empty item in target spec {spec!r} (stray comma?)")
            continue
        budget = max_hosts - len(out)
        out.update(dict.fromkeys(_item_addresses(text, scope=scope, allow_large=allow_large, budget=budget)))
        if len(out) > max_hosts:
            raise ConfigError(f"target spec expands to more than max_hosts={max_hosts} addresses")
    if not out:
        raise ConfigError("target spec is empty: give at least one address, range or host name")
    return list(out)
