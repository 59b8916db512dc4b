"""The per-host policy (pure): liveness first, filtered is not hung, silence after speaking is a strike."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fragileprobe._hostpolicy import (
    HUNG_REASON,
    LIKELY_PORTS,
    HostPolicy,
    LivenessPlanner,
    ProbeKind,
    Seen,
    classify,
)
from fragileprobe._probes import HttpResult, Outcome, Phase, ProbeResult

PORTS = (21, 22, 23, 80, 443, 8080)


def result(
    outcome: Outcome, data: bytes = b"", error: str | None = None, phase: Phase | None = None
) -> ProbeResult:
    return ProbeResult(
        host="10.0.0.1",
        port=21,
        outcome=outcome,
        latency_s=0.01,
        data=data,
        error=error,
        started_at_s=0.0,
        duration_s=0.02,
        phase=phase,
    )


def drive(policy: HostPolicy, verdicts: dict[int, Seen], default: Seen) -> list[int]:
    """Feed the policy one verdict per port it asks for; return the ports in the order asked."""
    asked = []
    while (port := policy.next_port()) is not None:
        asked.append(port)
        policy.observe(port, verdicts.get(port, default))
    return asked


def test_classify_tells_silent_space_from_a_stalled_service() -> None:
    assert (
        classify(result(Outcome.TIMEOUT, phase=Phase.CONNECT), ProbeKind.BANNER, expects_banner=True)
        is Seen.NO_ANSWER
    )
    assert (
        classify(result(Outcome.TIMEOUT, phase=Phase.EXCHANGE), ProbeKind.HTTP, expects_banner=False)
        is Seen.STALLED
    )
    assert classify(result(Outcome.OPEN), ProbeKind.BANNER, expects_banner=True) is Seen.STALLED
    assert classify(result(Outcome.OPEN), ProbeKind.BANNER, expects_banner=False) is Seen.ACCEPTED
    assert classify(result(Outcome.OPEN), ProbeKind.CONNECT, expects_banner=True) is Seen.ACCEPTED
    assert classify(result(Outcome.CLOSED), ProbeKind.CONNECT, expects_banner=False) is Seen.REFUSED
    banner = result(Outcome.OPEN, b"220 ready\r\n")
    assert classify(banner, ProbeKind.BANNER, expects_banner=True) is Seen.SPOKE
    http = HttpResult(
        host="10.0.0.1",
        port=80,
        outcome=Outcome.OPEN,
        latency_s=0.01,
        data=b"HTTP/1.0 200 OK",
        error=None,
        started_at_s=0.0,
        duration_s=0.1,
        status=200,
    )
    assert classify(http, ProbeKind.HTTP, expects_banner=False) is Seen.SPOKE


def test_a_silent_address_costs_only_its_liveness_ports() -> None:
    policy = HostPolicy(ports=PORTS, liveness=(80, 22), unresponsive_after=3)
    assert drive(policy, {}, Seen.NO_ANSWER) == [80, 22]
    assert policy.silent
    assert not policy.alive


def test_any_answer_during_liveness_works_the_host_fully() -> None:
    """Refused (RST) counts as alive: a host that answers on any port gets every port."""
    policy = HostPolicy(ports=PORTS, liveness=(80, 22), unresponsive_after=3)
    asked = drive(policy, {22: Seen.REFUSED}, Seen.NO_ANSWER)
    assert sorted(asked) == sorted(PORTS)
    assert policy.alive
    assert policy.gave_up is None
    assert sorted(policy.filtered) == [21, 23, 80, 443, 8080], "the liveness miss became a filtered port"


def test_a_firewalled_host_is_never_given_up_for_its_filtered_ports() -> None:
    """The issue's pumps: one open web port, a firewall dropping SYNs to 99 closed ports."""
    ports = tuple(range(1, 101))
    policy = HostPolicy(ports=ports, liveness=(80, 22), unresponsive_after=3)
    asked = drive(policy, {80: Seen.SPOKE}, Seen.NO_ANSWER)
    assert len(asked) == 100
    assert policy.gave_up is None
    assert len(policy.filtered) == 99


def test_a_host_that_speaks_once_then_accepts_silently_is_left_alone() -> None:
    """Issue 11's device: after its first banner, connects succeed and nothing comes; banner and web ports
    count, so it gets `unresponsive_after` more connects, not 15."""
    ports = (21, 22, 23, 80, 443, 8080, 25, 110, 143, 3306, 5900, 8000, 8888, 631, 5985, 9000)
    policy = HostPolicy(ports=ports, liveness=(21, 22), unresponsive_after=3)
    asked = []
    while (port := policy.next_port()) is not None:
        asked.append(port)
        if port == 21:
            policy.observe(port, Seen.SPOKE)
        elif port in (443,):
            policy.observe(port, Seen.ACCEPTED)
        else:
            policy.observe(port, Seen.STALLED)
    assert policy.gave_up is not None
    assert "3 consecutive timeouts" in policy.gave_up
    assert len(asked) == 4, asked


def test_ports_that_spoke_on_the_previous_sighting_expect_an_answer() -> None:
    policy = HostPolicy(
        ports=(9000, 9001), liveness=(9000,), unresponsive_after=1, spoke_before=frozenset({9001})
    )
    assert not policy.expects_banner(9000, 9000)
    assert policy.expects_banner(9001, 9001)
    assert policy.expects_banner(10021, 21), "a banner port by its well-known alias"


verdicts = st.sampled_from(list(Seen))


@given(st.lists(verdicts, min_size=1, max_size=60), st.integers(1, 5))
def test_connect_timeouts_never_count_toward_giving_up(seq: list[Seen], after: int) -> None:
    """Property: removing every NO_ANSWER from a history never changes whether the host is given up on,
    and a history without SPOKE (and without a previous sighting) is never given up on mid-scan."""
    ports = tuple(range(1, len(seq) + 1))

    def run(history: list[Seen]) -> HostPolicy:
        policy = HostPolicy(ports=ports, liveness=(), unresponsive_after=after)
        for port, seen in zip(ports, history, strict=False):
            policy.observe(port, seen)
        return policy

    full = run(seq)
    without = run([s for s in seq if s is not Seen.NO_ANSWER])
    assert (full.gave_up is None) == (without.gave_up is None)
    if Seen.SPOKE not in seq:
        assert full.gave_up is None
    assert len(full.filtered) + len(full._quiet) == seq.count(Seen.NO_ANSWER)


@given(st.lists(st.sampled_from(PORTS), max_size=6, unique=True), st.data())
def test_the_policy_never_asks_for_a_port_twice_nor_after_giving_up(
    liveness: list[int], data: st.DataObject
) -> None:
    policy = HostPolicy(ports=PORTS, liveness=tuple(liveness), unresponsive_after=2)
    asked: list[int] = []
    while (port := policy.next_port()) is not None:
        assert policy.gave_up is None
        asked.append(port)
        policy.observe(port, data.draw(verdicts))
    assert len(asked) == len(set(asked))
    assert set(asked) <= set(PORTS)
    if policy.alive and policy.gave_up is None:
        assert sorted(asked) == sorted(PORTS), "a live host is worked on every port"


def test_the_planner_starts_from_the_likely_ports_and_learns_the_network() -> None:
    planner = LivenessPlanner(PORTS, count=2)
    assert planner.plan() == (80, 22)
    assert [p for p in LIKELY_PORTS if p in PORTS][:2] == [80, 22]
    # A network of pumps that only listen on 23 and 8080: the cover moves to them.
    for _ in range(5):
        planner.learn([23, 8080])
    planner.learn([80])
    assert planner.plan() == (8080, 80)
    # Port aliases rank a moved port by its well-known number.
    moved = LivenessPlanner((10021, 10080, 10022), count=1, hints={10080: 80, 10021: 21, 10022: 22})
    assert moved.plan() == (10080,)
    assert LivenessPlanner(PORTS, count=0).plan() == tuple(sorted(PORTS, key=LIKELY_PORTS.index))


def test_a_host_that_accepted_and_never_spoke_is_concluded_hung() -> None:
    """Rule 4: connections accepted, no answer anywhere, a request timed out: given up on after the fact."""
    hung = HostPolicy(ports=PORTS, liveness=(80,), unresponsive_after=3)
    drive(hung, {}, Seen.STALLED)
    assert hung.gave_up is None, "never spoke, so no strikes: the rule applies at the end"
    assert hung.conclude() == HUNG_REASON
    assert hung.stopped()
    quiet = HostPolicy(ports=PORTS, liveness=(80,), unresponsive_after=3)
    drive(quiet, {}, Seen.ACCEPTED)
    assert quiet.conclude() is None, "nothing was due, nothing went unanswered"
    spoke = HostPolicy(ports=PORTS, liveness=(80,), unresponsive_after=9)
    drive(spoke, {21: Seen.SPOKE}, Seen.STALLED)
    assert spoke.conclude() is None, "a host that spoke is judged by its strikes (rule 3)"
