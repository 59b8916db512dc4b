"""Scope, Target, parse_targets and parse_ports: authorized ranges and spec parsing (pure, no sockets)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import (
    PORT_SETS,
    ConfigError,
    HttpHeartbeat,
    Scope,
    ScopeError,
    Target,
    TcpHeartbeat,
    parse_ports,
    parse_targets,
)
from fragileprobe._scope import LARGE_RANGE_HOSTS

# --- Scope ----------------------------------------------------------------------------------------------


def test_scope_contains_cidrs_and_single_addresses() -> None:
    scope = Scope(["127.0.1.0/24", "127.0.2.5", "::1"])
    assert "127.0.1.77" in scope
    assert "127.0.2.5" in scope
    assert "::1" in scope
    assert "127.0.2.6" not in scope
    assert "127.0.0.1" not in scope


def test_scope_accepts_a_comma_separated_string() -> None:
    scope = Scope("127.0.1.0/30, 127.0.9.9")
    assert "127.0.1.2" in scope
    assert "127.0.9.9" in scope


def test_contains_never_raises_and_never_resolves() -> None:
    scope = Scope(["127.0.0.0/8"], allow_large=True)
    assert "localhost" not in scope  # a name is not an address: membership needs check()
    assert "junk!" not in scope
    assert 5 not in scope


def test_check_returns_the_address() -> None:
    assert Scope(["127.0.1.0/24"]).check(" 127.0.1.9 ") == "127.0.1.9"


def test_check_outside_scope_raises_scope_error_naming_host_and_scope() -> None:
    with pytest.raises(ScopeError) as info:
        Scope(["127.0.1.0/24"]).check("127.0.2.1")
    assert "127.0.2.1" in str(info.value)
    assert "127.0.1.0/24" in str(info.value)
    assert "nothing was sent" in str(info.value)


def test_scope_error_is_a_config_error() -> None:
    assert issubclass(ScopeError, ConfigError)


def test_check_resolves_host_names_then_checks_them() -> None:
    assert Scope(["127.0.0.0/8"], allow_large=True).check("localhost") == "127.0.0.1"
    with pytest.raises(ScopeError, match="localhost"):
        Scope(["127.0.1.0/24"]).check("localhost")


def test_check_rejects_junk_host_names() -> None:
    with pytest.raises(ConfigError, match=r"not a valid host name|neither"):
        Scope(["127.0.0.0/8"], allow_large=True).check("bad host!")


@pytest.mark.parametrize("ranges", [[], "", " , ", ["  "]])
def test_empty_scope_is_a_config_error(ranges: object) -> None:
    with pytest.raises(ConfigError, match="empty"):
        Scope(ranges)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["127.0.1.0/33", "300.1.1.1", "127.0.1.0/24/1", "hello"])
def test_malformed_scope_entries_name_the_entry(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scope([bad])
    assert bad in str(info.value)


def test_large_scope_needs_allow_large() -> None:
    with pytest.raises(ConfigError, match="allow_large"):
        Scope(["10.0.0.0/8"])
    assert "10.1.2.3" in Scope(["10.0.0.0/8"], allow_large=True)


def test_scope_repr_and_equality() -> None:
    assert repr(Scope(["127.0.1.0/24"])) == "Scope(['127.0.1.0/24'])"
    assert Scope(["127.0.1.0/24"]) == Scope("127.0.1.0/24")


def _as_int(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


@given(
    base=st.integers(min_value=0, max_value=2**32 - 1),
    prefix=st.integers(min_value=20, max_value=32),
    probe=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_scope_membership_matches_integer_arithmetic(base: int, prefix: int, probe: int) -> None:
    """Property: ``addr in Scope([net])`` iff the address shares the network's prefix bits."""
    net = ipaddress.IPv4Network((base, prefix), strict=False)
    scope = Scope([str(net)])
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    expected = (probe & mask) == (int(net.network_address) & mask)
    addr = str(ipaddress.IPv4Address(probe))
    assert (addr in scope) is expected
    if expected:
        assert scope.check(addr) == addr
    else:
        with pytest.raises(ScopeError):
            scope.check(addr)


# --- parse_targets --------------------------------------------------------------------------------------


def test_parse_targets_forms() -> None:
    assert parse_targets("127.0.1.5") == ["127.0.1.5"]
    assert parse_targets("127.0.1.5-8") == ["127.0.1.5", "127.0.1.6", "127.0.1.7", "127.0.1.8"]
    assert parse_targets("127.0.1.254-127.0.2.1") == ["127.0.1.254", "127.0.1.255", "127.0.2.0", "127.0.2.1"]
    assert parse_targets("127.0.1.0/30") == ["127.0.1.1", "127.0.1.2"]  # network and broadcast skipped
    assert parse_targets("127.0.1.9/32") == ["127.0.1.9"]
    assert parse_targets("127.0.1.5, 127.0.1.6,127.0.1.5") == ["127.0.1.5", "127.0.1.6"]
    assert parse_targets(["127.0.1.5", "127.0.1.7-8"]) == ["127.0.1.5", "127.0.1.7", "127.0.1.8"]
    assert parse_targets("::1") == ["::1"]


def test_parse_targets_resolves_names_to_one_in_scope_address() -> None:
    assert parse_targets("localhost", scope=Scope(["127.0.0.0/8"], allow_large=True)) == ["127.0.0.1"]


def test_parse_targets_checks_every_address_against_the_scope() -> None:
    with pytest.raises(ScopeError, match=r"127\.0\.2\.0"):
        parse_targets("127.0.1.250-127.0.2.3", scope=Scope(["127.0.1.0/24"]))


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("127.0.1.40-5", "reversed"),
        ("127.0.1.5-300", "above 255"),
        ("127.0.1.5-::9", "mixes"),
        ("127.0.1.0/40", "CIDR"),
        ("127.0.1.5,,127.0.1.6", "empty item"),
        ("127.0.1.5,", "empty item"),
        ("", "empty"),
        ("not a host!", "neither"),
        ("127.0.1.5-x", "not an IP address"),
    ],
)
def test_parse_targets_errors_name_the_input(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_targets(spec)


def test_parse_targets_refuses_large_ranges_without_opt_in() -> None:
    with pytest.raises(ConfigError, match="allow_large"):
        parse_targets("127.0.0.0/16")
    assert len(parse_targets("127.0.0.0/16", allow_large=True)) == 65534


def test_parse_targets_max_hosts_bounds_the_list() -> None:
    with pytest.raises(ConfigError, match="max_hosts"):
        parse_targets("127.0.1.0/24", max_hosts=10)
    with pytest.raises(ConfigError, match="max_hosts"):
        parse_targets(["127.0.1.1", "127.0.1.2", "127.0.1.3"], max_hosts=2)


def test_large_range_limit_is_the_documented_constant() -> None:
    assert LARGE_RANGE_HOSTS == 4096
    assert len(parse_targets("127.0.0.0/20")) == 4094  # exactly at the limit is fine


@given(start=st.integers(0, 2**32 - 300), length=st.integers(1, 200))
def test_parse_targets_range_matches_arithmetic(start: int, length: int) -> None:
    """Property: an address range expands to exactly its addresses, in order."""
    first = ipaddress.IPv4Address(start)
    last = ipaddress.IPv4Address(start + length - 1)
    expected = [str(ipaddress.IPv4Address(i)) for i in range(start, start + length)]
    assert parse_targets(f"{first}-{last}") == expected


@given(
    scope_base=st.integers(0, 2**24 - 1),
    scope_prefix=st.integers(24, 32),
    targets=st.lists(st.integers(0, 2**24 - 1), min_size=1, max_size=5),
)
def test_parse_targets_with_scope_returns_only_in_scope_addresses(
    scope_base: int, scope_prefix: int, targets: list[int]
) -> None:
    """Property: with a scope, parse_targets either returns in-scope addresses only or raises ScopeError."""
    scope_net = ipaddress.IPv4Network(((127 << 24) | scope_base, scope_prefix), strict=False)
    scope = Scope([str(scope_net)])
    spec = [str(ipaddress.IPv4Address((127 << 24) | t)) for t in targets]
    inside = all(ipaddress.IPv4Address(a) in scope_net for a in spec)
    if inside:
        assert all(a in scope for a in parse_targets(spec, scope=scope))
    else:
        with pytest.raises(ScopeError):
            parse_targets(spec, scope=scope)


# --- parse_ports ----------------------------------------------------------------------------------------


def test_parse_ports_forms() -> None:
    assert parse_ports("21-23,8080") == (21, 22, 23, 8080)
    assert parse_ports(8080) == (8080,)
    assert parse_ports([8080, "21", "22-23"]) == (21, 22, 23, 8080)
    assert parse_ports("pump") == (21, 22, 23, 8080)
    assert parse_ports(" 443 , 80 ,80") == (80, 443)


def test_hospital_port_set_covers_the_clinical_services() -> None:
    hospital = set(parse_ports("hospital"))
    for port in (
        21,
        22,
        23,
        80,
        443,
        8080,
        8443,
        445,
        3389,
        5985,
        515,
        631,
        9100,
        1433,
        3306,
        5432,
        2575,
        104,
        11112,
    ):
        assert port in hospital, port
    assert tuple(sorted(hospital)) == PORT_SETS["hospital"]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (0, "outside 1-65535"),
        (65536, "outside 1-65535"),
        ("0", "outside"),
        ("23-21", "reversed"),
        ("21-", "must look like"),
        ("ssh", "named set"),
        ("21,,22", "empty item"),
        ("", "empty item"),
        ([], "empty"),
        (True, "bool"),
        ([21, 2.5], "int or a string"),
    ],
)
def test_parse_ports_errors_name_the_input(spec: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_ports(spec)  # type: ignore[arg-type]


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=20))
def test_parse_ports_round_trips_through_text(ports: list[int]) -> None:
    """Property: any ports written as a comma list parse back to the sorted unique set."""
    assert parse_ports(",".join(map(str, ports))) == tuple(sorted(set(ports)))


# --- Target ---------------------------------------------------------------------------------------------


def test_target_defaults_and_repr() -> None:
    target = Target("127.0.1.5")
    assert target.ports == (21, 22, 23, 8080)
    assert target.heartbeat == HttpHeartbeat()
    assert target.label == "127.0.1.5"
    assert "127.0.1.5" in repr(target)
    assert "HttpHeartbeat" in repr(target)


def test_target_normalizes_ports_and_is_frozen() -> None:
    target = Target("127.0.1.5", ports="23,21", heartbeat=TcpHeartbeat(21), name="pump-3")
    assert target.ports == (21, 23)
    assert target.label == "pump-3"
    with pytest.raises(AttributeError):
        target.host = "127.0.0.1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"host": ""}, "host"),
        ({"host": "bad host"}, "host"),
        ({"host": "127.0.1.5", "ports": "0"}, "Target.ports"),
        ({"host": "127.0.1.5", "heartbeat": object()}, "heartbeat"),
        ({"host": "127.0.1.5", "name": 5}, "name"),
    ],
)
def test_target_validation_names_the_field(kwargs: dict[str, object], fragment: str) -> None:
    host = kwargs.pop("host")
    with pytest.raises(ConfigError, match=fragment):
        Target(host, **kwargs)  # type: ignore[arg-type]


# --- where the pieces live ------------------------------------------------------------------------------
def test_scope_re_exports_what_moved_out_of_it() -> None:
    """Target, port specs and address identity moved to _target, _ports and _addresses; every old import
    from ``fragileprobe._scope`` still gives the same objects."""
    from fragileprobe import _addresses, _ports, _scope, _target

    assert _scope.Target is _target.Target is Target
    assert _scope.parse_ports is _ports.parse_ports is parse_ports
    assert _scope.PORT_SETS is _ports.PORT_SETS is PORT_SETS
    assert _scope.canonical_address is _addresses.canonical_address
    assert _scope.canonical_host is _addresses.canonical_host
    assert _scope.canonical_network is _addresses.canonical_network
    assert _scope._parse_address is _addresses.parse_address
    assert _scope._HOSTNAME_RE is _addresses.HOSTNAME_RE


@pytest.mark.parametrize(
    ("make", "field", "message"),
    [
        (lambda: Target(""), "Target.host", "Target.host: must be a non-empty string, got ''"),
        (lambda: Target("bad host"), "Target.host", "Target.host: must be an IP address or a valid host"),
        (lambda: Target("127.0.1.5", name=5), "Target.name", "Target.name: must be a string or None, got 5"),
        (lambda: Target("127.0.1.5", ports="0"), "Target.ports", "Target.ports: port 0"),
        (lambda: parse_targets("127.0.1.5", max_hosts=0), "max_hosts", "max_hosts: must be an integer >= 1"),
        (lambda: Scope("127.0.1.0/24").check(""), "host", "host: must be a non-empty string, got ''"),
    ],
)
def test_settings_errors_name_their_field(make: object, field: str, message: str) -> None:
    """Checks of settings (not of spec syntax) use the one format and set ``ConfigError.field``."""
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert info.value.field == field
    assert str(info.value).startswith(message)


@given(st.lists(st.integers(0, 255), min_size=1, max_size=6), st.integers(1, 8))
def test_parse_targets_keeps_order_drops_duplicates_and_caps(octets: list[int], cap: int) -> None:
    """Any list of loopback addresses expands to its distinct addresses in first-seen order, or is refused
    with a max_hosts error when there are more than ``max_hosts`` of them."""
    spec = ",".join(f"127.0.9.{o}" for o in octets)
    distinct = list(dict.fromkeys(f"127.0.9.{o}" for o in octets))
    if len(distinct) > cap:
        with pytest.raises(ConfigError, match="max_hosts"):
            parse_targets(spec, max_hosts=cap)
    else:
        assert parse_targets(spec, max_hosts=cap) == distinct
