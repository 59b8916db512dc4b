"""The discovery policy (pure): host plan, probe per port, session cap, give-up, assets, inventory, report.

No sockets and no clock: hosts are scripted as "what each port answers", fed to the policy the way the
executor feeds it, and the decisions are checked as tables and as hypothesis properties.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe._discovery import CLIENT_FIRST_PORTS, PRINTER_PORTS, WEB_PORTS, Asset, Move
from fragileprobe._discovery_policy import (
    Conclusion,
    DiscoveryPolicy,
    Findings,
    HostProbing,
    RunTally,
    ScanPlan,
    _connect_timed_out,
    addr_key,
    assemble_report,
    build_asset,
    connected,
    estimate_remaining_s,
    host_order,
    inventory_changes,
    measures_rtt,
    probe_kind,
    run_notes,
    session_limit,
    spoke_before,
    stored_floor,
)
from fragileprobe._discovery_settings import DiscoverySettings
from fragileprobe._fingerprint import model_key_digest
from fragileprobe._groups import Rules, Zone, Zones
from fragileprobe._hostpolicy import ProbeKind
from fragileprobe._probes import HttpResult, Outcome, Phase, ProbeResult
from fragileprobe._store import AssetRow
from fragileprobe._timing import BANNER_SERVICE_ALLOWANCE_S

HOST = "10.0.0.7"
PORTS = (21, 22, 23, 80, 443, 8080, 9100)
RULES = Rules.default()
NOW_S = 1_800_000_000.0
CONNECT_TIMEOUT = "connect timed out after 0.9 s"

Answer = Callable[[int, ProbeKind], ProbeResult]


# --- scripted hosts ---------------------------------------------------------------------------------------


def res(
    port: int, outcome: Outcome, data: bytes = b"", error: str | None = None, latency_s: float = 0.01
) -> ProbeResult:
    """A probe's record; a failure's phase as the probes set it (the connect's own timeout: CONNECT)."""
    phase = None if outcome is Outcome.OPEN else Phase.CONNECT
    if outcome in (Outcome.TIMEOUT, Outcome.RESET, Outcome.PROTOCOL_ERROR) and error != CONNECT_TIMEOUT:
        phase = Phase.EXCHANGE
    return ProbeResult(
        host=HOST,
        port=port,
        outcome=outcome,
        latency_s=latency_s,
        data=data,
        error=error,
        started_at_s=0.0,
        duration_s=latency_s,
        phase=phase,
    )


def web(port: int, status: int = 200, server: str = "Boa/0.94") -> HttpResult:
    head = f"HTTP/1.0 {status} OK\r\nServer: {server}\r\n\r\n".encode()
    return HttpResult(
        host=HOST,
        port=port,
        outcome=Outcome.OPEN,
        latency_s=0.01,
        data=head,
        error=None,
        started_at_s=0.0,
        duration_s=0.02,
        status=status,
        headers=(("Server", server),),
        server=server,
    )


def silent(port: int, kind: ProbeKind) -> ProbeResult:
    return res(port, Outcome.TIMEOUT, error=CONNECT_TIMEOUT)


def scripted(answers: Mapping[int, ProbeResult], default: Answer = silent) -> Answer:
    def answer(port: int, kind: ProbeKind) -> ProbeResult:
        return answers[port] if port in answers else default(port, kind)

    return answer


def drive(probing: HostProbing, answer: Answer, tally: RunTally) -> list[int]:
    """Probe the host the way the executor does at one session: ask, probe, feed back, until it stops."""
    asked: list[int] = []
    while (port := probing.state.next_port()) is not None:
        probe = probing.probe(port)
        asked.append(port)
        tally.probes += 1
        probing.record(probe, answer(port, probe.kind), tally)
        if probing.state.stopped():
            break
    return asked


def policy(**kw: object) -> DiscoveryPolicy:
    profiles = kw.pop("profiles", {})
    prior = kw.pop("prior", {})
    zones = kw.pop("zones", None)
    config = DiscoverySettings(**{"ports": PORTS, **kw})  # type: ignore[arg-type]
    return DiscoveryPolicy(config, RULES, zones, profiles, prior)  # type: ignore[arg-type]


def row(
    host: str = HOST,
    *,
    zone: str | None = "ward",
    model: str | None = None,
    scan_id: int | None = 1,
    previous_zone: str | None = None,
    previous_scan_id: int | None = None,
    services: object = None,
    first_seen_s: float = 1_700_000_000.0,
) -> AssetRow:
    return AssetRow(
        host=host,
        first_seen_s=first_seen_s,
        last_seen_s=first_seen_s,
        zone=zone,
        previous_zone=previous_zone,
        model_key=model,
        open_ports=(21, 80),
        services=services if services is not None else [],
        os_family="embedded",
        groups=(),
        scan_id=scan_id,
        previous_scan_id=previous_scan_id,
    )


def asset(host: str, zone: str = "ward", groups: tuple[str, ...] = ()) -> Asset:
    return Asset(
        host=host,
        open_ports=(80,),
        services=(),
        os_family="unknown",
        os_evidence=(),
        zone=zone,
        zone_kind=None,
        model_key="k",
        groups=groups,
    )


# --- one probe --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "hint", "kind"),
    [
        (9100, 9100, ProbeKind.CONNECT),  # raw print port: whatever arrives is printed
        (9107, 9107, ProbeKind.CONNECT),
        (10021, 9100, ProbeKind.CONNECT),  # a print server moved onto another port
        (9100, 80, ProbeKind.CONNECT),  # a printer port never gets a GET, whatever its alias says
        (445, 445, ProbeKind.CONNECT),  # the client speaks first: a banner read only holds a session
        (443, 443, ProbeKind.CONNECT),  # TLS: a handshake is more than discovery needs
        (8080, 445, ProbeKind.CONNECT),  # the alias says SMB: connect only
        (80, 80, ProbeKind.HTTP),
        (18080, 8080, ProbeKind.HTTP),  # a web UI on a moved port
        (8080, 21, ProbeKind.HTTP),  # the port itself is a web port
        (21, 21, ProbeKind.BANNER),
        (10021, 21, ProbeKind.BANNER),
        (2575, 2575, ProbeKind.CONNECT),  # HL7 MLLP: the client speaks first
        (4444, 4444, ProbeKind.BANNER),  # unknown: listen for a greeting, send nothing
    ],
)
def test_each_port_gets_the_probe_its_well_known_service_allows(
    port: int, hint: int, kind: ProbeKind
) -> None:
    assert probe_kind(port, hint) is kind


@given(port=st.integers(1, 65535), hint=st.integers(1, 65535))
def test_nothing_is_ever_sent_to_a_printer_or_a_client_first_port(port: int, hint: int) -> None:
    """Only an HTTP probe sends bytes (one GET); a banner read and a connect send nothing."""
    kind = probe_kind(port, hint)
    if port in PRINTER_PORTS or hint in PRINTER_PORTS or hint in CLIENT_FIRST_PORTS:
        assert kind is ProbeKind.CONNECT
    elif kind is ProbeKind.HTTP:
        assert port in WEB_PORTS or hint in WEB_PORTS


@pytest.mark.parametrize(
    ("result", "timed_out", "is_connected", "rtt"),
    [
        (res(80, Outcome.OPEN), False, True, True),
        (res(80, Outcome.CLOSED), False, False, True),  # RST: the stack answered
        (res(80, Outcome.RESET), False, True, True),
        (res(80, Outcome.PROTOCOL_ERROR, b"junk"), False, True, True),
        (res(80, Outcome.TIMEOUT, error=CONNECT_TIMEOUT), True, False, False),
        (res(80, Outcome.TIMEOUT, error="HTTP head incomplete after 0.3 s"), False, True, True),
        (res(80, Outcome.TIMEOUT, error=None), False, True, True),
        (res(80, Outcome.UNREACHABLE, error="no route to host"), False, False, False),
        (res(80, Outcome.CANCELLED), False, False, False),
    ],
)
def test_a_result_says_whether_a_session_opened_and_whether_it_measured_a_round_trip(
    result: ProbeResult, timed_out: bool, is_connected: bool, rtt: bool
) -> None:
    assert _connect_timed_out(result) is timed_out
    assert connected(result) is is_connected
    assert measures_rtt(result) is rtt


# --- the session cap --------------------------------------------------------------------------------------

PUMP_KEY = "ftp+telnet+http:pump"
PROFILES = {model_key_digest(PUMP_KEY): (PUMP_KEY, 2), model_key_digest("other"): ("other", 5)}


@pytest.mark.parametrize(
    ("prior", "per_host", "profiles", "limit", "known"),
    [
        (None, 3, {}, 3, None),  # nothing stored
        (row(model=PUMP_KEY), 3, PROFILES, 2, (PUMP_KEY, 2)),  # its model's ceiling
        (row(model=PUMP_KEY), 1, PROFILES, 1, (PUMP_KEY, 2)),  # never above the ask
        (None, 4, PROFILES, 2, None),  # unknown: the lowest
        (row(model="unseen"), 4, PROFILES, 2, None),
        (row(model=PUMP_KEY), 4, {model_key_digest(PUMP_KEY): (PUMP_KEY, 0)}, 0, (PUMP_KEY, 0)),  # left alone
        (None, 4, {model_key_digest(PUMP_KEY): (PUMP_KEY, 0)}, 1, None),  # one session at least
        (row(model=PUMP_KEY), 4, {model_key_digest(PUMP_KEY): (PUMP_KEY, None)}, 1, (PUMP_KEY, None)),
    ],
)
def test_the_session_cap_follows_the_stored_ceilings(
    prior: AssetRow | None,
    per_host: int,
    profiles: dict[str, tuple[str, int | None]],
    limit: int,
    known: tuple[str, int | None] | None,
) -> None:
    assert session_limit(prior, per_host, profiles, stored_floor(profiles)) == (limit, known)


@given(
    per_host=st.integers(1, 64),
    ceilings=st.lists(st.one_of(st.none(), st.integers(0, 64)), max_size=5),
    pick=st.integers(0, 5),
)
def test_the_session_cap_never_exceeds_what_was_asked_nor_a_stored_ceiling(
    per_host: int, ceilings: list[int | None], pick: int
) -> None:
    profiles = {model_key_digest(f"m{i}"): (f"m{i}", c) for i, c in enumerate(ceilings)}
    prior = row(model=f"m{pick}") if pick < len(ceilings) else None
    limit, known = session_limit(prior, per_host, profiles, stored_floor(profiles))
    assert limit <= per_host
    if known is not None and known[1] is not None:
        assert limit == min(per_host, known[1])
    else:
        assert limit >= 1, "only a model that failed at its lowest level gets no session"
        measured = [c if c is not None else 1 for c in ceilings]
        assert limit <= max(1, min(measured, default=per_host))


def test_ports_that_spoke_on_the_previous_sighting_are_remembered() -> None:
    services = [
        {"port": 21, "product": "vsftpd"},
        {"port": 80},
        {"port": True, "title": "x"},
        {"port": 8080, "title": "Pump"},
        "garbage",
    ]
    assert spoke_before(row(services=services)) == frozenset({21, 8080})
    assert spoke_before(None) == frozenset()
    assert spoke_before(row(services={"port": 21})) == frozenset()


# --- one host, scripted -----------------------------------------------------------------------------------


def test_a_silent_address_costs_its_liveness_ports_only() -> None:
    p, tally = policy(), RunTally()
    probing = p.start(HOST)
    asked = drive(probing, silent, tally)
    assert asked == list(p.planner.plan())
    assert len(asked) == 2
    assert p.conclude(probing, tally) == (Conclusion.SILENT, None)
    assert (tally.silent, tally.alive, tally.probes_done) == (1, 0, 2)


def test_a_live_host_is_worked_on_every_port_and_becomes_an_asset() -> None:
    p, tally = policy(), RunTally()
    probing = p.start(HOST)
    answers = {
        21: res(21, Outcome.OPEN, b"220 pump ftp ready\r\n"),
        8080: web(8080),
        23: res(23, Outcome.OPEN, b"login: "),
    }
    asked = drive(probing, scripted(answers, lambda port, kind: res(port, Outcome.CLOSED)), tally)
    assert sorted(asked) == sorted(PORTS)
    assert asked[:2] == list(p.planner.plan()), "liveness ports first"
    assert p.conclude(probing, tally) == (Conclusion.ALIVE, None)
    found, matches = p.assess(probing, now_s=NOW_S)
    assert found is not None
    assert found.open_ports == (21, 23, 8080)
    assert found.first_seen_s == found.last_seen_s == NOW_S
    assert found.groups == tuple(m.group for m in matches)
    p.learn(found)
    assert p.planner.plan()[0] in {21, 23, 8080}, "the next address is tried first where this one was open"


def test_a_host_that_stops_answering_after_it_spoke_is_given_up_and_never_safe_to_scan() -> None:
    p, tally = policy(unresponsive_after=2), RunTally()
    probing = p.start(HOST)
    answers = {21: res(21, Outcome.OPEN, b"220 ready\r\n")}
    stalled = scripted(answers, lambda port, kind: res(port, Outcome.TIMEOUT, error="read timed out"))
    asked = drive(probing, stalled, tally)
    assert len(asked) < len(PORTS), "no probe after the give-up"
    conclusion, gone_quiet = p.conclude(probing, tally)
    assert conclusion is Conclusion.ALIVE
    assert gone_quiet is not None
    assert gone_quiet.answered_ports == (21,)
    assert "consecutive timeouts" in gone_quiet.reason
    found, _ = p.assess(probing, now_s=NOW_S)
    assert found is not None
    assert not any(g.startswith("safe to scan") for g in found.groups)


def test_a_host_that_accepts_and_never_speaks_is_reported_hung() -> None:
    p, tally = policy(), RunTally()
    probing = p.start(HOST)
    drive(probing, lambda port, kind: res(port, Outcome.TIMEOUT, error="HTTP head incomplete"), tally)
    conclusion, hung = p.conclude(probing, tally)
    assert conclusion is Conclusion.ALIVE
    assert hung is not None
    assert "hung" in hung.reason
    assert probing.state.stopped()
    found, matches = p.assess(probing, now_s=NOW_S)
    assert found is not None
    assert not any(m.rule.startswith("safe to scan") for m in matches)
    assert any("no fallback group" in n for n in found.notes)


def test_a_model_with_stored_ceiling_zero_is_not_probed_and_reported_from_the_inventory() -> None:
    profiles = {model_key_digest(PUMP_KEY): (PUMP_KEY, 0)}
    p = policy(profiles=profiles, prior={HOST: row(model=PUMP_KEY)})
    probing = p.start(HOST)
    assert probing.left_alone
    kept = p.left_alone(probing)
    assert kept.sessions_limit == 0
    assert kept.known_model == PUMP_KEY
    assert kept.notes == (f"stored profile {PUMP_KEY} has ceiling 0: not probed",)
    assert not p.start("10.0.0.8").left_alone, "a host the inventory does not know is probed (one session)"
    with pytest.raises(ValueError, match="not left alone"):
        p.left_alone(p.start("10.0.0.8"))


def test_unreachable_probes_are_counted_and_say_nothing_about_the_host() -> None:
    p, tally = policy(), RunTally()
    probing = p.start(HOST)
    drive(probing, lambda port, kind: res(port, Outcome.UNREACHABLE, error="no route to host"), tally)
    assert tally.unreachable == 2
    assert tally.unreachable_error == "no route to host"
    assert p.conclude(probing, tally)[0] is Conclusion.SILENT
    assert any("could not reach" in n for n in run_notes(tally))


def test_timeouts_follow_the_hosts_round_trips_within_the_bounds() -> None:
    p, tally = policy(connect_timeout_s=2.0, banner_timeout_s=1.5), RunTally()
    s = p.settings
    probing = p.start(HOST)
    connect_t, banner_t = probing.timeouts(s, tally.network_rtt)
    assert connect_t == s.connect_bounds.initial_s, "before any sample: just under the first SYN retry"
    assert banner_t == s.banner_bounds.clamp(connect_t + BANNER_SERVICE_ALLOWANCE_S)
    probing.record(probing.probe(80), res(80, Outcome.CLOSED, latency_s=0.002), tally)
    connect_t, _ = probing.timeouts(s, tally.network_rtt)
    assert connect_t == s.connect_bounds.floor_s, "a fast answer brings the timeout down to its floor"
    assert probing.udp_timeout(s) == connect_t
    fixed = policy(adaptive_timeouts=False)
    probing = fixed.start(HOST)
    assert probing.timeouts(fixed.settings, tally.network_rtt) == (2.0, 1.5)
    assert probing.udp_timeout(fixed.settings) == 1.5


answers_st = st.dictionaries(
    st.sampled_from(PORTS),
    st.sampled_from(
        [
            res(0, Outcome.OPEN, b"220 hi\r\n"),
            res(0, Outcome.OPEN),
            res(0, Outcome.CLOSED),
            res(0, Outcome.RESET),
            res(0, Outcome.TIMEOUT, error=CONNECT_TIMEOUT),
            res(0, Outcome.TIMEOUT, error="read timed out"),
            res(0, Outcome.UNREACHABLE, error="no route"),
        ]
    ),
)


@settings(max_examples=200, deadline=None)
@given(answers=answers_st, liveness=st.integers(0, 3), strikes=st.integers(1, 4))
def test_any_scripted_host_is_probed_within_its_plan_and_concluded_consistently(
    answers: dict[int, ProbeResult], liveness: int, strikes: int
) -> None:
    p, tally = policy(liveness_ports=liveness, unresponsive_after=strikes), RunTally()
    probing = p.start(HOST)
    plan = p.planner.plan()

    def answer(port: int, kind: ProbeKind) -> ProbeResult:
        base = answers.get(port, res(0, Outcome.TIMEOUT, error=CONNECT_TIMEOUT))
        return res(port, base.outcome, base.data, base.error)

    asked = drive(probing, answer, tally)
    assert len(asked) == len(set(asked)), "no port twice"
    assert set(asked) <= set(PORTS)
    assert asked[: len(plan)] == list(plan)[: len(asked)], "liveness ports first, in the plan's order"
    conclusion, gone = p.conclude(probing, tally)
    assert tally.probes_done == len(asked)
    if conclusion is Conclusion.SILENT:
        assert asked == list(plan), "a silent address costs exactly its liveness ports"
        assert not any(connected(r) for r in probing.results)
        assert gone is None
        return
    found, matches = p.assess(probing, now_s=NOW_S)
    if gone is not None:
        assert not any(m.rule.startswith("safe to scan") for m in matches), "silence is no evidence"
    if found is not None:
        assert set(found.open_ports) == {r.port for r in probing.results if connected(r)}
        assert found.medical == (found.known_model is not None or any(m.medical for m in matches))


# --- assets -----------------------------------------------------------------------------------------------


def test_the_asset_notes_say_what_capped_filtered_and_answered() -> None:
    results = [web(8080), res(21, Outcome.OPEN, b"220 ready\r\n")]
    found, _ = build_asset(
        HOST,
        results,
        settings=DiscoverySettings(per_host_sessions=4),
        limit=2,
        zones=None,
        rules=RULES,
        profiles={},
        prior=None,
        now_s=NOW_S,
        filtered=[443, 23],
    )
    assert found is not None
    assert found.notes == (
        "sessions capped at 2 (stored profile ceiling)",
        "filtered (no answer while the host answered on other ports): 23, 443",
    )
    assert found.zone == "unzoned"
    assert found.zone_kind is None
    assert found.service(8080) is not None
    none, matches = build_asset(
        HOST,
        [res(21, Outcome.CLOSED)],
        settings=DiscoverySettings(),
        limit=1,
        zones=None,
        rules=RULES,
        profiles={},
        prior=None,
        now_s=NOW_S,
    )
    assert (none, matches) == (None, ())


def test_a_known_model_is_medical_and_keeps_its_first_sighting() -> None:
    results = [res(21, Outcome.OPEN, b"220 ready\r\n")]
    base, _ = build_asset(
        HOST,
        results,
        settings=DiscoverySettings(),
        limit=1,
        zones=None,
        rules=RULES,
        profiles={},
        prior=None,
        now_s=NOW_S,
    )
    assert base is not None
    profiles = {model_key_digest(base.model_key): (base.model_key, 3)}
    zones = Zones([Zone("office", ("10.0.0.0/24",), kind="general")])
    found, _ = build_asset(
        HOST,
        results,
        settings=DiscoverySettings(),
        limit=1,
        zones=zones,
        rules=RULES,
        profiles=profiles,
        prior=row(first_seen_s=5.0),
        now_s=NOW_S,
    )
    assert found is not None
    assert (found.known_model, found.ceiling, found.medical) == (base.model_key, 3, True)
    assert (found.first_seen_s, found.last_seen_s) == (5.0, NOW_S)
    assert (found.zone, found.zone_kind) == ("office", "general")
    p = DiscoveryPolicy(DiscoverySettings(), RULES, zones, profiles, {HOST: row(first_seen_s=5.0)})
    findings = Findings()
    alert = p.alert(findings, found, RULES.classify(found))
    assert alert is not None
    assert alert.first_seen.startswith("1970-01-01")
    findings.alerts[HOST] = alert
    assert p.alert(findings, found, RULES.classify(found)) is None, "one alert per host per run"


# --- the inventory ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prior", "found", "expected"),
    [
        ({}, [asset("10.0.0.2")], (("10.0.0.2",), (), ())),
        ({"10.0.0.2": row("10.0.0.2", zone="ward")}, [asset("10.0.0.2", "ward")], ((), (), ())),
        (
            {"10.0.0.2": row("10.0.0.2", zone="ward")},
            [asset("10.0.0.2", "office")],
            ((), (), (Move("10.0.0.2", "ward", "office"),)),
        ),
        ({"10.0.0.2": row("10.0.0.2")}, [], ((), ("10.0.0.2",), ())),
        ({"10.9.9.9": row("10.9.9.9")}, [], ((), (), ())),  # not a target: not gone
        # Rows the interrupted part of this same scan (id 7) wrote: compared with what they replaced.
        (
            {"10.0.0.2": row("10.0.0.2", zone="office", scan_id=7)},
            [asset("10.0.0.2", "office")],
            (("10.0.0.2",), (), ()),
        ),
        (
            {"10.0.0.2": row("10.0.0.2", zone="office", scan_id=7, previous_zone="ward", previous_scan_id=3)},
            [asset("10.0.0.2", "office")],
            ((), (), (Move("10.0.0.2", "ward", "office"),)),
        ),
    ],
)
def test_inventory_changes_are_new_gone_and_moved_against_the_inventory_before_the_scan(
    prior: dict[str, AssetRow], found: list[Asset], expected: tuple[object, ...]
) -> None:
    assert inventory_changes(["10.0.0.2", "10.0.0.3"], found, prior, scan_id=7) == expected
    assert inventory_changes(["10.0.0.2"], found, prior, scan_id=None) == ((), (), ())


hosts_st = st.lists(st.integers(1, 40).map(lambda n: f"10.0.0.{n}"), unique=True, max_size=12)


@given(
    targets=hosts_st,
    found_idx=st.sets(st.integers(0, 11)),
    prior_idx=st.sets(st.integers(0, 11)),
    zones=st.lists(st.sampled_from(["ward", "office"]), min_size=12, max_size=12),
)
def test_inventory_changes_partition_the_hosts(
    targets: list[str], found_idx: set[int], prior_idx: set[int], zones: list[str]
) -> None:
    found = [asset(h, zones[i]) for i, h in enumerate(targets) if i in found_idx]
    prior = {h: row(h, zone="ward") for i, h in enumerate(targets) if i in prior_idx}
    new, gone, moved = inventory_changes(targets, found, prior, scan_id=99)
    found_hosts = {a.host for a in found}
    assert set(new) == found_hosts - set(prior)
    assert set(gone) == set(prior) - found_hosts
    assert {m.host for m in moved} == {a.host for a in found if a.host in prior and a.zone != "ward"}
    for seq in (new, gone, [m.host for m in moved]):
        assert list(seq) == sorted(seq, key=addr_key)


def test_addresses_sort_numerically_ipv4_first() -> None:
    hosts = ["10.0.0.10", "::1", "10.0.0.9", "not-an-address", "9.255.255.255"]
    assert sorted(hosts, key=addr_key) == ["9.255.255.255", "10.0.0.9", "10.0.0.10", "::1", "not-an-address"]


@given(hosts=hosts_st, done=st.sets(st.integers(0, 11)), seed=st.integers(0, 2**32))
def test_the_host_order_is_a_seeded_shuffle_of_what_is_left(
    hosts: list[str], done: set[int], seed: int
) -> None:
    finished = {h for i, h in enumerate(hosts) if i in done}
    todo = host_order(hosts, finished, seed)
    assert sorted(todo) == sorted(set(hosts) - finished)
    assert todo == host_order(hosts, finished, seed), "the same seed, the same order"


# --- the run and its report -------------------------------------------------------------------------------


def test_the_report_is_assembled_by_address_with_groups_changes_and_counts() -> None:
    config = DiscoverySettings(ports="21,80", global_rate=500)
    findings = Findings(notes=["a note"])
    for h, g in (("10.0.0.10", ("B",)), ("10.0.0.9", ("A", "B"))):
        findings.assets[h] = asset(h, groups=g)
    findings.unresponsive.extend(
        [
            HostProbing("10.0.0.30", 1, None, None, policy().start("x").state, {}).unresponsive("r"),
            HostProbing("10.0.0.4", 1, None, None, policy().start("x").state, {}).unresponsive("r"),
        ]
    )
    tally = RunTally(probes=12, alive=2, silent=1)
    plan = ScanPlan(
        hosts=("10.0.0.9", "10.0.0.10", "10.0.0.11"),
        todo=("10.0.0.9", "10.0.0.10"),
        done_before=frozenset({"10.0.0.11"}),
        scan_id=4,
        parallel=2,
    )
    report = assemble_report(
        findings, plan, tally, config, prior={"10.0.0.11": row("10.0.0.11")}, wall_time_s=3.5
    )
    assert [a.host for a in report.assets] == ["10.0.0.9", "10.0.0.10"]
    assert {g: [a.host for a in m] for g, m in report.groups.items()} == {
        "A": ["10.0.0.9"],
        "B": ["10.0.0.9", "10.0.0.10"],
    }
    assert [u.host for u in report.unresponsive] == ["10.0.0.4", "10.0.0.30"]
    assert (report.new, report.gone) == (("10.0.0.9", "10.0.0.10"), ("10.0.0.11",))
    assert (report.hosts_scanned, report.hosts_resumed, report.scan_id) == (2, 1, 4)
    assert (report.hosts_alive, report.probes_sent, report.max_hosts_in_parallel) == (2, 12, 2)
    assert report.global_rate == 500.0
    assert isinstance(report.global_rate, float)
    assert report.params == config.params()
    assert report.notes == ("a note",)
    assert report.wall_time_s == 3.5


def test_progress_counts_the_run_so_far() -> None:
    p, tally = policy(), RunTally(probes=10, probes_done=8, alive=1, silent=3, hosts_done=4)
    findings = Findings()
    findings.assets["10.0.0.2"] = asset("10.0.0.2")
    plan = ScanPlan(
        hosts=tuple(f"10.0.0.{i}" for i in range(8)),
        todo=tuple(f"10.0.0.{i}" for i in range(8)),
        done_before=frozenset(),
        scan_id=None,
        parallel=2,
    )
    progress = p.progress(tally, findings, plan, "10.0.0.2", elapsed_s=2.0)
    assert (progress.hosts_done, progress.hosts_total, progress.assets_found) == (4, 8, 1)
    assert (progress.hosts_alive, progress.hosts_silent, progress.probes_sent) == (1, 3, 10)
    assert progress.elapsed_s == 2.0
    assert progress.eta_s is not None
    assert progress.eta_s >= 0


def test_a_resumed_scan_takes_back_only_its_own_finished_hosts() -> None:
    p = policy()
    plan = ScanPlan(
        hosts=("10.0.0.2", "10.0.0.3"),
        todo=("10.0.0.3",),
        done_before=frozenset({"10.0.0.2"}),
        scan_id=7,
        parallel=1,
    )
    findings = Findings()
    rows = [row("10.0.0.2", scan_id=7), row("10.0.0.3", scan_id=7), row("10.0.0.4", scan_id=6)]
    alerts: list[dict[str, object]] = [
        {"host": "10.0.0.2", "scan_id": 7, "model": "m"},
        {"host": "10.0.0.4", "scan_id": 6},
        {"host": 5, "scan_id": 7},
    ]
    p.restore(findings, rows, alerts, plan)
    assert list(findings.assets) == ["10.0.0.2"]
    assert findings.assets["10.0.0.2"].notes == ("finished before resume",)
    assert list(findings.alerts) == ["10.0.0.2"]
    assert findings.alerts["10.0.0.2"].model == "m"


def test_the_run_notes_say_what_the_webhook_lost() -> None:
    assert run_notes(RunTally()) == []
    (note,) = run_notes(RunTally(), webhook_failures=2, webhook_url="http://127.0.0.1:9/x")
    assert note.startswith("2 alert(s) could not be delivered to the webhook http://127.0.0.1:9/x")


@given(
    total=st.integers(1, 10_000),
    done_frac=st.floats(0, 1),
    per_address=st.floats(1, 100),
    rate=st.floats(0.1, 5000),
    elapsed=st.floats(0, 1e5),
    tail=st.floats(-1, 10),
    in_flight=st.integers(0, 4096),
)
def test_the_time_left_is_never_negative_and_zero_when_done(
    total: int, done_frac: float, per_address: float, rate: float, elapsed: float, tail: float, in_flight: int
) -> None:
    done = int(total * done_frac)
    probes_done = int(done * per_address)
    eta = estimate_remaining_s(
        done=done,
        total=total,
        elapsed_s=elapsed,
        probes_done=probes_done,
        probes_sent=probes_done,
        rate_per_s=rate,
        tail_s=tail,
        in_flight=in_flight,
    )
    if done == 0:
        assert eta is None
    elif done >= total:
        assert eta == 0.0
    else:
        assert eta is not None
        assert eta >= 0.0
