"""N, counted on the device's side: properties over device models written here, in virtual time.

The device models below are not the emulator's: a console that greets late and only notices our close when
it next polls, services that close or reset sessions by themselves, a web port that answers and hangs up,
and an application pool that wedges (stops reading and answering everything) once it holds a threshold of
sessions. The counts are the fake network's: a session counts from the device's accept until the device's
own code closes it, so "N" is checked exactly where a fragile device feels it.

Properties (hypothesis over interleavings of probes, raw streams, caller timeouts and cancellations,
exceptions inside checks, ceiling changes and device wedges):

* no session is accepted by the device while that takes it past the Guard's ceiling in force, its
  heartbeat's included, as long as the device lets go of a session within the linger bound after our close;
* nothing new reaches a device after it was declared down;
* every slot comes back within the linger bound once the work stops.

Every run is in virtual time (fragileprobe.testing.run_virtual): exact, and independent of machine load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from fragileprobe import DeviceDownError, Guard, HttpHeartbeat, ProbeError, Scope, Target, TcpHeartbeat
from fragileprobe.testing import DeviceSocket, FakeNetwork, VirtualTimeDeadlock, run_virtual

HOST = "127.0.0.42"
WEB = 8080
INTERVAL_S = 0.25
BEAT_TIMEOUT_S = 0.5
LINGER_S = 2.0  # longer than the detection bound (0.75 s), as the Guard requires


# --- device models --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """How one port of a device behaves.

    greet_after_s: delay before the banner (None: never greets, waits for the client to speak).
    poll_s: the service reads only every poll_s (0: reads continuously and notices a close at once).
    closes_after_s / resets_after_s: ends the session by itself that long after the accept (None: never).
    """

    greet_after_s: float | None
    poll_s: float
    closes_after_s: float | None = None
    resets_after_s: float | None = None

    @property
    def notices_within_s(self) -> float:
        """Longest time from our close to the device's: its greeting, then one poll."""
        return (self.greet_after_s or 0.0) + self.poll_s


@dataclass
class Device:
    """A device whose application pool wedges once it holds ``wedge_at`` sessions (None: never)."""

    services: dict[int, Service]
    wedge_at: int | None = None
    wedged: anyio.Event = field(default_factory=anyio.Event)
    accepts_after_wedge: int = 0

    def attach(self, net: FakeNetwork) -> None:
        for port, service in self.services.items():
            net.serve(HOST, port, self._console(service))
        net.serve(HOST, WEB, self._web)

    def note(self, sessions: int) -> None:
        if self.wedge_at is not None and sessions >= self.wedge_at and not self.wedged.is_set():
            self.wedged.set()

    async def _frozen(self) -> None:
        await anyio.sleep_forever()  # a wedged pool neither reads nor answers nor closes

    def _console(self, service: Service) -> Any:
        async def handler(sock: DeviceSocket) -> None:
            if self.wedged.is_set():
                self.accepts_after_wedge += 1
                await self._frozen()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ends_by_itself, sock, service, tg.cancel_scope)
                tg.start_soon(self._serve, sock, service, tg.cancel_scope)

        return handler

    async def _ends_by_itself(self, sock: DeviceSocket, service: Service, done: anyio.CancelScope) -> None:
        ends = (service.closes_after_s, service.resets_after_s)
        after = min((t for t in ends if t is not None), default=None)
        if after is None:
            return
        await anyio.sleep(after)
        if self.wedged.is_set():
            await self._frozen()
        if service.resets_after_s is not None and after == service.resets_after_s:
            sock.abort()
        else:
            sock.close()
        done.cancel()

    async def _serve(self, sock: DeviceSocket, service: Service, done: anyio.CancelScope) -> None:
        if service.greet_after_s is not None:
            await anyio.sleep(service.greet_after_s)
            if self.wedged.is_set():
                await self._frozen()
            await sock.send(b"220 console ready\r\n")
        while True:
            if service.poll_s:
                await anyio.sleep(service.poll_s)
            if self.wedged.is_set():
                await self._frozen()
            try:
                with anyio.move_on_after(0 if service.poll_s else 3600):
                    await sock.receive(4096)
            except (anyio.EndOfStream, OSError):
                break  # it noticed our FIN or RST: the device closes its side
        done.cancel()

    async def _web(self, sock: DeviceSocket) -> None:
        if self.wedged.is_set():
            self.accepts_after_wedge += 1
            await self._frozen()
        head = b""
        while b"\r\n\r\n" not in head:
            head += await sock.receive(4096)
        if self.wedged.is_set():
            await self._frozen()
        await sock.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


# --- strategies -----------------------------------------------------------------------------------------

times = st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.5, 0.9])
services = st.builds(
    Service,
    greet_after_s=st.one_of(st.none(), times),
    poll_s=times,
    closes_after_s=st.one_of(st.none(), times, st.just(1.5)),
    resets_after_s=st.one_of(st.none(), times),
)
KINDS = ("banner", "http", "tcp", "stream", "run", "raises")
caller = st.tuples(
    st.sampled_from(KINDS),
    st.integers(1, 4),  # sessions in a row
    st.one_of(st.none(), st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0])),  # the caller's own timeout per call
    st.sampled_from([0.0, 0.02, 0.3]),  # start delay
)
ceiling_change = st.tuples(st.sampled_from([0.05, 0.2, 0.6, 1.2]), st.integers(2, 5))


@dataclass
class Outcome:
    violations: list[tuple[float, int, int]]
    peak: int
    accepts_after_down: int
    let_go_in_s: float | None
    device_down: bool


async def scenario(
    ports: dict[int, Service],
    ceiling: int,
    callers: list[tuple[Any, ...]],
    changes: list[tuple[float, int]],
    wedge_at: int | None,
) -> Outcome:
    device = Device(ports, wedge_at=wedge_at)
    violations: list[tuple[float, int, int]] = []
    holder: dict[str, Guard] = {}

    def on_change(host: str, sessions: int, accepted: bool) -> None:
        device.note(sessions)
        guard = holder.get("guard")
        allowed = guard.stats.ceiling if guard is not None else ceiling
        # Checked at every new session: the moment one of ours would take the device past N. (A lowering
        # commits once our slots are back, so a count that only shrinks afterwards is no new session.)
        if accepted and sessions > allowed:
            violations.append((anyio.current_time(), sessions, allowed))

    async with FakeNetwork(connect_delay_s=0.001, on_change=on_change) as net:
        device.attach(net)
        heartbeat = HttpHeartbeat(port=WEB, timeout_s=BEAT_TIMEOUT_S)
        target = Target(HOST, ports=sorted(ports), heartbeat=heartbeat)
        accepts_at_down: list[int] = []
        guard = Guard(
            target,
            ceiling=ceiling,
            scope=Scope([HOST]),
            interval_s=INTERVAL_S,
            linger_s=LINGER_S,
            network=net,
        )
        holder["guard"] = guard
        port_list = sorted(ports)
        let_go: float | None = None
        with contextlib.suppress(DeviceDownError):
            async with guard:
                assert guard.watchdog is not None

                async def one(kind: str, n: int) -> None:
                    port = port_list[n % len(port_list)]
                    if kind == "banner":
                        await guard.grab_banner(port, read_timeout_s=0.4)
                    elif kind == "http":
                        await guard.http_get(WEB, read_timeout_s=0.4)
                    elif kind == "tcp":
                        await guard.tcp_connect(port)
                    elif kind == "stream":
                        async with guard.connect(port) as stream:
                            with anyio.move_on_after(0.3), contextlib.suppress(anyio.EndOfStream):
                                await stream.receive(1024)
                    elif kind == "run":

                        async def check() -> None:
                            async with guard.connect(port) as stream:
                                await stream.send(b"HELLO\r\n")
                                with anyio.move_on_after(0.2), contextlib.suppress(anyio.EndOfStream):
                                    await stream.receive(1024)

                        await guard.run(check)
                    else:
                        async with guard.connect(port):
                            raise RuntimeError("a buggy check")

                async def call(kind: str, count: int, own_timeout: float | None, delay: float) -> None:
                    await anyio.sleep(delay)
                    for n in range(count):
                        try:
                            with anyio.move_on_after(3600 if own_timeout is None else own_timeout):
                                await one(kind, n)
                        except (ProbeError, RuntimeError):
                            pass
                        except DeviceDownError:
                            return

                async def change(at: float, to: int) -> None:
                    await anyio.sleep(at)
                    await guard.set_ceiling(to)

                async def note_down() -> None:
                    assert guard.watchdog is not None
                    while not guard.device_down:
                        await guard.watchdog.next_beat()
                    accepts_at_down.append(net.accepts(HOST))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(note_down)
                    async with anyio.create_task_group() as work:
                        for c in callers:
                            work.start_soon(call, *c)
                        for at, to in changes:
                            work.start_soon(change, at, to)
                    tg.cancel_scope.cancel()
                if not guard.device_down:
                    t0 = anyio.current_time()
                    await guard.wait_let_go()
                    let_go = anyio.current_time() - t0
        after_down = net.accepts(HOST) - accepts_at_down[0] if accepts_at_down else 0
        return Outcome(violations, net.peak_sessions(HOST), after_down, let_go, guard.device_down)


@settings(max_examples=150, deadline=None)
@given(
    ports=st.dictionaries(st.sampled_from([21, 22, 23]), services, min_size=1, max_size=3),
    ceiling=st.integers(2, 5),
    callers=st.lists(caller, min_size=1, max_size=6),
    changes=st.lists(ceiling_change, max_size=3),
    wedge_at=st.one_of(st.none(), st.integers(2, 7)),
)
def test_the_device_never_holds_more_than_n_sessions_heartbeat_included(
    ports: dict[int, Service],
    ceiling: int,
    callers: list[tuple[Any, ...]],
    changes: list[tuple[float, int]],
    wedge_at: int | None,
) -> None:
    assert all(s.notices_within_s < LINGER_S for s in ports.values())  # the precondition of the promise
    with capture_logs():
        out = run_virtual(scenario, ports, ceiling, callers, changes, wedge_at)
    assert out.violations == [], out.violations
    assert out.accepts_after_down == 0, "a session reached the device after it was declared down"
    if out.let_go_in_s is not None:
        assert out.let_go_in_s <= LINGER_S + 0.01, "a slot stayed charged past the linger bound"


def test_slow_greeting_console_with_caller_timeouts_stays_within_the_ceiling() -> None:
    """The issue's first example: two callers loop ``move_on_after(0.1): grab_banner`` against a console
    that greets 1 s after accepting, ceiling 2. The device held 21 of our sessions on the old code (each
    cancelled probe freed its slot at once while the console held the session until its next read)."""
    console = Service(greet_after_s=1.0, poll_s=0.0)
    callers = [("banner", 20, 0.1, 0.0), ("banner", 20, 0.1, 0.0)]
    with capture_logs():
        out = run_virtual(scenario, {23: console}, 2, callers, [], None)
    assert out.violations == []
    assert out.peak == 2  # one console session and the heartbeat's, never more


def test_slow_greeting_with_a_read_timeout_shorter_than_the_greeting_stays_within_the_ceiling() -> None:
    """No cancellation at all: a 0.3 s read timeout against the same 1 s greeting. The old code freed the
    slot after its own deadline and the device peaked at 5 with ceiling 2 (promised: 3)."""
    console = Service(greet_after_s=1.0, poll_s=0.0)

    async def main() -> int:
        async with FakeNetwork() as net:
            device = Device({23: console})
            device.attach(net)
            target = Target(HOST, ports=[23], heartbeat=HttpHeartbeat(port=WEB, timeout_s=BEAT_TIMEOUT_S))
            guard = Guard(target, ceiling=2, scope=Scope([HOST]), interval_s=INTERVAL_S, network=net)
            async with guard as g, anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(_banners, g, 10)
            return net.peak_sessions(HOST)

    with capture_logs():
        assert run_virtual(main) == 2


async def _banners(guard: Guard, count: int) -> None:
    for _ in range(count):
        await guard.grab_banner(23, read_timeout_s=0.3)


def test_a_device_slower_than_the_linger_is_reset_and_counted_as_such() -> None:
    """The promise's precondition, shown: a service that notices our close only after 3 s, with a 2 s
    linger. Its slot is freed when the linger ends (the connection is reset, and ``linger_expired`` says
    so), so this device can be above N for the rest of its poll. The linger is the knob for such devices."""
    lazy = Service(greet_after_s=None, poll_s=3.0)
    with capture_logs():
        out = run_virtual(scenario, {23: lazy}, 2, [("tcp", 3, None, 0.0)], [], None)
    assert out.violations, "a device slower than the linger goes past N: the bound is the linger's"

    async def with_longer_linger() -> tuple[int, int]:
        async with FakeNetwork() as net:
            Device({23: lazy}).attach(net)
            target = Target(HOST, ports=[23], heartbeat=HttpHeartbeat(port=WEB, timeout_s=BEAT_TIMEOUT_S))
            async with Guard(
                target, ceiling=2, scope=Scope([HOST]), interval_s=INTERVAL_S, network=net, linger_s=4.0
            ) as g:
                for _ in range(3):
                    await g.tcp_connect(23)
                expired = g.stats.linger_expired
            return net.peak_sessions(HOST), expired

    with capture_logs():
        peak, expired = run_virtual(with_longer_linger)
    assert peak == 2
    assert expired == 0


def test_an_icmp_like_heartbeat_gives_the_work_all_n_places() -> None:
    """A heartbeat that opens no session (opens_session = False) costs none of the N."""

    @dataclass(frozen=True)
    class NoSessionBeat:
        port: int = 0
        timeout_s: float = 0.5
        opens_session = False

        async def beat(self, host: str) -> Any:
            from fragileprobe import Beat

            return Beat(anyio.current_time(), True, 0.0)

    async def main() -> tuple[int, int]:
        async with FakeNetwork() as net:
            Device({23: Service(greet_after_s=0.0, poll_s=0.0)}).attach(net)
            target = Target(HOST, ports=[23], heartbeat=NoSessionBeat())  # type: ignore[arg-type]
            async with Guard(target, ceiling=3, scope=Scope([HOST]), interval_s=INTERVAL_S, network=net) as g:
                async with anyio.create_task_group() as tg:
                    for _ in range(6):
                        tg.start_soon(_banners, g, 3)
                ours = g.stats.peak_in_flight
            return ours, net.peak_sessions(HOST)

    with capture_logs():
        ours, device = run_virtual(main)
    assert ours == 3
    assert device == 3


def test_tcp_heartbeat_is_counted_too() -> None:
    """A TCP heartbeat opens a session: it takes one of the N like an HTTP one."""

    async def main() -> int:
        async with FakeNetwork() as net:
            Device({23: Service(greet_after_s=0.0, poll_s=0.05)}).attach(net)
            target = Target(HOST, ports=[23], heartbeat=TcpHeartbeat(23, timeout_s=BEAT_TIMEOUT_S))
            guard = Guard(target, ceiling=2, scope=Scope([HOST]), interval_s=0.05, network=net)
            async with guard as g, anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(_banners, g, 5)
            return net.peak_sessions(HOST)

    with capture_logs():
        assert run_virtual(main) <= 2


def test_virtual_time_deadlock_is_reported_not_hung() -> None:
    """A wait that can never end fails fast in virtual time instead of hanging the test run."""

    async def forever() -> None:
        await anyio.Event().wait()

    with pytest.raises(VirtualTimeDeadlock):
        run_virtual(forever)


# --- characterization: what a level held, and a recommendation that holds through the Guard --------------


class StoryDevice(Device):
    """The story's shape: three consoles and a web port (the heartbeat) that answers and hangs up within
    milliseconds; the application pool wedges at ``wedge_at`` open sessions. ``power_cycle`` resets every
    session and unwedges it."""

    def __init__(self, net: FakeNetwork, wedge_at: int) -> None:
        console = Service(greet_after_s=0.01, poll_s=0.0)
        super().__init__({21: console, 22: console, 23: console}, wedge_at=wedge_at)
        self.net = net
        self.crashes = 0
        self.attach(net)
        net.on_change = lambda _host, sessions, _accepted: self.note(sessions)

    def note(self, sessions: int) -> None:
        was = self.wedged.is_set()
        super().note(sessions)
        if self.wedged.is_set() and not was:
            self.crashes += 1

    async def power_cycle(self) -> None:
        self.net.reset_device(HOST)
        await anyio.sleep(0.2)  # boot
        self.wedged = anyio.Event()


CHAR_TIMINGS: dict[str, Any] = {
    "dwell_s": 2.0,
    "hold_s": 0.5,
    "interval_s": 0.25,
    "heartbeat_timeout_s": 0.5,
    "healthy_beats": 2,
    "recovery_timeout_s": 10.0,
    "baseline_beats": 3,
    "read_timeout_s": 0.4,
    "connect_timeout_s": 0.5,
}


@pytest.mark.parametrize("wedge_at", [3, 5, 6, 8])
def test_a_recommendation_used_through_the_guard_never_wedges_the_device(wedge_at: int) -> None:
    """The issue's second example. A device shaped like the story's pump wedges at ``wedge_at`` sessions.
    On the old code the characterization passed level 4 with fewer than 4 sessions on the device (web
    sessions closed by the device at once while our side kept the slot), recommended 4 for a device that
    hangs at 5, and a Guard at 4 then hung it in 6 of 6 runs. Now every level holds its count on the
    device, the heartbeat's session included, and a Guard at the recommendation holds at most that many."""
    from fragileprobe._characterize import characterize

    async def main() -> tuple[Any, int, int, int]:
        async with FakeNetwork(connect_delay_s=0.001) as net:
            device = StoryDevice(net, wedge_at)
            target = Target(HOST, ports=[21, 22, 23, WEB], heartbeat=HttpHeartbeat(port=WEB, timeout_s=0.5))

            async def recovery() -> None:
                await device.power_cycle()

            char = await characterize(
                target,
                scope=Scope([HOST]),
                ladder=(2, 3, 4, 5, 6, 7, 10),
                trials=3,
                recovery=recovery,
                model_key="story-shaped",
                network=net,
                **CHAR_TIMINGS,
            )
            crashes_in_characterization = device.crashes
            assert char.safe_ceiling is not None
            # Now use it as a scanner would, through the Guard: every work place held on the same ports.
            peak_before = net.peak_sessions(HOST)
            ceiling = char.safe_ceiling
            async with Guard(
                target, ceiling=max(ceiling, 2), scope=Scope([HOST]), interval_s=0.25, network=net
            ) as guard:

                async def hold(port: int) -> None:
                    for _ in range(10):
                        async with guard.connect(port) as stream:
                            with anyio.move_on_after(0.5), contextlib.suppress(anyio.EndOfStream):
                                await stream.receive(1024)

                async with anyio.create_task_group() as tg:
                    for i in range(8):  # more callers than places: the Guard makes them wait
                        tg.start_soon(hold, (21, 22, 23, WEB)[i % 4])
                assert not guard.device_down
            return char, crashes_in_characterization, device.crashes, peak_before

    with capture_logs():
        char, crashes_before, crashes_after, _peak = run_virtual(main)
    assert crashes_before >= 1, "the ladder reaches the wedge: it was measured, not guessed"
    assert char.failed_at is not None
    assert char.failed_at >= wedge_at  # a level that wedged it held at least wedge_at sessions
    assert char.safe_ceiling < wedge_at, char.summary()
    assert crashes_after == crashes_before, "the Guard at the recommended ceiling wedged the device"
    held = [lv for t in char.trials for lv in t.levels if lv.outcome.value == "passed"]
    assert held
    assert all(not lv.not_held for lv in held), [(lv.level, lv.held_at_beats) for lv in held]


def test_the_readme_testing_example_runs() -> None:
    """The README's fragileprobe.testing example, as written there (docs that cannot drift)."""
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing your own tools", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {"anyio": anyio, "fp": __import__("fragileprobe")}
    with capture_logs():
        exec(compile(code.group(1), "README.md", "exec"), namespace)  # our own README, nothing else


# --- discovery: one session per host, counted on the device's side ------------------------------------------

discovery_services = st.builds(
    Service,
    greet_after_s=st.one_of(st.none(), st.sampled_from([0.0, 0.3, 0.8])),
    poll_s=st.sampled_from([0.0, 0.05, 0.1]),
)


@settings(max_examples=40, deadline=None)
@given(
    hosts=st.lists(
        st.dictionaries(st.sampled_from([21, 22, 23]), discovery_services, min_size=1, max_size=3),
        min_size=1,
        max_size=4,
    ),
    per_host=st.integers(1, 2),
)
def test_discovery_never_holds_more_than_per_host_sessions_on_any_device(
    hosts: list[dict[int, Service]], per_host: int
) -> None:
    """Discovery's per-host limit is the device's count too: late greeters and slow pollers (which notice
    our close only at their next read, within discovery's linger) never hold more than ``per_host_sessions``
    of our sessions, whatever the banner timeouts cut short."""
    from fragileprobe._discovery_run import discover

    addresses = [f"127.0.0.{50 + i}" for i in range(len(hosts))]

    async def main() -> tuple[dict[str, int], dict[str, int], int]:
        async with FakeNetwork(connect_delay_s=0.001) as net:
            for address, services in zip(addresses, hosts, strict=True):
                for port, service in services.items():
                    net.serve(address, port, Device({port: service})._console(service))
                net.serve(address, WEB, Device({})._web)
            report = await discover(
                addresses,
                scope=Scope(addresses),
                ports=[21, 22, 23, WEB],
                per_host_sessions=per_host,
                banner_timeout_s=0.2,
                connect_timeout_s=0.5,
                udp_ports=(),
                network=net,
            )
            peaks = {a: net.peak_sessions(a) for a in addresses}
            return peaks, {a: net.accepts(a) for a in addresses}, len(report.assets)

    with capture_logs():
        peaks, accepts, assets = run_virtual(main)
    assert all(n >= 2 for n in accepts.values()), accepts  # every host was really worked, web port included
    assert assets == len(addresses)
    assert all(peak <= per_host for peak in peaks.values()), (peaks, per_host)
