"""fragileprobe's safety promises as hypothesis properties across modules, checked on the device's side.

tests/test_limiter.py proves the limiter's invariant with a state machine and tests/test_core_properties.py
proves, on the Guard and in the audit log, that nothing is sent outside the scope and nothing after a
declaration. These properties ask the *emulated device* instead (its own session and connection counters),
through the whole stack:

* Guard: under random programs of probes of every kind, raw streams, cancellations and ceiling changes, the
  device never holds more sessions than the highest ceiling in force, its heartbeat's included (the
  virtual-time versions over device models written in tests/test_device_side.py check the exact bound).
* discover(): for random target sets, scopes and per-host limits over a small fleet, a device outside the
  scope or the targets receives nothing, an out-of-scope target refuses the whole scan before any packet,
  and no device ever holds more than the per-host limit.
* characterize(): for random crash thresholds, between the watchdog's declaration and the recovery hook not
  one connection reaches the device; the level that crashed it really reached its threshold; and the
  recommended ceiling (which counts the heartbeat's session, as a Guard's does) stays below the threshold.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from fragileprobe import (
    Guard,
    HttpHeartbeat,
    ProbeError,
    Scope,
    ScopeError,
    Target,
)
from fragileprobe._characterize import characterize
from fragileprobe._discovery_run import discover
from fragileprobe.emulator import EmulatedDevice, EmulatedPump

if TYPE_CHECKING:
    from collections.abc import Callable

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

# --- Guard: the device never feels more than the ceiling ---------------------------------------------------

KINDS = ["tcp", "banner", "http", "stream", "run"]
ops = st.one_of(
    st.tuples(st.just("probe"), st.sampled_from(KINDS), st.integers(1, 3)),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
    st.tuples(st.just("ceiling"), st.integers(2, 4)),
    st.tuples(st.just("sleep"), st.integers(0, 30)),
)


@settings(FIXTURE_OK, max_examples=20)
@given(program=st.lists(ops, min_size=1, max_size=10))
def test_the_device_never_holds_more_than_the_ceiling_heartbeat_included(
    loopback_hosts: Callable[[], str], program: list[tuple[Any, ...]]
) -> None:
    host = loopback_hosts()
    ceilings = [2]

    async def example() -> tuple[int, int]:
        # A sturdy pump (never hangs at these levels), slow enough that sessions overlap.
        async with EmulatedPump(
            host,
            threshold=40,
            jitter=0,
            seed=5,
            base_latency_s=0.002,
            slowdown_s_per_session=0.002,
            boot_delay_s=0.05,
        ) as pump:
            ports = [pump.port(p) for p in (21, 22, 23)]
            target = Target(host, ports=ports, heartbeat=HttpHeartbeat(port=pump.web_port, timeout_s=0.5))
            scopes: list[anyio.CancelScope] = []
            with capture_logs(), anyio.fail_after(30):
                async with Guard(target, ceiling=2, scope=Scope([host]), interval_s=0.03) as guard:

                    async def hold_stream(port: int) -> None:
                        async with guard.connect(port) as stream:
                            with anyio.move_on_after(0.05), contextlib.suppress(anyio.EndOfStream):
                                await stream.receive(1024)

                    async def session(kind: str, n: int) -> None:
                        port = ports[n % len(ports)]
                        if kind == "tcp":
                            await guard.tcp_connect(port)
                        elif kind == "banner":
                            await guard.grab_banner(port, read_timeout_s=0.1)
                        elif kind == "http":
                            await guard.http_get(pump.web_port, read_timeout_s=0.2)
                        elif kind == "stream":
                            await hold_stream(port)
                        else:
                            await guard.run(anyio.sleep, 0.01)

                    async def prober(kind: str, scope: anyio.CancelScope) -> None:
                        with scope:
                            for n in range(12):
                                try:
                                    await session(kind, n)
                                except ProbeError:
                                    await anyio.sleep(0.01)

                    async with anyio.create_task_group() as tg:
                        for op in program:
                            if op[0] == "probe":
                                for _ in range(op[2]):
                                    scope = anyio.CancelScope()
                                    scopes.append(scope)
                                    tg.start_soon(prober, op[1], scope)
                            elif op[0] == "cancel" and scopes:
                                scopes[op[1] % len(scopes)].cancel()
                            elif op[0] == "ceiling":
                                ceilings.append(op[1])
                                tg.start_soon(guard.set_ceiling, op[1])
                            elif op[0] == "sleep":
                                await anyio.sleep(op[1] / 1000)
                            await anyio.lowlevel.checkpoint()
                    assert not guard.device_down
                    ours = guard.stats.peak_in_flight
                    await guard.wait_let_go()
                    assert guard.limiter.in_flight == 0
            return ours, pump.stats.peak_sessions

    with capture_logs():
        ours, device_peak = anyio.run(example)
    assert ours <= max(ceilings) - 1  # the heartbeat keeps one of the N places
    # A cancelled session keeps its slot until the pump has let go of it, so cancellations cannot pile
    # sessions up on the device: its own count stays within N, the heartbeat's session included.
    assert device_peak <= max(ceilings), (device_peak, ceilings, program)


# --- discovery: scope, targets and per-host limits, as the devices see them --------------------------------

FLEET = 5
MODELS = ("infusion-pump", "syringe-pump", "patient-monitor", "workstation", "printer")


@settings(FIXTURE_OK, max_examples=10)
@given(
    in_scope=st.sets(st.integers(0, FLEET - 1), min_size=1),
    targeted=st.sets(st.integers(0, FLEET - 1), min_size=1),
    per_host=st.integers(1, 3),
)
def test_discovery_touches_only_targets_in_scope_and_stays_within_the_per_host_limit(
    loopback_hosts: Callable[[], str], in_scope: set[int], targeted: set[int], per_host: int
) -> None:
    hosts = [loopback_hosts() for _ in range(FLEET)]

    async def example() -> tuple[list[int], list[int], bool]:
        async with contextlib.AsyncExitStack() as stack:
            devices = [
                await stack.enter_async_context(EmulatedDevice(h, model=m, seed=i, boot_delay_s=0.05))
                for i, (h, m) in enumerate(zip(hosts, MODELS, strict=True))
            ]
            ports = sorted({p for d in devices for p in d.ports.values()})
            aliases = {b: m for d in devices for m, b in d.ports.items() if b != m}
            refused = False
            scope = Scope([hosts[i] for i in in_scope])
            with capture_logs(), anyio.fail_after(60):
                try:
                    await discover(
                        [hosts[i] for i in sorted(targeted)],
                        scope=scope,
                        ports=ports,
                        port_aliases=aliases,
                        per_host_sessions=per_host,
                        rate_per_host=200,
                        connect_timeout_s=0.5,
                        banner_timeout_s=0.15,
                    )
                except ScopeError:
                    refused = True
            stats = [d.stats for d in devices]
            return [s.connects_total for s in stats], [s.peak_sessions for s in stats], refused

    with capture_logs():
        connects, peaks, refused = anyio.run(example)
    assert refused == (not targeted <= in_scope), "refused exactly when a target lies outside the scope"
    for i in range(FLEET):
        if refused or i not in targeted:
            assert connects[i] == 0, f"device {i} was not a target in scope but received {connects[i]}"
        else:
            assert connects[i] > 0
        assert peaks[i] <= per_host, (i, peaks[i], per_host)


# --- characterize: nothing between declaration and recovery; the result is true to the device -------------

TIMINGS: dict[str, Any] = {
    "dwell_s": 0.15,
    "hold_s": 0.02,
    "interval_s": 0.03,
    "heartbeat_timeout_s": 0.2,
    "healthy_beats": 2,
    "recovery_timeout_s": 5.0,
    "baseline_beats": 3,
    "read_timeout_s": 0.15,
    "connect_timeout_s": 0.5,
}
# After the declaration, a connection our side started just before it may still be accepted by the
# emulator's (same event loop) accept task a moment later; this grace covers that scheduling, no more.
ACCEPT_GRACE_S = 0.05


@pytest.mark.slow
@settings(FIXTURE_OK, max_examples=6)
@given(threshold=st.integers(2, 8), seed=st.integers(0, 1000))
def test_characterize_sends_nothing_while_down_and_its_ceiling_is_true_to_the_device(
    loopback_hosts: Callable[[], str], threshold: int, seed: int
) -> None:
    host = loopback_hosts()

    async def example() -> tuple[Any, list[int], list[float]]:
        async with EmulatedPump(host, threshold=threshold, jitter=0, seed=seed, boot_delay_s=0.05) as pump:
            between: list[int] = []
            declared: list[float] = []

            async def recovery() -> None:
                # Called after the declaration: nothing may have reached the device since.
                down_at = guard_timeline()[-1]
                declared.append(down_at)
                between.append(pump.connects_since(down_at + ACCEPT_GRACE_S))
                await pump.power_cycle()

            def guard_timeline() -> list[float]:
                # The watchdog's declaration time (time.monotonic), from its log event.
                return [e["at_s"] for e in logs if e.get("event") == "watchdog.device_down"]

            target = Target(
                host,
                ports=tuple(pump.ports.values()),
                heartbeat=HttpHeartbeat(port=pump.web_port, timeout_s=0.2),
            )
            with capture_logs() as logs, anyio.fail_after(90):
                char = await characterize(
                    target,
                    scope=Scope([host]),
                    ladder=tuple(range(1, 11)),
                    trials=2,
                    recovery=recovery,
                    **TIMINGS,
                )
            return char, between, declared

    t0 = time.monotonic()
    char, between, declared = anyio.run(example)
    assert declared, "the ladder reaches every threshold drawn here: the device went down"
    assert all(n == 0 for n in between), f"connections reached the device while declared down: {between}"
    assert char.crashes == len(declared)
    # The level that crashed it really brought it to its threshold: a level counts the heartbeat's session.
    assert all(level >= threshold for level in char.crash_levels), (threshold, char.crash_levels)
    # Every level that passed stayed below it, and so does the recommendation: a Guard held to it (its
    # heartbeat included) never brings the device to its threshold.
    passed = [lv.level for t in char.trials for lv in t.levels if lv.outcome.value == "passed"]
    assert all(level < threshold for level in passed), (threshold, passed)
    assert char.safe_ceiling is not None
    assert char.safe_ceiling < threshold, (threshold, char.safe_ceiling, char.summary())
    assert char.safe_ceiling <= min(char.crash_levels) - 1
    assert time.monotonic() - t0 < 90


# --- the scope's fast lookup agrees with the networks it was given -----------------------------------------


@st.composite
def networks_and_addresses(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    base = 0x20010DB8 << 96 if v6 else 0x7F000000  # 2001:db8::/32 or 127.0.0.0/8: documentation, loopback
    span = 1 << (bits - 32 if v6 else 24)

    def addr(offset: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(base + offset % span)

    nets = []
    for _ in range(draw(st.integers(1, 30))):
        prefix = draw(st.integers(bits - 12, bits))
        nets.append(str(ipaddress.ip_network(f"{addr(draw(st.integers(0, 5000)))}/{prefix}", strict=False)))
    probes = [str(addr(draw(st.integers(0, 6000)))) for _ in range(draw(st.integers(1, 40)))]
    return nets, probes


@settings(max_examples=300, deadline=None)
@given(data=networks_and_addresses())
def test_scope_membership_is_exactly_the_union_of_its_networks(data: tuple[list[str], list[str]]) -> None:
    """The bisect index over merged intervals admits an address exactly when one of the given networks
    contains it (never more: nothing outside the scope; never less: no refusal of an authorized host)."""
    nets, probes = data
    scope = Scope(nets)
    networks = [ipaddress.ip_network(n) for n in nets]
    for p in probes:
        a = ipaddress.ip_address(p)
        expected = any(a.version == n.version and a in n for n in networks)
        assert (p in scope) is expected, (p, nets)
        if expected:
            assert scope.check(p) == p
        else:
            with pytest.raises(ScopeError):
                scope.check(p)
