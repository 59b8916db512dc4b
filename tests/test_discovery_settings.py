"""DiscoverySettings: frozen, keyword-only, validated once (ConfigError.field names the setting), a repr
that reads back, the same API as discover()'s flat keywords, the CLI naming its own option (no sockets)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fragileprobe
from fragileprobe import ConfigError
from fragileprobe._discovery import DEFAULT_DISCOVERY_PORTS
from fragileprobe._discovery_run import discover
from fragileprobe._discovery_settings import DiscoveryOptions, DiscoverySettings, port_spec_text
from fragileprobe._scope import parse_ports

BAD: list[tuple[str, object]] = [
    ("ports", "21,abc"),
    ("ports", "0"),
    ("ports", True),
    ("udp_ports", "5353"),  # no UDP probe is known there
    ("udp_ports", "70000"),
    ("per_host_sessions", 0),
    ("per_host_sessions", 1.5),
    ("per_host_sessions", True),
    ("rate_per_host", -1),
    ("rate_per_host", float("inf")),
    ("max_hosts_in_parallel", 0),
    ("global_rate", 0),
    ("liveness_ports", -1),
    ("connect_timeout_s", 0),
    ("banner_timeout_s", float("nan")),
    ("unresponsive_after", 0),
    ("snmp_community", ""),
    ("snmp_community", "caf\u00e9"),
    ("port_aliases", {0: 21}),
    ("port_aliases", {10021: 70000}),
    ("port_aliases", [1, 2]),
    ("linger_s", 0),
    ("seed", "abc"),
    ("seed", True),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_a_bad_setting_is_a_config_error_whose_field_names_it(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        DiscoverySettings(**{name: value})  # type: ignore[arg-type]
    assert caught.value.field == name
    assert str(caught.value).startswith(f"{name}: ")


def test_the_defaults_are_the_gentle_ones() -> None:
    s = DiscoverySettings()
    assert s.ports == DEFAULT_DISCOVERY_PORTS
    assert s.udp_ports == (123, 161, 1900)
    assert (s.per_host_sessions, s.rate_per_host, s.max_hosts_in_parallel) == (1, 10.0, None)
    assert (s.global_rate, s.liveness_ports, s.unresponsive_after) == (1000.0, 2, 3)
    assert (s.connect_timeout_s, s.banner_timeout_s, s.adaptive_timeouts) == (2.0, 1.5, True)
    assert (s.snmp_community, dict(s.port_aliases), s.linger_s) == ("public", {}, 1.0)
    assert (s.seed, s.raw) == (None, False)


def test_inputs_are_normalized_once() -> None:
    s = DiscoverySettings(
        ports="8080,21-23,22", udp_ports=[1900, "161"], port_aliases={10021: 21}, adaptive_timeouts=0
    )  # type: ignore[arg-type]
    assert s.ports == (21, 22, 23, 8080)
    assert s.udp_ports == (161, 1900)
    assert s.adaptive_timeouts is False
    nothing: tuple[object, ...] = ((), [], "")
    for none in nothing:
        assert DiscoverySettings(udp_ports=none).udp_ports == ()  # type: ignore[arg-type]


def test_it_is_frozen_and_its_aliases_are_read_only() -> None:
    s = DiscoverySettings(port_aliases={10021: 21})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.per_host_sessions = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.port_aliases[1] = 2  # type: ignore[index]
    assert hash(s) == hash(DiscoverySettings(port_aliases={10021: 21}))
    with pytest.raises(TypeError):
        DiscoverySettings(2)  # type: ignore[call-arg]  # keyword-only


def test_numbers_keep_the_type_they_were_given_so_resume_still_matches_older_scans() -> None:
    """The params are stored as canonical JSON and matched as text: 10 must stay 10, not become 10.0."""
    s = DiscoverySettings(rate_per_host=10, connect_timeout_s=1)
    assert s.params()["rate_per_host"] == 10
    assert isinstance(s.params()["rate_per_host"], int)
    assert set(s.params()) == {
        "ports",
        "per_host_sessions",
        "rate_per_host",
        "connect_timeout_s",
        "banner_timeout_s",
        "unresponsive_after",
        "udp_ports",
        "liveness_ports",
        "adaptive_timeouts",
    }


def test_the_timeout_bounds_hold_below_the_floors() -> None:
    s = DiscoverySettings(connect_timeout_s=0.2, banner_timeout_s=0.1)
    bounds = s.connect_bounds
    assert (bounds.floor_s, bounds.ceiling_s, bounds.initial_s) == (0.2, 0.2, 0.2)
    assert (s.banner_bounds.floor_s, s.banner_bounds.ceiling_s) == (0.1, 0.1)
    s = DiscoverySettings()
    assert (s.connect_bounds.floor_s, s.connect_bounds.initial_s) == (0.5, 0.9)


settings_st = st.builds(
    DiscoverySettings,
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=20),
    udp_ports=st.sampled_from([(), (161,), (123, 1900)]),
    per_host_sessions=st.integers(1, 64),
    rate_per_host=st.floats(0.1, 1e3) | st.integers(1, 100),
    max_hosts_in_parallel=st.none() | st.integers(1, 4096),
    liveness_ports=st.integers(0, 5),
    adaptive_timeouts=st.booleans(),
    port_aliases=st.dictionaries(st.integers(1, 65535), st.integers(1, 65535), max_size=3),
    seed=st.none() | st.integers(-(2**40), 2**40),
    raw=st.booleans(),
)


@given(settings_st)
def test_the_repr_reads_back_as_equal_settings(s: DiscoverySettings) -> None:
    again = eval(repr(s), {"DiscoverySettings": DiscoverySettings})
    assert again == s
    assert hash(again) == hash(s)


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=50))
def test_a_port_list_prints_as_the_spec_that_parses_back_to_it(ports: list[int]) -> None:
    text = port_spec_text(ports)
    assert parse_ports(text) == tuple(sorted(set(ports)))
    assert len(text) <= len(",".join(map(str, sorted(set(ports)))))


def test_the_repr_shows_what_differs_from_the_defaults_briefly() -> None:
    assert repr(DiscoverySettings()) == "DiscoverySettings()"
    assert repr(DiscoverySettings(ports="1-65535", seed=4)) == "DiscoverySettings(ports='1-65535', seed=4)"
    assert repr(DiscoverySettings(rate_per_host=10)) == "DiscoverySettings(rate_per_host=10)", "an int stays"


def test_merge_takes_a_settings_object_or_the_flat_keywords_never_both() -> None:
    base = DiscoverySettings(per_host_sessions=2, ports="21")
    assert DiscoverySettings.merge(None, {}) == DiscoverySettings()
    assert DiscoverySettings.merge(base, {}) is base
    assert DiscoverySettings.merge(None, {"ports": "21", "per_host_sessions": 2}) == base
    mixed = r"settings: .*without the flat keywords.*\['rate_per_host'\]"
    with pytest.raises(ConfigError, match=mixed) as caught:
        DiscoverySettings.merge(base, {"rate_per_host": 3})
    assert caught.value.field == "settings"
    with pytest.raises(ConfigError, match="per_host_sessions: ") as caught:
        DiscoverySettings.merge(None, {"per_host_sessions": 0})
    assert caught.value.field == "per_host_sessions"
    with pytest.raises(TypeError, match="'per_host_session'"):
        DiscoverySettings.merge(None, {"per_host_session": 2})
    with pytest.raises(ConfigError, match="settings: must be a DiscoverySettings") as caught:
        DiscoverySettings.merge({"ports": 21}, {})  # type: ignore[arg-type]
    assert caught.value.field == "settings"
    assert base.replace(rate_per_host=3).rate_per_host == 3


def test_the_flat_keywords_of_discover_are_exactly_the_settings() -> None:
    fields = [f.name for f in dataclasses.fields(DiscoverySettings)]
    assert list(DiscoveryOptions.__annotations__) == fields
    params = inspect.signature(DiscoverySettings).parameters
    assert list(params) == fields
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert "options" in inspect.signature(discover).parameters
    assert fragileprobe.DiscoverySettings is DiscoverySettings


async def test_discover_refuses_an_unknown_keyword_and_mixed_settings_before_anything_is_sent() -> None:
    scope = fragileprobe.Scope(["127.0.0.1"])
    with pytest.raises(TypeError, match="'per_host_session'"):
        await discover("127.0.0.1", scope=scope, per_host_session=2)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="settings: ") as caught:
        await discover("127.0.0.1", scope=scope, settings=DiscoverySettings(), per_host_sessions=2)
    assert caught.value.field == "settings"


# --- the CLI names its own options ------------------------------------------------------------------------

CLI_BAD: list[tuple[dict[str, Any], str]] = [
    ({"per_host_sessions": 0}, r"^--sessions-per-host: per_host_sessions: must be an integer >= 1, got 0$"),
    ({"max_hosts_in_parallel": 0}, r"^--max-hosts: "),
    ({"connect_timeout_s": -1.0}, r"^--connect-timeout: connect_timeout_s: must be .*, got -1\.0$"),
    ({"banner_timeout_s": 0.0}, r"^--banner-timeout: "),
    ({"rate_per_host": 0.0}, r"^--rate-per-host: "),
    ({"global_rate": 0.0}, r"^--global-rate: "),
    ({"liveness_ports": -1}, r"^--liveness-ports: "),
    ({"ports": "0"}, r"^--ports: ports: port 0 "),
    ({"udp_ports": "5353"}, r"^--udp-ports: udp_ports: must be ports with a known UDP probe"),
    ({"snmp_community": "a" * 300}, r"^--snmp-community: "),
]


@pytest.mark.parametrize(("options", "pattern"), CLI_BAD, ids=[str(o) for o, _ in CLI_BAD])
def test_the_cli_error_names_the_option_from_the_field(options: dict[str, Any], pattern: str) -> None:
    from fragileprobe.cli import _check_discover_args

    with pytest.raises(ConfigError, match=pattern) as caught:
        _check_discover_args(options, webhook=None, alerts=None)
    assert caught.value.field == next(iter(options))


def test_the_cli_builds_the_same_settings_object() -> None:
    from fragileprobe.cli import _check_discover_args

    built = _check_discover_args({"ports": "21-23", "per_host_sessions": 2}, webhook=None, alerts=None)
    assert built == DiscoverySettings(ports="21-23", per_host_sessions=2)
    with pytest.raises(ConfigError, match=r"^--webhook: webhook_url: must be an http"):
        _check_discover_args({}, webhook="gopher://x", alerts=None)
