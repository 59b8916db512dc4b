"""The core's promises as properties over random inputs and random interleavings (hypothesis).

* Nothing is sent outside the scope: for random scopes around a real loopback listener, an out-of-scope
  target raises ScopeError and the listener sees no connection and the audit log no ``probe.connect``;
  an in-scope one is reached.
* After the watchdog declares a device down no new session starts: random programs of probes, task
  cancellations, ceiling changes and device failures against the emulated pump; in the audit log no
  ``probe.connect`` to the device follows ``watchdog.device_down``.

(The limiter's ceiling invariant is proved by the state machine in test_limiter.py.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from fragileprobe import (
    DeviceDownError,
    Guard,
    HttpHeartbeat,
    Scope,
    ScopeError,
    Target,
    TcpHeartbeat,
    grab_banner,
    parse_targets,
    tcp_connect,
)
from fragileprobe.emulator import DeviceState, EmulatedPump

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

# --- scope ----------------------------------------------------------------------------------------------


@st.composite
def networks_near(draw: st.DrawFn, target: int) -> tuple[int, int]:
    """A network whose base differs from the target in random (mostly low) bits, so both in- and
    out-of-scope cases are common; some are far away (other /8s, non-loopback: only ever data here)."""
    prefix = draw(st.integers(8, 32))
    flip = draw(st.integers(0, 2**32 - 1)) >> draw(st.integers(0, 32))
    return (target ^ flip) & 0xFFFFFFFF, prefix


def in_networks(address: int, nets: list[tuple[int, int]]) -> bool:
    """Reference membership by integer arithmetic (independent of the ipaddress-based Scope)."""
    for base, prefix in nets:
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        if address & mask == base & mask:
            return True
    return False


@FIXTURE_OK
@given(data=st.data())
def test_nothing_is_sent_outside_the_scope(loopback_host: str, data: st.DataObject) -> None:
    target = int(ipaddress.IPv4Address(loopback_host))
    nets = data.draw(st.lists(networks_near(target), min_size=1, max_size=3))
    scope = Scope([str(ipaddress.IPv4Network(n, strict=False)) for n in nets], allow_large=True)
    inside = in_networks(target, nets)

    async def example() -> tuple[int, list[dict[str, Any]]]:
        accepts = 0

        async def count(stream: anyio.abc.SocketStream) -> None:
            nonlocal accepts
            accepts += 1
            await stream.aclose()

        listener = await anyio.create_tcp_listener(local_host=loopback_host, local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, count)
            with capture_logs() as logs:
                attempts = [
                    lambda: tcp_connect(loopback_host, port, scope=scope),
                    lambda: grab_banner(loopback_host, port, scope=scope, read_timeout_s=0.05),
                ]
                for attempt in attempts:
                    if inside:
                        await attempt()
                    else:
                        with pytest.raises(ScopeError):
                            await attempt()
                guard = Guard(
                    Target(loopback_host, ports=[port], heartbeat=TcpHeartbeat(port, timeout_s=0.5)),
                    ceiling=2,
                    scope=scope,
                    interval_s=0.05,
                )
                if inside:
                    async with guard:
                        await guard.tcp_connect(port)
                else:
                    with pytest.raises(ScopeError):
                        async with guard:
                            pytest.fail("entered a guard outside the scope")
            await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        return accepts, logs

    accepts, logs = anyio.run(example)
    connects = [e for e in logs if e["event"] == "probe.connect"]
    if inside:
        assert accepts >= 3
        assert parse_targets([loopback_host], scope=scope) == [loopback_host]
    else:
        assert accepts == 0
        assert connects == []
        with pytest.raises(ScopeError):
            parse_targets([loopback_host], scope=scope)


# --- no new session after the declaration ---------------------------------------------------------------

INTERVAL_S = 0.03
BEAT_TIMEOUT_S = 0.1

actions = st.one_of(
    st.tuples(st.just("probe"), st.sampled_from(["tcp", "banner"]), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),
    st.tuples(st.just("ceiling"), st.integers(2, 10)),
    st.tuples(st.just("hang")),
    st.tuples(st.just("sleep"), st.integers(0, 40)),
)


@dataclass
class Run:
    scopes: list[anyio.CancelScope] = field(default_factory=list)
    ceilings: list[int] = field(default_factory=list)
    refused: int = 0
    hung: bool = False


@settings(FIXTURE_OK, max_examples=20)
@given(program=st.lists(actions, min_size=1, max_size=12))
def test_no_session_starts_after_the_device_is_declared_down(
    loopback_hosts: Any, program: list[tuple[Any, ...]]
) -> None:
    host: str = loopback_hosts()  # a fresh pump address per example: nothing carries over

    async def example() -> tuple[list[dict[str, Any]], Guard, EmulatedPump, Run]:
        run = Run(ceilings=[3])
        async with EmulatedPump(
            host, threshold=7, jitter=0, seed=11, base_latency_s=0.001, slowdown_s_per_session=0.001
        ) as pump:
            ports = [pump.port(p) for p in (21, 22, 23, 8080)]
            heartbeat = HttpHeartbeat(port=pump.web_port, timeout_s=BEAT_TIMEOUT_S)
            target = Target(host, ports=ports, heartbeat=heartbeat)
            with capture_logs() as logs:
                async with (
                    Guard(target, ceiling=3, scope=Scope([f"{host}/32"]), interval_s=INTERVAL_S) as guard,
                    anyio.create_task_group() as tg,
                ):

                    async def prober(kind: str, scope: anyio.CancelScope) -> None:
                        with scope:
                            for n in range(30):
                                port = ports[n % len(ports)]
                                try:
                                    if kind == "tcp":
                                        await guard.tcp_connect(port)
                                    else:
                                        await guard.grab_banner(port, read_timeout_s=0.5)
                                except DeviceDownError:
                                    run.refused += 1
                                    return

                    for action in program:
                        if action[0] == "probe":
                            for _ in range(action[2]):
                                scope = anyio.CancelScope()
                                run.scopes.append(scope)
                                tg.start_soon(prober, action[1], scope)
                        elif action[0] == "cancel" and run.scopes:
                            run.scopes[action[1] % len(run.scopes)].cancel()
                        elif action[0] == "ceiling":
                            run.ceilings.append(action[1])
                            tg.start_soon(guard.set_ceiling, action[1])
                        elif action[0] == "hang":
                            pump.hang()
                        elif action[0] == "sleep":
                            await anyio.sleep(action[1] / 1000)
                        await anyio.lowlevel.checkpoint()
                    # Stop the traffic, so the pump's state cannot change any more; a hung pump must then be
                    # declared down within interval + timeout (+ slack).
                    for scope in run.scopes:
                        scope.cancel()
                    await anyio.lowlevel.checkpoint()
                    run.hung = pump.state is DeviceState.HUNG
                    with anyio.move_on_after(INTERVAL_S + BEAT_TIMEOUT_S + 0.3):
                        while run.hung and not guard.device_down:
                            await guard.watchdog.next_beat()  # type: ignore[union-attr]
                    await anyio.sleep(3 * INTERVAL_S)
                    tg.cancel_scope.cancel()
            return logs, guard, pump, run

    logs, guard, _pump, run = anyio.run(example)
    mine = [e for e in logs if e.get("host") == host]
    names = [e["event"] for e in mine]
    if run.hung:
        assert guard.device_down, "a hung pump went unnoticed"
    if "watchdog.device_down" in names:
        after = names[names.index("watchdog.device_down") + 1 :]
        assert "probe.connect" not in after, "a connection was attempted after the declaration"
        assert "guard.session_refused" in after or run.refused == 0 or "guard.session_cancelled" in after
    assert guard.stats.peak_in_flight <= max(run.ceilings)
    assert guard.stats.in_flight == 0
