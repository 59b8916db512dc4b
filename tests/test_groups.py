"""Asset-group rules, zones, alerts and alert sinks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import anyio.abc
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe import ConfigError
from fragileprobe._discovery import Asset
from fragileprobe._fingerprint import ServiceInfo, guess_os
from fragileprobe._groups import (
    Alert,
    JsonlAlertSink,
    Rule,
    Rules,
    WebhookAlertSink,
    Zone,
    Zones,
    alert_for,
    log_alert,
)

PUMP_SERVICES = (
    ServiceInfo(21, "ftp", "vsFTPd", "2.3.4"),
    ServiceInfo(22, "ssh", "dropbear", "0.52"),
    ServiceInfo(23, "telnet", None, None, "login prompt"),
    ServiceInfo(8080, "http", "GoAhead-Webs", "2.5.0", server="GoAhead-Webs/2.5.0"),
)
WORKSTATION_SERVICES = (
    ServiceInfo(445, "smb"),
    ServiceInfo(3389, "rdp"),
    ServiceInfo(5985, "http", "Microsoft-HTTPAPI", "2.0"),
)


def make_asset(
    host: str = "10.0.0.5",
    services: tuple[ServiceInfo, ...] = PUMP_SERVICES,
    *,
    zone: str = "unzoned",
    zone_kind: str | None = None,
    known_model: str | None = None,
    ceiling: int | None = None,
) -> Asset:
    guess = guess_os(services)
    return Asset(
        host=host,
        open_ports=tuple(s.port for s in services),
        services=services,
        os_family=guess.family,
        os_evidence=guess.evidence,
        zone=zone,
        zone_kind=zone_kind,
        model_key="x-0123456789ab",
        known_model=known_model,
        ceiling=ceiling,
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- zones ------------------------------------------------------------------------------------------------


def test_zones_from_toml_map_addresses_to_named_segments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "zones.toml",
        """
[[zone]]
name = "ICU devices"
kind = "medical"
ranges = ["10.1.0.0/25", "10.1.5.7"]

[[zone]]
name = "Office"
ranges = ["10.1.0.128-10.1.0.200"]
""",
    )
    zones = Zones.from_toml(path)
    assert [z.name for z in zones] == ["ICU devices", "Office"]
    icu = zones.zone_for("10.1.0.3")
    assert icu is not None
    assert icu.medical
    assert zones.zone_for("10.1.5.7") is icu
    office = zones.zone_for("10.1.0.150")
    assert office is not None
    assert office.kind == "general"
    assert zones.zone_for("10.1.0.201") is None
    assert zones.zone_for("not-an-address") is None


def test_overlapping_zones_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"'a' .* and 'b' .* overlap"):
        Zones([Zone("a", ("10.0.0.0/24",)), Zone("b", ("10.0.0.200-10.0.1.5",))])


def test_overlap_hidden_behind_a_zones_own_ranges_is_found() -> None:
    """A big range of zone a, a small one of a, then b inside the big one: still an overlap."""
    with pytest.raises(ConfigError, match="overlap"):
        Zones([Zone("a", ("10.0.0.0/16", "10.0.0.5")), Zone("b", ("10.0.3.0/24",))])


def test_overlapping_zones_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "z.toml",
        '[[zone]]\nname="a"\nranges=["10.0.0.0/24"]\n[[zone]]\nname="b"\nranges=["10.0.0.9"]\n',
    )
    with pytest.raises(ConfigError, match=r"z\.toml: zones 'a'"):
        Zones.from_toml(path)


def test_unknown_zone_key_names_file_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "zones.toml", '[[zone]]\nname = "a"\nrange = ["10.0.0.0/24"]\n')
    with pytest.raises(
        ConfigError,
        match=r"zones\.toml: zone #1 \('a'\): unknown key 'range' \(line 3\).*"
        r"did you mean 'ranges'",
    ):
        Zones.from_toml(path)


def test_zone_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "zones.toml", '[[zone]]\nname = "a\n')
    with pytest.raises(ConfigError, match=r"zones\.toml: TOML syntax error: .*line 2"):
        Zones.from_toml(path)


@pytest.mark.parametrize(
    ("zone_kwargs", "message"),
    [
        ({"name": "", "ranges": ("10.0.0.1",)}, "Zone.name"),
        ({"name": "a", "ranges": ()}, "Zone.ranges"),
        ({"name": "a", "ranges": ("10.0.0.300",)}, r"Zone\.ranges: must be CIDR blocks.*got '10\.0\.0\.300'"),
        ({"name": "a", "ranges": ("10.0.0.9-10.0.0.1",)}, "low to high"),
        ({"name": "a", "ranges": ("10.0.0.1",), "kind": "Medical Net"}, "Zone.kind"),
    ],
)
def test_bad_zones_raise_config_error_naming_the_field(zone_kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Zone(**zone_kwargs)  # type: ignore[arg-type]


def test_missing_zones_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Zones.from_toml(tmp_path / "nope.toml")


# --- rules ------------------------------------------------------------------------------------------------


def test_default_rules_put_the_pump_stack_in_medical_device() -> None:
    """FTP, SSH, Telnet and a web server on 8080 on a generic unix: "Medical Device?"."""
    asset = make_asset(zone="office", zone_kind="general")
    assert asset.os_family == "generic unix"
    matches = Rules.default().classify(asset)
    assert [m.group for m in matches] == ["Medical Device?"]
    assert matches[0].medical


def test_default_rules_put_a_workstation_in_safe_to_scan_of_its_zone() -> None:
    asset = make_asset(services=WORKSTATION_SERVICES, zone="office", zone_kind="general")
    assert [m.group for m in Rules.default().classify(asset)] == ["safe to scan (office)"]


def test_default_rules_name_a_group_after_a_stored_model_and_allow_several_groups() -> None:
    """A known fragile model lands in its model's group, and also in "Medical Device?" when it looks so."""
    asset = make_asset(known_model="goahead-webs-aa388f080437", ceiling=5)
    groups = [m.group for m in Rules.default().classify(asset)]
    assert groups == ["Medical Device?", "goahead-webs-aa388f080437"]
    ws = make_asset(services=WORKSTATION_SERVICES, known_model="mis-9", ceiling=2)
    assert [m.group for m in Rules.default().classify(ws)] == ["mis-9"]


def test_default_rules_flag_clinical_protocols_and_embedded_consoles() -> None:
    monitor = make_asset(services=(ServiceInfo(2575, "hl7-mllp"), ServiceInfo(80, "http", "WindWeb", "4.0")))
    assert "Medical Device?" in [m.group for m in Rules.default().classify(monitor)]
    syringe = make_asset(
        services=(
            ServiceInfo(21, "ftp", "Nucleus NET ftpd", "3.2"),
            ServiceInfo(23, "telnet"),
            ServiceInfo(80, "http", "Allegro-Software-RomPager", "4.07"),
        )
    )
    assert syringe.os_family == "embedded"
    assert [m.group for m in Rules.default().classify(syringe)] == ["Medical Device?"]
    printer = make_asset(
        services=(
            ServiceInfo(21, "ftp", "VxWorks ftpd"),
            ServiceInfo(23, "telnet"),
            ServiceInfo(80, "http", "Boa"),
            ServiceInfo(9100, "jetdirect"),
        )
    )
    assert [m.group for m in Rules.default().classify(printer)] == ["safe to scan (unzoned)"]


def test_rules_from_toml_with_defaults_and_every_condition(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rules.toml",
        """
include_defaults = true

[[rule]]
name = "Ward pumps ({zone})"
ports_all = [21, 8080]
ports_any = [22, 2222]
ports_none = [445]
services = ["ftp", "http@8080"]
services_any = ["ssh"]
products = ["vsftpd"]
versions = ["2.3.*"]
os_family = ["generic unix"]
zone = ["medical"]
known_model = false
medical = true
""",
    )
    rules = Rules.from_toml(path)
    assert len(rules) == len(Rules.default()) + 1
    asset = make_asset(zone="ICU", zone_kind="medical")
    matches = {m.group: m for m in rules.classify(asset)}
    assert set(matches) == {"Medical Device?", "Ward pumps (ICU)"}
    ev = matches["Ward pumps (ICU)"].evidence
    assert "product vsFTPd" in ev
    assert "version 2.3.4" in ev
    assert "zone ICU" in ev
    # One condition failing keeps the host out.
    assert "Ward pumps (office)" not in {m.group for m in rules.classify(make_asset(zone="office"))}


def test_unknown_rule_key_names_file_rule_key_line_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.toml", '[[rule]]\nname = "x"\n\nport_all = [22]\n')
    with pytest.raises(
        ConfigError,
        match=r"rules\.toml: rule #1 \('x'\): unknown key 'port_all' \(line 4\); "
        r"did you mean 'ports_all'\?",
    ):
        Rules.from_toml(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[rule]]\nname = "x"\nports_all = [0]\n',
            r"Rule\.ports_all: must be ports in 1-65535 \(rule 'x'\), got \[0\]",
        ),
        ('[[rule]]\nname = "x"\nports_all = ["ssh"]\n', "list of int"),
        ('[[rule]]\nname = "x"\nos_family = ["linux"]\n', "os_family"),
        ('[[rule]]\nname = "x {host}"\n', "unknown placeholder"),
        ('[[rule]]\nname = "x"\nservices = ["HTTP on 80"]\n', "lower-case name"),
        ('[[rule]]\nname = "x"\nmedical = "yes"\n', "true or false"),
        ("[[rule]]\nports_all = [1]\n", "missing key 'name'"),
        ("include_defaults = 1\n", "include_defaults"),
        ('[rule]\nname = "x"\n', "array of tables"),
        ('[[rule]]\nname = "x"\nports_all = [22\n', "TOML syntax error"),
    ],
)
def test_bad_rules_files_raise_config_error(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Rules.from_toml(write(tmp_path, "r.toml", body))
    assert "r.toml" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "Rule.name"),
        ({"name": "x {host}"}, "Rule.name"),
        ({"name": "x", "ports_any": (70000,)}, "Rule.ports_any"),
        ({"name": "x", "products": (5,)}, "Rule.products"),
        ({"name": "x", "services_any": ("HTTP",)}, "Rule.services_any"),
        ({"name": "x", "os_family": ("linux",)}, "Rule.os_family"),
        ({"name": "x", "known_model": "yes"}, "Rule.known_model"),
        ({"name": "x", "fallback": 1}, "Rule.fallback"),
    ],
)
def test_bad_rule_values_name_their_field(kwargs: dict[str, object], field: str) -> None:
    """Each check says which field it refused, in the one message format, and names the rule."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: must be ") as info:
        Rule(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    if field != "Rule.name":
        assert "(rule 'x')" in str(info.value)


def test_a_rules_file_error_keeps_the_field_of_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"^r\.toml: rule #1 \('x'\): Rule\.medical: must be ") as info:
        Rules.from_dict({"rule": [{"name": "x", "medical": "yes"}]}, source="r.toml")
    assert info.value.field == "Rule.medical"


def test_shipped_example_files_load() -> None:
    """examples/zones.toml and examples/rules.toml are valid."""
    root = Path(__file__).resolve().parents[1] / "examples"
    assert len(Zones.from_toml(root / "zones.toml")) >= 2
    assert len(Rules.from_toml(root / "rules.toml")) > len(Rules.default())


_services = st.sampled_from(["ftp", "ssh", "telnet", "http", "smb", "rdp", "hl7-mllp", "unknown"])
_ports = st.integers(min_value=1, max_value=65535)


@settings(max_examples=200, deadline=None)
@given(
    open_ports=st.sets(st.sampled_from([21, 22, 23, 80, 445, 8080, 9100, 2575]), max_size=8),
    ports_all=st.lists(st.sampled_from([21, 22, 23, 80, 445, 8080]), max_size=3),
    ports_any=st.lists(st.sampled_from([21, 22, 23, 80, 445, 8080]), max_size=3),
    ports_none=st.lists(st.sampled_from([21, 22, 23, 80, 445, 8080]), max_size=3),
    services=st.lists(_services, max_size=3),
)
def test_port_and_service_conditions_mean_all_any_none(
    open_ports: set[int],
    ports_all: list[int],
    ports_any: list[int],
    ports_none: list[int],
    services: list[str],
) -> None:
    """A rule matches exactly when all/any/none hold on the host's open ports and services."""
    names = ["ftp", "ssh", "telnet", "http", "smb", "http", "jetdirect", "hl7-mllp"]
    infos = tuple(ServiceInfo(p, s) for p, s in zip(sorted(open_ports), names, strict=False))
    asset = make_asset(services=infos)
    rule = Rule(
        "r",
        ports_all=tuple(ports_all),
        ports_any=tuple(ports_any),
        ports_none=tuple(ports_none),
        services=tuple(services),
    )
    seen = {i.service for i in infos}
    expected = (
        set(ports_all) <= open_ports
        and (not ports_any or bool(set(ports_any) & open_ports))
        and not set(ports_none) & open_ports
        and all(s in seen for s in services)
    )
    assert (rule.match(asset) is not None) == expected


@settings(max_examples=200, deadline=None)
@given(
    services=st.lists(
        st.builds(
            ServiceInfo, port=_ports, service=_services, product=st.one_of(st.none(), st.text(max_size=12))
        ),
        max_size=6,
    ),
    zone=st.sampled_from(["icu", "office", "unzoned"]),
    known=st.one_of(st.none(), st.just("mis-3000-abc")),
)
def test_classify_never_raises_and_fallback_only_when_nothing_else_matched(
    services: list[ServiceInfo], zone: str, known: str | None
) -> None:
    asset = make_asset(services=tuple(services), zone=zone, known_model=known, ceiling=3 if known else None)
    matches = Rules.default().classify(asset)
    assert matches, "every host lands in at least one group"
    fallback = [m for m in matches if m.group.startswith("safe to scan")]
    assert bool(fallback) == (len(matches) == 1 and not matches[0].medical)
    assert len({m.group for m in matches}) == len(matches)


# --- alerts -----------------------------------------------------------------------------------------------


def test_medical_host_on_a_general_segment_alerts_with_evidence() -> None:
    asset = make_asset(host="10.9.0.4", zone="office", zone_kind="general")
    alert = alert_for(asset, Rules.default().classify(asset), first_seen="2026-11-29T20:00:00+00:00")
    assert alert is not None
    assert (alert.host, alert.zone, alert.zone_kind, alert.model) == (
        "10.9.0.4",
        "office",
        "general",
        "x-0123456789ab",
    )
    assert alert.groups == ("Medical Device?",)
    assert any("Medical Device?" in e for e in alert.evidence)
    assert any("not medical" in e for e in alert.evidence)


def test_known_model_in_guest_zone_alerts_under_its_stored_name() -> None:
    asset = make_asset(
        services=WORKSTATION_SERVICES,
        zone="guest wifi",
        zone_kind="guest",
        known_model="mis-3000-abc",
        ceiling=4,
    )
    alert = alert_for(asset, Rules.default().classify(asset), first_seen="t")
    assert alert is not None
    assert alert.model == "mis-3000-abc"


@pytest.mark.parametrize(("zone", "kind"), [("icu", "medical"), ("unzoned", None)])
def test_no_alert_in_a_medical_zone_or_outside_every_zone(zone: str, kind: str | None) -> None:
    asset = make_asset(zone=zone, zone_kind=kind)
    assert alert_for(asset, Rules.default().classify(asset), first_seen="t") is None


def test_workstation_on_general_segment_does_not_alert() -> None:
    asset = make_asset(services=WORKSTATION_SERVICES, zone="office", zone_kind="general")
    assert alert_for(asset, Rules.default().classify(asset), first_seen="t") is None


ALERT = Alert(
    host="127.0.0.9",
    model="mis-3000-abc",
    zone="office",
    zone_kind="general",
    evidence=("in medical group 'Medical Device?'",),
    first_seen="2026-11-29T20:00:00+00:00",
    groups=("Medical Device?",),
)


def test_alert_goes_to_structlog() -> None:
    with structlog.testing.capture_logs() as logs:
        log_alert(ALERT)
    assert logs[0]["event"] == "discovery.alert"
    assert logs[0]["host"] == "127.0.0.9"
    assert logs[0]["log_level"] == "warning"


def test_jsonl_sink_appends_one_object_per_line(tmp_path: Path) -> None:
    sink = JsonlAlertSink(tmp_path / "alerts.jsonl")
    sink.write(ALERT)
    sink.write(ALERT)
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == ALERT.to_dict()


async def test_webhook_posts_the_alert_as_json_to_a_loopback_receiver(loopback_host: str) -> None:
    received: list[bytes] = []
    listener = await anyio.create_tcp_listener(local_host=loopback_host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
                    data += await stream.receive()
            received.append(data)
            await stream.send(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        ok = await WebhookAlertSink(f"http://{loopback_host}:{port}/hooks/fp", timeout_s=2).send(ALERT)
        tg.cancel_scope.cancel()
    assert ok
    head, body = received[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /hooks/fp HTTP/1.1\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == ALERT.to_dict()


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


async def test_webhook_failure_is_logged_not_raised(loopback_host: str) -> None:
    """Nothing listens: the sink returns False within its timeout and logs the failure."""
    with structlog.testing.capture_logs() as logs:
        ok = await WebhookAlertSink(f"http://{loopback_host}:9/x", timeout_s=1).send(ALERT)
    assert not ok
    assert logs[-1]["event"] == "discovery.alert_webhook_failed"


async def test_webhook_that_never_answers_is_bounded_by_its_timeout(loopback_host: str) -> None:
    listener = await anyio.create_tcp_listener(local_host=loopback_host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep(30)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        start = anyio.current_time()
        ok = await WebhookAlertSink(f"http://{loopback_host}:{port}/", timeout_s=0.3).send(ALERT)
        elapsed = anyio.current_time() - start
        tg.cancel_scope.cancel()
    assert not ok
    assert elapsed < 10  # the 0.3 s bound, not the receiver's 30 s hold


@pytest.mark.parametrize("url", ["ftp://x/", "http:///nohost", "not a url"])
def test_webhook_url_must_be_http_with_a_host(url: str) -> None:
    with pytest.raises(ConfigError, match="webhook_url"):
        WebhookAlertSink(url)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), min_size=1, max_size=3),
        min_size=1,
        max_size=4,
    )
)
def test_zone_overlap_detection_matches_brute_force(spans: list[list[tuple[int, int]]]) -> None:
    """Random zones of address ranges: refused exactly when two different zones share an address."""
    zones = [
        Zone(f"z{i}", tuple(f"10.0.0.{lo}-10.0.0.{lo + width}" for lo, width in ranges))
        for i, ranges in enumerate(spans)
    ]
    owners: dict[int, set[int]] = {}
    for i, ranges in enumerate(spans):
        for lo, width in ranges:
            for addr in range(lo, lo + width + 1):
                owners.setdefault(addr, set()).add(i)
    overlapping = any(len(zs) > 1 for zs in owners.values())
    if overlapping:
        with pytest.raises(ConfigError, match="overlap"):
            Zones(zones)
    else:
        built = Zones(zones)
        for addr, (zone_index,) in owners.items():
            found = built.zone_for(f"10.0.0.{addr}")
            assert found is not None
            assert found.name == f"z{zone_index}"
