"""The shield end to end: python-socks clients, fragile device models written here, emulated pumps.

The device models here (:class:`FragileBox`) differ from the emulator's: they count the sessions *they*
hold (accept until they have seen the client's FIN or RST and closed), serve an echo port and a web port,
and hang at a threshold (no byte served any more, the web port included, sessions held until the client
goes). They also count every connection by port and every connection that arrived after a given moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import tracemalloc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from python_socks import ProxyError
from python_socks.async_.anyio import Proxy
from structlog.testing import capture_logs

import fragileprobe as fp
from fragileprobe import _shield
from fragileprobe._errors import ConfigError, ProbeError, ProbeRefusedError, ProbeTimeoutError
from fragileprobe._shield import SessionOutcome, reply_for
from fragileprobe._socks import Reply
from fragileprobe._store import ProfileStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

ECHO_PORT = 23
WEB_PORT = 8080
# Fast watchdog for tests: a hang is declared within interval + timeout = 0.5 s.
BEAT = {"heartbeat_interval_s": 0.2}
HEARTBEAT_TIMEOUT_S = 0.3


@dataclass
class FragileBox:
    """A fragile device model: an echo service and a web page; hangs once it holds ``hang_at`` sessions."""

    host: str
    hang_at: int
    echo_port: int = ECHO_PORT + 20000
    web_port: int = WEB_PORT + 20000
    open_now: int = 0
    open_relay_now: int = 0  # sessions on the echo port (what the shield relays; the heartbeat uses the web)
    peak: int = 0
    peak_relay: int = 0
    hung: bool = False
    accepted: dict[int, int] = field(default_factory=dict)
    accepted_times: list[tuple[float, int]] = field(default_factory=list)
    servers: list[asyncio.base_events.Server] = field(default_factory=list)

    async def start(self) -> None:
        for port in (self.echo_port, self.web_port):
            self.servers.append(await asyncio.start_server(self._serve(port), self.host, port))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    def hang(self) -> None:
        self.hung = True

    def heal(self) -> None:
        self.hung = False

    def accepted_since(self, t: float, port: int | None = None) -> int:
        return sum(1 for at, p in self.accepted_times if at >= t and (port is None or p == port))

    def _serve(self, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            loop = asyncio.get_running_loop()
            self.accepted[port] = self.accepted.get(port, 0) + 1
            self.accepted_times.append((loop.time(), port))
            self.open_now += 1
            relay = port == self.echo_port
            self.open_relay_now += relay
            self.peak = max(self.peak, self.open_now)
            self.peak_relay = max(self.peak_relay, self.open_relay_now)
            if self.open_now >= self.hang_at:
                self.hung = True
            try:
                if port == self.web_port and not self.hung:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
                        if not self.hung:
                            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            await writer.drain()
                            return
                while True:  # echo while healthy; read and discard while hung, until the client goes
                    try:
                        data = await reader.read(65536)
                    except ConnectionError:
                        return
                    if not data:
                        return
                    if relay and not self.hung:
                        writer.write(data)
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
            finally:
                self.open_now -= 1
                self.open_relay_now -= relay
                writer.close()

        return handler


@contextlib.asynccontextmanager
async def fragile_box(host: str, hang_at: int) -> AsyncIterator[FragileBox]:
    box = FragileBox(host, hang_at)
    await box.start()
    try:
        yield box
    finally:
        await box.stop()


def _heartbeat(box: FragileBox) -> fp.HttpHeartbeat:
    return fp.HttpHeartbeat(port=box.web_port, expect_status=None, timeout_s=HEARTBEAT_TIMEOUT_S)


async def _socks(
    shield: fp.Shield, host: str, port: int, login: str | None = None, **kw: object
) -> anyio.abc.SocketStream:
    h, p = shield.address
    proxy = Proxy.from_url(f"socks5://{login + '@' if login else ''}{h}:{p}", **kw)  # type: ignore[arg-type]
    return await proxy.connect(host, port, timeout=10)


async def _echo_session(shield: fp.Shield, box: FragileBox, hold_s: float) -> bytes:
    stream = await _socks(shield, box.host, box.echo_port)
    async with stream:
        await stream.send(b"ping\n")
        with anyio.fail_after(5):
            data = await stream.receive()
        await anyio.sleep(hold_s)
    return data


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` (bounded): the shield's state has no event to wait on from outside."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout_s} s")


async def _settle(shield: fp.Shield) -> None:
    """Wait until every client connection has ended on the shield's side (its record is then written)."""
    await _until(lambda: not shield.stats.active, 10)


@contextlib.asynccontextmanager
async def serving(shield: fp.Shield) -> AsyncIterator[fp.Shield]:
    """Run the shield; before closing it, let the last sessions end on its side."""
    async with shield:
        yield shield
        await _settle(shield)


async def _raw_request(shield: fp.Shield, request: bytes) -> bytes:
    """Greeting (no auth) then ``request``; returns the reply's first two bytes (VER, REP)."""
    stream = await anyio.connect_tcp(*shield.address)
    async with stream:
        await stream.send(b"\x05\x01\x00")
        assert await stream.receive(2) == b"\x05\x00"
        await stream.send(request)
        with anyio.fail_after(5):
            reply = await stream.receive(10)
    return reply[:2]


# --- the ceiling -----------------------------------------------------------------------------------------


async def _ceiling_scenario(
    host: str, ceiling: int, clients: int, hold_s: float
) -> tuple[FragileBox, fp.Shield]:
    # hang_at = ceiling + 1: the ceiling counts every session the device holds, the heartbeat's included;
    # one more session hangs it.
    async with fragile_box(host, hang_at=ceiling + 1) as box:
        shield = fp.Shield(
            scope=fp.Scope(host),
            listen_port=0,
            ceilings={host: ceiling},
            heartbeats={host: _heartbeat(box)},
            **BEAT,
        )
        async with serving(shield):
            replies: list[bytes] = []

            async def one() -> None:
                replies.append(await _echo_session(shield, box, hold_s))

            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(one)
        assert replies == [b"ping\n"] * clients
        return box, shield


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ceiling=st.integers(2, 5), clients=st.integers(1, 16), hold_ms=st.integers(0, 60))
def test_device_never_holds_more_than_its_ceiling_through_the_shield(
    loopback_hosts: Callable[[], str], ceiling: int, clients: int, hold_ms: int
) -> None:
    """Many clients at once: the device's own count of sessions (relayed and the heartbeat's) never exceeds
    the ceiling, every client is served in turn, the device never hangs."""
    box, shield = anyio.run(_ceiling_scenario, loopback_hosts(), ceiling, clients, hold_ms / 1000)
    assert box.peak_relay <= ceiling - 1  # the shield's heartbeat keeps one of the N places
    assert box.peak <= ceiling
    assert not box.hung
    assert shield.stats.relayed == clients
    assert all(s.ceiling == ceiling and s.outcome == "relayed" for s in shield.sessions)


async def test_over_the_ceiling_waits_bounded_then_is_refused_never_relayed(loopback_host: str) -> None:
    """Ceiling 2: one relayed session beside the heartbeat; a second CONNECT waits, then is refused (without
    preemption: the holder is the same client, idle, and would otherwise give up its slot)."""
    async with fragile_box(loopback_host, hang_at=3) as box:
        shield = fp.Shield(
            scope=fp.Scope(loopback_host),
            listen_port=0,
            ceilings={loopback_host: 2},
            slot_wait_s=0.3,
            preempt_idle_s=None,
            heartbeats={loopback_host: _heartbeat(box)},
            **BEAT,
        )
        async with serving(shield):
            holder = await _socks(shield, box.host, box.echo_port)
            async with holder:
                await holder.send(b"x")
                await holder.receive()
                with pytest.raises(ProxyError) as info:
                    await _socks(shield, box.host, box.echo_port)
                assert info.value.error_code == Reply.NOT_ALLOWED
                assert box.accepted[box.echo_port] == 1
    refused = [s for s in shield.sessions if s.outcome == SessionOutcome.CEILING_WAIT_TIMEOUT.value]
    assert len(refused) == 1
    assert 0.3 <= refused[0].waited_s < 3


@pytest.mark.parametrize("same_client", [True, False], ids=["same-client", "other-client"])
async def test_a_waiting_connect_takes_the_slot_of_the_same_clients_idle_session(
    loopback_host: str, same_client: bool
) -> None:
    """A tool frozen in connect() (proxychains) cannot close the sockets it is done with: a CONNECT that has
    waited preempt_idle_s for a full host ends the same client's session there idle as long, and gets the
    slot (after the device let go: never more than the ceiling). Another client's session is never ended."""
    async with fragile_box(loopback_host, hang_at=3) as box:
        users = {"a": "pw-a", "b": "pw-b"}
        shield = fp.Shield(
            scope=fp.Scope(loopback_host),
            listen_port=0,
            ceilings={loopback_host: 2},
            slot_wait_s=3.0,
            preempt_idle_s=0.3,
            users=users,
            allow_clients=["127.0.0.0/8"],
            heartbeats={loopback_host: _heartbeat(box)},
            **BEAT,
        )
        async with serving(shield):
            holder = await _socks(shield, box.host, box.echo_port, login="a:pw-a")
            async with holder:
                await holder.send(b"x")
                assert await holder.receive() == b"x"
                if same_client:
                    late = await _socks(shield, box.host, box.echo_port, login="a:pw-a")
                    async with late:
                        await late.send(b"y")
                        assert await late.receive() == b"y"
                    with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await holder.receive()  # the idle session was ended
                else:
                    with pytest.raises(ProxyError) as info:
                        await _socks(shield, box.host, box.echo_port, login="b:pw-b")
                    assert info.value.error_code == Reply.NOT_ALLOWED
                    await holder.send(b"z")  # the other client's session still relays
                    assert await holder.receive() == b"z"
    outcomes = [s.outcome for s in shield.sessions]
    if same_client:
        assert outcomes[0] == SessionOutcome.PREEMPTED_IDLE.value
        assert outcomes[1] == SessionOutcome.RELAYED.value
        assert 0.3 <= shield.sessions[1].waited_s < 3.0 + 2.0  # within slot wait + connect timeout
    else:
        assert SessionOutcome.PREEMPTED_IDLE.value not in outcomes
        assert SessionOutcome.CEILING_WAIT_TIMEOUT.value in outcomes
    assert box.peak_relay <= 1  # the heartbeat keeps one of the 2 places
    assert not box.hung


# --- the watchdog ----------------------------------------------------------------------------------------


async def test_trip_closes_every_session_refuses_new_ones_alerts_and_spares_other_devices(
    loopback_hosts: Callable[[], str], tmp_path: Path
) -> None:
    fragile, sturdy = loopback_hosts(), loopback_hosts()
    alerts = tmp_path / "alerts.jsonl"
    store = ProfileStore(tmp_path / "s.db")
    async with fragile_box(fragile, hang_at=50) as box, fragile_box(sturdy, hang_at=50) as other:
        shield = fp.Shield(
            scope=fp.Scope(f"{fragile},{sturdy}"),
            listen_port=0,
            store=store,
            ceilings={fragile: 4, sturdy: 4},
            alert_file=str(alerts),
            release_beats=2,
            heartbeats={fragile: _heartbeat(box), sturdy: _heartbeat(other)},
            **BEAT,
        )
        async with serving(shield):
            held = [await _socks(shield, fragile, box.echo_port) for _ in range(3)]
            for s in held:
                await s.send(b"hi")
                assert await s.receive() == b"hi"
            box.hang()
            await _until(lambda: bool(shield.trips))
            loop_t = asyncio.get_running_loop().time()
            # every relayed session to the tripped device is closed at once
            with anyio.fail_after(2):
                for s in held:
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                        await s.receive()
            # new CONNECTs refused with 0x02, nothing reaches the device
            for _ in range(5):
                with pytest.raises(ProxyError) as info:
                    await _socks(shield, fragile, box.echo_port)
                assert info.value.error_code == Reply.NOT_ALLOWED
            assert box.accepted_since(loop_t, box.echo_port) == 0
            assert shield.blocked(fragile)
            # the other device is not affected
            assert await _echo_session(shield, other, 0) == b"ping\n"
            assert not shield.blocked(sturdy)
            # healthy beats again: released, relaying again
            box.heal()
            await _until(lambda: not shield.blocked(fragile))
            assert await _echo_session(shield, box, 0) == b"ping\n"
            for s in held:
                await s.aclose()
    trip = shield.trips[0]
    assert trip.host == fragile
    assert trip.sessions_closed == 3
    assert trip.released_by == "healthy_beats"
    assert [json.loads(line)["kind"] for line in alerts.read_text().splitlines()] == ["shield_trip"]
    closed = [s for s in shield.sessions if s.outcome == SessionOutcome.CANCELLED_BY_WATCHDOG.value]
    assert len(closed) == 3
    assert sum(s.outcome == SessionOutcome.REFUSED_TRIPPED.value for s in shield.sessions) == 5
    stored_trips = store.shield_trips(fragile)
    assert len(stored_trips) == 1
    assert stored_trips[0]["released_by"] == "healthy_beats"
    assert [a["kind"] for a in store.alerts()] == ["shield_trip"]
    outcomes = [r["outcome"] for r in store.shield_sessions(fragile)]
    assert outcomes.count("cancelled_by_watchdog") == 3
    store.close()


async def test_operator_release_keeps_a_healthy_device_blocked_until_released(loopback_host: str) -> None:
    async with fragile_box(loopback_host, hang_at=50) as box:
        shield = fp.Shield(
            scope=fp.Scope(loopback_host),
            listen_port=0,
            release="operator",
            heartbeats={loopback_host: _heartbeat(box)},
            **BEAT,
        )
        async with serving(shield):
            held = await _socks(shield, box.host, box.echo_port)
            box.hang()
            await _until(lambda: bool(shield.trips))
            box.heal()
            await anyio.sleep(1.0)  # five beat intervals: auto release would have happened
            assert shield.blocked(loopback_host)
            with pytest.raises(ProxyError):
                await _socks(shield, box.host, box.echo_port)
            assert shield.release(loopback_host)
            await _until(lambda: not shield.blocked(loopback_host))
            assert await _echo_session(shield, box, 0) == b"ping\n"
            await held.aclose()
    assert shield.trips[0].released_by == "operator"


async def test_a_device_dead_before_its_first_session_gets_nothing_until_it_answers(
    loopback_host: str,
) -> None:
    async with fragile_box(loopback_host, hang_at=50) as box:
        box.hang()
        shield = fp.Shield(
            scope=fp.Scope(loopback_host),
            listen_port=0,
            release_beats=1,
            heartbeats={loopback_host: _heartbeat(box)},
            **BEAT,
        )
        async with serving(shield):
            for _ in range(3):
                with pytest.raises(ProxyError):
                    await _socks(shield, box.host, box.echo_port)
            assert box.accepted.get(box.echo_port, 0) == 0
            assert len(shield.trips) == 1
            box.heal()
            await _until(lambda: not shield.blocked(loopback_host))
            assert await _echo_session(shield, box, 0) == b"ping\n"


# --- the emulated pump and the profile store -------------------------------------------------------------


async def test_emulated_pump_behind_the_shield_gets_its_inventory_ceiling_and_never_hangs(
    loopback_host: str, tmp_path: Path
) -> None:
    """The inventory says 'Medical Device?' with a web UI on 8080: ceiling 2 (one relayed session and the
    heartbeat on 8080). Twelve
    clients at once (a plain nmap -sV would do more) never hang a pump whose threshold is 7-9."""
    from fragileprobe.emulator import EmulatedPump

    store = ProfileStore(tmp_path / "s.db")
    async with EmulatedPump(loopback_host, seed=3, boot_delay_s=0.05, syn_watch=False) as pump:
        store.upsert_asset(
            loopback_host,
            scan_id=None,
            seen_at_s=0.0,
            model_key="mis3000-0123456789ab",
            open_ports=pump.ports.values(),
            groups=["Medical Device?"],
            services=[{"port": pump.web_port, "service": "http"}],
        )
        shield = fp.Shield(scope=fp.Scope(loopback_host), listen_port=0, store=store, **BEAT)
        async with serving(shield):
            assert shield.limit_for(loopback_host)[0] == 2

            async def banner() -> None:
                stream = await _socks(shield, loopback_host, pump.port(21))
                async with stream:
                    with anyio.fail_after(10):
                        assert (await stream.receive()).startswith(b"220")

            async with anyio.create_task_group() as tg:
                for _ in range(12):
                    tg.start_soon(banner)
            guard = shield.guard_for(loopback_host)
            assert guard is not None
            assert guard.stats.peak_in_flight == 1
        assert pump.stats.crashes == 0
        assert pump.stats.peak_sessions <= 2  # one relayed session and the heartbeat
    rows = store.shield_sessions(loopback_host)
    assert len(rows) == 12
    assert {r["limit_source"] for r in rows} == {"medical default (Medical Device? of unknown model)"}
    assert all(r["bytes_down"] > 0 for r in rows)
    store.close()


def test_limit_comes_from_the_stored_ceiling_of_the_inventory_model(tmp_path: Path) -> None:
    from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult

    def trial(index: int) -> TrialResult:
        levels = [
            LevelResult(level=lv, outcome=LevelOutcome.PASSED, dwell_s=0.1, elapsed_s=0.1) for lv in (1, 2, 3)
        ]
        levels.append(LevelResult(level=4, outcome=LevelOutcome.FAILED, dwell_s=0.1, elapsed_s=0.05))
        return TrialResult(index=index, levels=tuple(levels), wall_time_s=0.4)

    store = ProfileStore(tmp_path / "s.db")
    store.save(
        Characterization.from_trials(
            host="127.9.9.1", model_key="pump-abcdef012345", ladder=(1, 2, 3, 4), trials=[trial(0), trial(1)]
        )
    )
    # the inventory's key names the same model with another slug: the digest matches
    store.upsert_asset("127.9.9.2", scan_id=None, seen_at_s=0, model_key="other-abcdef012345", groups=["x"])
    store.upsert_asset(
        "127.9.9.3", scan_id=None, seen_at_s=0, model_key="thing-ffffffffffff", groups=["Medical Device?"]
    )
    stored = store.ceiling_for("pump-abcdef012345")
    assert stored is not None
    shield = fp.Shield(
        scope=fp.Scope("127.9.9.0/24"), store=store, default_ceiling=7, ceilings={"127.9.9.5": 0}
    )
    shield._load_inventory(store)
    assert shield.limit_for("127.9.9.2") == (stored, "stored ceiling of model pump-abcdef012345")
    assert shield.limit_for("127.9.9.3")[0] == 2  # medical default: one relayed session and the heartbeat
    assert shield.limit_for("127.9.9.4") == (7, "configured default")
    assert shield.limit_for("127.9.9.5") == (0, "configured for this host")
    store.close()


# --- refusals --------------------------------------------------------------------------------------------


async def test_policy_refusals_send_nothing(loopback_hosts: Callable[[], str]) -> None:
    inside, outside = loopback_hosts(), loopback_hosts()
    async with fragile_box(inside, hang_at=50) as box, fragile_box(outside, hang_at=50) as out_box:
        shield = fp.Shield(scope=fp.Scope(inside), listen_port=0, ceilings={inside: 2}, **BEAT)
        async with serving(shield):
            with capture_logs() as logs:
                with pytest.raises(ProxyError) as info:
                    await _socks(shield, outside, out_box.echo_port)
                assert info.value.error_code == Reply.NOT_ALLOWED
                name = b"\x05\x01\x00\x03\x0bexample.org\x00\x50"
                assert await _raw_request(shield, name) == b"\x05\x02"
                for cmd in (2, 3):  # BIND, UDP ASSOCIATE
                    request = bytes((5, cmd, 0, 1)) + socket.inet_aton(inside) + struct.pack("!H", 80)
                    assert await _raw_request(shield, request) == b"\x05\x07"
                printer = bytes((5, 1, 0, 1)) + socket.inet_aton(inside) + struct.pack("!H", 9100)
                assert await _raw_request(shield, printer) == b"\x05\x02"
    assert out_box.accepted == {}
    assert box.accepted == {}
    outcomes = [s.outcome for s in shield.sessions]
    assert outcomes == [
        "refused_scope",
        "refused_name",
        "refused_command",
        "refused_command",
        "refused_printer_port",
    ]
    assert [e["outcome"] for e in logs if e["event"] == "shield.refused"] == outcomes


async def test_do_not_scan_ceiling_zero_refuses_the_host(loopback_host: str) -> None:
    async with fragile_box(loopback_host, hang_at=50) as box:
        shield = fp.Shield(scope=fp.Scope(loopback_host), listen_port=0, ceilings={loopback_host: 0})
        async with serving(shield):
            with pytest.raises(ProxyError):
                await _socks(shield, loopback_host, box.echo_port)
    assert box.accepted == {}
    assert shield.sessions[0].outcome == "refused_do_not_scan"


async def test_upstream_results_are_reported_faithfully(loopback_host: str) -> None:
    """A closed port is 0x05 (a port scanner sees it closed); an open one succeeds with the real bytes."""
    async with fragile_box(loopback_host, hang_at=50) as box:
        shield = fp.Shield(scope=fp.Scope(loopback_host), listen_port=0)
        async with serving(shield):
            with pytest.raises(ProxyError) as info:
                await _socks(shield, loopback_host, 1)
            assert info.value.error_code == Reply.CONNECTION_REFUSED
            assert await _echo_session(shield, box, 0) == b"ping\n"
    assert [s.outcome for s in shield.sessions] == ["connect_refused", "relayed"]
    assert shield.sessions[1].bytes_up == 5
    assert shield.sessions[1].bytes_down == 5


def test_reply_mapping() -> None:
    import errno

    def failed(err: int) -> ProbeError:
        exc = ProbeError("connect failed")
        exc.__cause__ = OSError(err, "x")
        return exc

    assert reply_for(ProbeRefusedError("r")) == (Reply.CONNECTION_REFUSED, SessionOutcome.CONNECT_REFUSED)
    assert reply_for(ProbeTimeoutError("t")) == (Reply.TTL_EXPIRED, SessionOutcome.CONNECT_TIMEOUT)
    assert reply_for(failed(errno.ENETUNREACH))[0] == Reply.NETWORK_UNREACHABLE
    assert reply_for(failed(errno.EHOSTUNREACH))[0] == Reply.HOST_UNREACHABLE
    assert reply_for(failed(errno.EPERM))[0] == Reply.GENERAL_FAILURE
    assert reply_for(fp.DeviceDownError("down"))[0] == Reply.NOT_ALLOWED


# --- not an open proxy -----------------------------------------------------------------------------------


def test_non_loopback_bind_needs_auth_and_an_allow_list() -> None:
    scope = fp.Scope("127.0.0.0/24")
    with pytest.raises(ConfigError, match="listen_host: must be a loopback address unless users"):
        fp.Shield(scope=scope, listen_host="0.0.0.0")
    with pytest.raises(ConfigError, match="listen_host: must be a loopback address unless users"):
        fp.Shield(scope=scope, listen_host="0.0.0.0", users={"a": "b"})
    with pytest.raises(ConfigError, match="listen_host: must be a loopback address unless users"):
        fp.Shield(scope=scope, listen_host="0.0.0.0", allow_clients=["10.0.0.0/8"])
    fp.Shield(scope=scope, listen_host="0.0.0.0", users={"a": "b"}, allow_clients=["10.0.0.0/8"])
    with pytest.raises(ConfigError, match="listen_host"):
        fp.Shield(scope=scope, listen_host="localhost")


async def test_a_client_outside_the_allow_list_relays_nothing(loopback_hosts: Callable[[], str]) -> None:
    device, client_addr = loopback_hosts(), loopback_hosts()
    async with fragile_box(device, hang_at=50) as box:
        shield = fp.Shield(scope=fp.Scope(device), listen_port=0, allow_clients=["127.1.2.3"])
        async with serving(shield):
            with capture_logs() as logs:
                # a loopback client, but not the allowed one
                stream = await anyio.connect_tcp(*shield.address, local_host=client_addr)
                async with stream:
                    with contextlib.suppress(anyio.BrokenResourceError, OSError):
                        await stream.send(
                            b"\x05\x01\x00"
                            + bytes((5, 1, 0, 1))
                            + socket.inet_aton(device)
                            + struct.pack("!H", box.echo_port)
                            + b"payload"
                        )
                    gone = (anyio.EndOfStream, anyio.BrokenResourceError, OSError)
                    with anyio.fail_after(5), pytest.raises(gone):
                        await stream.receive()
    assert box.accepted == {}
    assert shield.stats.clients_refused == 1
    assert shield.stats.sessions == 0
    assert [e["event"] for e in logs if e["event"].startswith("shield.")] == ["shield.client_refused"]


async def test_rfc1929_login_required_and_checked(loopback_host: str) -> None:
    async with fragile_box(loopback_host, hang_at=50) as box:
        shield = fp.Shield(scope=fp.Scope(loopback_host), listen_port=0, users={"scanner": "pw1"})
        async with serving(shield):
            h, p = shield.address
            with pytest.raises(ProxyError):
                await Proxy.from_url(f"socks5://{h}:{p}").connect(loopback_host, box.echo_port, timeout=5)
            with pytest.raises(ProxyError):
                await Proxy.from_url(f"socks5://scanner:wrong@{h}:{p}").connect(
                    loopback_host, box.echo_port, timeout=5
                )
            proxy = Proxy.from_url(f"socks5://scanner:pw1@{h}:{p}")
            stream = await proxy.connect(loopback_host, box.echo_port, timeout=5)
            async with stream:
                await stream.send(b"a")
                assert await stream.receive() == b"a"
    assert box.accepted.get(box.echo_port) == 1
    assert shield.stats.auth_failures == 2
    assert shield.sessions[-1].username == "scanner"


# --- relay -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "user-space-copy"])
async def test_relay_counts_bytes_each_way_with_bounded_memory_and_idle_timeout(
    loopback_host: str, splice: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 MiB each way through one session (backpressure keeps it to one chunk per direction), then a silent
    session is closed by the idle timeout; with the kernel pipe and with the user-space buffer."""
    if splice and not _shield._SPLICE:
        pytest.skip("splice(2) is Linux only")
    monkeypatch.setattr(_shield, "_SPLICE", splice)
    async with fragile_box(loopback_host, hang_at=50) as box:
        shield = fp.Shield(scope=fp.Scope(loopback_host), listen_port=0, idle_timeout_s=0.5)
        async with serving(shield):
            stream = await _socks(shield, loopback_host, box.echo_port)
            total = 8 << 20
            chunk = b"x" * 65536
            got = 0
            async with stream:

                async def reader() -> None:
                    nonlocal got
                    while got < total:
                        got += len(await stream.receive(1 << 20))

                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(reader)
                        for _ in range(total // len(chunk)):
                            await stream.send(chunk)
            idle = await _socks(shield, loopback_host, box.echo_port)
            async with idle:
                with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await idle.receive()
    first, second = shield.sessions
    assert (first.bytes_up, first.bytes_down) == (total, total)
    assert second.outcome == "idle_timeout"


async def _echo_through(stream: anyio.abc.SocketStream, total: int) -> None:
    chunk = b"x" * 65536

    async def reader() -> None:
        got = 0
        while got < total:
            got += len(await stream.receive(65536))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        for _ in range(total // len(chunk)):
            await stream.send(chunk)


def _library_heap() -> int:
    """Bytes the library's own code holds now on the Python heap (the test's device and client excluded)."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/fragileprobe/*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def _peak_library_heap_while(work: Awaitable[None]) -> int:
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _library_heap())
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        await work
        tg.cancel_scope.cancel()
    return peak


async def test_relay_memory_grows_with_sessions_not_with_bytes(loopback_host: str) -> None:
    """The library's heap while one session relays 32 MiB each way peaks where it does for 2 MiB (the bytes
    stay in the kernel's pipe; nothing is kept per chunk), while 50 open sessions do cost memory."""
    async with fragile_box(loopback_host, hang_at=200) as box:
        shield = fp.Shield(scope=fp.Scope(loopback_host), listen_port=0, default_ceiling=100)
        async with serving(shield):
            tracemalloc.start()
            try:
                peaks = []
                for total in (2 << 20, 32 << 20):
                    stream = await _socks(shield, loopback_host, box.echo_port)
                    async with stream:
                        with anyio.fail_after(60):
                            peaks.append(await _peak_library_heap_while(_echo_through(stream, total)))
                base = _library_heap()
                held = [await _socks(shield, loopback_host, box.echo_port) for _ in range(50)]
                await _until(lambda: shield.stats.active == 50)
                per_session = (_library_heap() - base) / 50
            finally:
                tracemalloc.stop()
            for stream in held:
                await stream.aclose()
    assert peaks[1] - peaks[0] < 64 * 1024, peaks  # 16x the bytes, not one more chunk's worth of heap
    assert per_session > 1024, per_session  # sessions do cost memory (so the measure can see growth)
    relayed = [s for s in shield.sessions if s.bytes_up]
    assert [(s.bytes_up, s.bytes_down) for s in relayed] == [(2 << 20, 2 << 20), (32 << 20, 32 << 20)]


# --- preemption (pure) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "relaying", "expected"),
    [
        ([], [("a", 0.0)], []),  # nobody waits: nothing ends
        ([("a", 9.5)], [("a", 0.0)], []),  # waited 0.5 s < 1 s: not yet
        ([("a", 9.0)], [("a", 9.5)], []),  # the session carried a byte 0.5 s ago: not idle
        ([("a", 9.0)], [("b", 0.0)], []),  # another client's session: never
        ([("a", 9.0)], [("a", 5.0), ("a", 2.0), ("b", 0.0)], [1]),  # the idlest of its own
        ([("a", 9.0), ("a", 8.0)], [("a", 5.0), ("a", 2.0)], [1, 0]),  # one each, never the same twice
        ([("a", 9.0), ("a", 8.0)], [("a", 5.0)], [0]),  # one session for two waiters: ended once
        ([("a", 9.0), ("b", 9.0)], [("b", 1.0), ("a", 1.0)], [1, 0]),  # each client its own
    ],
)
def test_preemptions_table(
    waiting: list[tuple[str, float]], relaying: list[tuple[str, float]], expected: list[int]
) -> None:
    assert _shield.preemptions(waiting, relaying, 10.0, 1.0) == expected


_clients = st.sampled_from(["a", "b", "c"])
_times = st.floats(0, 10, allow_nan=False)


@given(
    waiting=st.lists(st.tuples(_clients, _times), max_size=6),
    relaying=st.lists(st.tuples(_clients, _times), max_size=6),
    after=st.floats(0.01, 5),
)
def test_preemptions_end_only_the_waiting_clients_own_idle_sessions(
    waiting: list[tuple[str, float]], relaying: list[tuple[str, float]], after: float
) -> None:
    now = 10.0
    chosen = _shield.preemptions(waiting, relaying, now, after)
    assert len(chosen) == len(set(chosen))  # no session twice
    eligible = [c for c, since in waiting if now - since >= after]
    assert len(chosen) <= len(eligible)  # at most one per CONNECT that has waited long enough
    for i in chosen:
        owner, last = relaying[i]
        assert owner in eligible  # only a waiting client's own session
        assert now - last >= after  # only an idle one
    for client in {c for c, _ in relaying}:  # per client: as many as it has waiters and idle sessions
        idle = sum(1 for c, last in relaying if c == client and now - last >= after)
        mine = sum(1 for i in chosen if relaying[i][0] == client)
        assert mine == min(idle, eligible.count(client))


def test_the_cli_medical_ceiling_default_is_the_library_default() -> None:
    """`fragileprobe shield` and `Shield()` give an unknown medical device the same ceiling: two sessions on
    the device, so the watchdog's heartbeat runs beside one relayed session (at 1 it could not run)."""
    import inspect

    from fragileprobe import cli
    from fragileprobe._shield import MEDICAL_CEILING

    assert inspect.signature(cli.shield).parameters["medical_ceiling"].default == MEDICAL_CEILING == 2


async def test_a_session_still_relaying_when_the_shield_closes_is_audited_as_relayed(
    loopback_host: str, tmp_path: Path
) -> None:
    """`--exec` closes the shield the moment the tool exits, while the tool's last sessions may still be
    relaying: their record says what the client saw (reply 0, relayed) and that the shield closed them."""
    store = ProfileStore(tmp_path / "s.db")
    async with fragile_box(loopback_host, hang_at=99) as box:
        shield = fp.Shield(
            scope=fp.Scope(loopback_host),
            listen_port=0,
            store=store,
            default_ceiling=2,
            heartbeats={loopback_host: _heartbeat(box)},
            **BEAT,
        )
        async with shield:
            stream = await _socks(shield, loopback_host, box.echo_port)
            await stream.send(b"ping\n")
            with anyio.fail_after(5):
                assert await stream.receive() == b"ping\n"
            # the shield closes with the session open (no _settle: nothing waits for it to end)
        await stream.aclose()
    rows = store.shield_sessions(loopback_host)
    assert [(r["reply"], r["outcome"], r["port"]) for r in rows] == [(0, "shield_closed", box.echo_port)]
    assert rows[0]["bytes_up"] == rows[0]["bytes_down"] == 5
    store.close()


async def test_wait_idle_returns_once_the_clients_sessions_have_ended_on_the_shields_side(
    loopback_host: str, tmp_path: Path
) -> None:
    """What `--exec` does once the tool exited: the session then ends as its client ended it (relayed)."""
    store = ProfileStore(tmp_path / "s.db")
    async with fragile_box(loopback_host, hang_at=99) as box:
        shield = fp.Shield(
            scope=fp.Scope(loopback_host),
            listen_port=0,
            store=store,
            default_ceiling=2,
            heartbeats={loopback_host: _heartbeat(box)},
            **BEAT,
        )
        async with shield:
            assert await shield.wait_idle(0) is True
            stream = await _socks(shield, loopback_host, box.echo_port)
            await stream.send(b"ping\n")
            with anyio.fail_after(5):
                assert await stream.receive() == b"ping\n"
            assert await shield.wait_idle(0.2) is False
            await stream.aclose()
            assert await shield.wait_idle(5) is True
    rows = store.shield_sessions(loopback_host)
    assert [(r["reply"], r["outcome"]) for r in rows] == [(0, "relayed")]
    store.close()


async def _preempting_scenario(
    host: str, ceiling: int, clients: int, hold_s: float
) -> tuple[FragileBox, list]:
    """One client address holding idle sessions while more of its CONNECTs wait: preemption at work."""
    async with fragile_box(host, hang_at=ceiling + 1) as box:
        shield = fp.Shield(
            scope=fp.Scope(host),
            listen_port=0,
            ceilings={host: ceiling},
            heartbeats={host: _heartbeat(box)},
            preempt_idle_s=0.05,
            **BEAT,
        )
        replies: list[bytes | None] = []
        async with serving(shield):

            async def one() -> None:
                stream = await _socks(shield, box.host, box.echo_port)
                async with stream:
                    try:
                        await stream.send(b"ping\n")
                        with anyio.fail_after(5):
                            replies.append(await stream.receive())
                        await anyio.sleep(hold_s)  # idle: its slot may be handed to a waiting CONNECT
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        replies.append(None)  # preempted before its echo came back

            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(one)
        return box, [s.outcome for s in shield.sessions], replies


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ceiling=st.integers(2, 4), clients=st.integers(2, 6), hold_ms=st.integers(500, 800))
def test_preemption_never_lets_the_device_hold_more_than_its_ceiling(
    loopback_hosts: Callable[[], str], ceiling: int, clients: int, hold_ms: int
) -> None:
    """Idle sessions handed over to waiting CONNECTs: the slot passes only once the device has let go of
    the preempted session, so the device's own count stays within the ceiling, and nobody waits forever."""
    box, outcomes, replies = anyio.run(
        _preempting_scenario, loopback_hosts(), ceiling, clients, hold_ms / 1000
    )
    assert box.peak_relay <= ceiling - 1
    assert box.peak <= ceiling
    assert not box.hung
    assert len(outcomes) == clients
    assert set(outcomes) <= {"relayed", "preempted_idle"}
    assert set(replies) <= {b"ping\n", None}
    # more sessions than relay places, each idle longer than preempt_idle_s plus a check of the host's task
    if clients > ceiling - 1:
        assert "preempted_idle" in outcomes
