"""The emulator's SYN-scan sensitivity: half-open scans wedge the story pump, full connects never do.

The pure handshake tracker is tested with hypothesis; the watcher itself needs root and scapy (tests
marked ``raw``) and, for the nmap comparisons, the nmap binary (``nmap``). Everything stays on loopback.
"""

from __future__ import annotations

import random
import re
import shutil
import threading
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from fragileprobe import grab_banner, http_get, raw_available, tcp_connect
from fragileprobe._raw import ACK, FIN, PSH, RST, SYN, TcpSegment
from fragileprobe.emulator import DeviceState, EmulatedDevice, EmulatedPump
from fragileprobe.emulator._synwatch import FLOW_TTL_S, HalfOpenProbe, HandshakeTracker, _tap_filter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_RAW_OK, _RAW_REASON = raw_available()
raw_only = pytest.mark.skipif(not _RAW_OK, reason=f"raw-packet test skipped: {_RAW_REASON}")
NMAP = shutil.which("nmap")
nmap_only = pytest.mark.skipif(NMAP is None, reason="nmap is not installed")

DEVICE = "127.9.0.2"
CLIENT = "127.0.0.1"
PORTS = (21, 22, 23, 8080)


# ------------------------------------------------------------------------------------ pure: the tracker


def _seg(from_client: bool, client_port: int, device_port: int, flags: int, at_s: float) -> TcpSegment:
    src, dst = (CLIENT, DEVICE) if from_client else (DEVICE, CLIENT)
    sport, dport = (client_port, device_port) if from_client else (device_port, client_port)
    return TcpSegment(
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        flags=flags,
        ttl=64,
        window=65535,
        mss=None,
        window_scale=None,
        options=(),
        at_s=at_s,
    )


# What each kind of client does to one open (or closed) port, as (from_client, flags) in wire order.
FLOWS: dict[str, list[tuple[bool, int]]] = {
    # connect, read a banner, close gracefully (fragileprobe's grab_banner)
    "full": [
        (True, SYN),
        (False, SYN | ACK),
        (True, ACK),
        (False, PSH | ACK),
        (True, FIN | ACK),
        (False, FIN | ACK),
        (True, ACK),
    ],
    # connect and reset at once (nmap -sT closes with SO_LINGER 0)
    "full_then_rst": [(True, SYN), (False, SYN | ACK), (True, ACK), (True, RST | ACK)],
    # half-open: the scanner's kernel answers the SYN-ACK with RST (nmap -sS)
    "half": [(True, SYN), (False, SYN | ACK), (True, RST)],
    # a closed port (or a device booting): refused
    "refused": [(True, SYN), (False, RST | ACK)],
    # a full connect reset at once, whose ACK the sniffer missed (a burst outran it)
    "ack_missed_then_rst": [(True, SYN), (False, SYN | ACK), (True, RST | ACK)],
    # a retransmitted SYN, then a full connect
    "retransmit_full": [(True, SYN), (True, SYN), (False, SYN | ACK), (True, ACK)],
    # a SYN that is never answered
    "unanswered": [(True, SYN)],
}


@st.composite
def interleaved_flows(draw: st.DrawFn) -> tuple[list[str], list[TcpSegment]]:
    """Several flows of random kinds, their segments interleaved at random (each flow keeps its order)."""
    kinds = draw(st.lists(st.sampled_from(sorted(FLOWS)), min_size=1, max_size=12))
    pending = [[(i, step) for step in FLOWS[kind]] for i, kind in enumerate(kinds)]
    ports = [draw(st.sampled_from(PORTS)) for _ in kinds]
    order: list[tuple[int, tuple[bool, int]]] = []
    while any(pending):
        live = [p for p in pending if p]
        chosen = draw(st.sampled_from(range(len(live))))
        order.append(live[chosen].pop(0))
    segments = [
        _seg(from_client, 40000 + i, ports[i], flags, at_s=n * 0.001)
        for n, (i, (from_client, flags)) in enumerate(order)
    ]
    return kinds, segments


@given(interleaved_flows())
def test_only_half_open_handshakes_are_reported_whatever_the_interleaving(
    flows: tuple[list[str], list[TcpSegment]],
) -> None:
    kinds, segments = flows
    tracker = HandshakeTracker(DEVICE, PORTS)
    probes = [p for p in (tracker.feed(s) for s in segments) if p is not None]
    half = [i for i, kind in enumerate(kinds) if kind == "half"]
    assert sorted(p.client_port for p in probes) == [40000 + i for i in half]
    assert tracker.half_open == len(half)
    full = sum(kind in ("full", "full_then_rst", "ack_missed_then_rst", "retransmit_full") for kind in kinds)
    assert tracker.full_connects == full


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(1, 65535),
            st.sampled_from(PORTS),
            st.sampled_from([SYN, SYN | ACK, ACK, RST, RST | ACK, FIN | ACK]),
        ),
        max_size=300,
    )
)
@settings(max_examples=50)
def test_the_flow_table_never_exceeds_its_bound(steps: list[tuple[bool, int, int, int]]) -> None:
    tracker = HandshakeTracker(DEVICE, PORTS, max_flows=8)
    for n, (from_client, client_port, device_port, flags) in enumerate(steps):
        tracker.feed(_seg(from_client, client_port, device_port, flags, at_s=n * 0.001))
        assert tracker.flows <= 8


def test_segments_of_other_hosts_and_ports_are_ignored() -> None:
    tracker = HandshakeTracker(DEVICE, (22,))
    other_port = [_seg(c, 5000, 2222, f, 0.0) for c, f in FLOWS["half"]]
    other_host = [
        TcpSegment(
            src=CLIENT,
            dst="127.9.0.3",
            sport=5000,
            dport=22,
            flags=SYN,
            ttl=64,
            window=1,
            mss=None,
            window_scale=None,
            options=(),
            at_s=0.0,
        ),
        TcpSegment(
            src="127.9.0.3",
            dst=CLIENT,
            sport=22,
            dport=5000,
            flags=SYN | ACK,
            ttl=64,
            window=1,
            mss=None,
            window_scale=None,
            options=(),
            at_s=0.0,
        ),
        TcpSegment(
            src=CLIENT,
            dst="127.9.0.3",
            sport=5000,
            dport=22,
            flags=RST,
            ttl=64,
            window=1,
            mss=None,
            window_scale=None,
            options=(),
            at_s=0.0,
        ),
    ]
    assert all(tracker.feed(s) is None for s in other_port + other_host)
    assert tracker.flows == 0


def test_a_syn_ack_seen_without_its_syn_still_counts_when_answered_by_rst() -> None:
    """The watcher may start between a scanner's SYN and the device's SYN-ACK."""
    tracker = HandshakeTracker(DEVICE, PORTS)
    assert tracker.feed(_seg(False, 5000, 23, SYN | ACK, 1.0)) is None
    assert tracker.feed(_seg(True, 5000, 23, RST, 1.0)) == HalfOpenProbe(CLIENT, 5000, 23, 1.0)


def test_a_handshake_older_than_the_flow_ttl_is_forgotten() -> None:
    tracker = HandshakeTracker(DEVICE, PORTS)
    tracker.feed(_seg(True, 5000, 22, SYN, 0.0))
    tracker.feed(_seg(False, 5000, 22, SYN | ACK, 0.0))
    assert tracker.feed(_seg(True, 5000, 22, RST, FLOW_TTL_S + 1.0)) is None
    assert tracker.flows == 0


def test_the_shared_tap_filter_names_few_hosts_then_their_networks_then_all_of_loopback() -> None:
    assert _tap_filter(["127.9.0.10", "127.9.0.2"]) == "tcp and (host 127.9.0.2 or host 127.9.0.10)"
    one_net = [f"127.9.0.{i}" for i in range(2, 40)]
    assert _tap_filter(one_net) == "tcp and (net 127.9.0.0/24)"
    two_nets = [*one_net, "127.9.7.5"]
    assert _tap_filter(two_nets) == "tcp and (net 127.9.0.0/24 or net 127.9.7.0/24)"
    spread = [f"127.{i}.0.2" for i in range(40)]
    assert _tap_filter(spread) == "tcp and net 127.0.0.0/8"


# --------------------------------------------------------------------------------- raw: the live watcher


def _sniffer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fragileprobe-") and t.is_alive()]


@pytest.fixture
def no_leaked_sniffers() -> Iterator[None]:
    before = len(_sniffer_threads())
    yield
    assert len(_sniffer_threads()) == before, "a sniffer thread outlived its device"


async def _nmap(*args: str) -> str:
    assert NMAP is not None
    with anyio.fail_after(60):
        done = await anyio.run_process([NMAP, "-n", "-Pn", "--max-retries", "0", *args], check=True)
    return done.stdout.decode()


async def _half_open_syn(host: str, port: int) -> None:
    """Send one SYN from a raw socket; the kernel answers the pump's SYN-ACK with RST (no socket here)."""

    def send() -> None:
        from scapy.interfaces import resolve_iface
        from scapy.layers.inet import IP, TCP

        sock = resolve_iface("lo").l3socket(False)(iface="lo")
        try:
            sock.send(IP(dst=host) / TCP(sport=random.randrange(33000, 60000), dport=port, flags="S"))
        finally:
            sock.close()

    await anyio.to_thread.run_sync(send)


async def _wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    assert callable(predicate)
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the emulator offers no event for this in tests
            await anyio.sleep(0.01)


async def _assert_wedged_except_ftp(pump: EmulatedDevice) -> None:
    host = pump.host
    ftp = await grab_banner(host, pump.port(21), timeout_s=2.0)
    assert ftp.data.startswith(b"220 (vsFTPd 2.3.4)"), ftp
    for model_port in (22, 23):
        silent = await grab_banner(host, pump.port(model_port), timeout_s=2.0, read_timeout_s=0.3)
        assert silent.data == b"", (model_port, silent)
    web = await http_get(host, pump.port(8080), timeout_s=1.0, read_timeout_s=0.5, total_timeout_s=1.0)
    assert web.status is None, web


@pytest.mark.raw
@pytest.mark.nmap
@raw_only
@nmap_only
@pytest.mark.usefixtures("no_leaked_sniffers")
async def test_nmap_syn_scan_wedges_the_story_pump_except_ftp(loopback_host: str) -> None:
    async with EmulatedPump(loopback_host, seed=3, boot_delay_s=0.05) as pump:
        assert pump.synwatch is not None
        assert pump.synwatch.stats.active
        ports = ",".join(str(pump.port(p)) for p in PORTS)
        report = await _nmap("-sS", "-p", ports, loopback_host)
        assert len(re.findall(r"/tcp\s+open\s", report)) == 4, report
        await _wait_for(lambda: pump.state is DeviceState.HUNG)
        await _assert_wedged_except_ftp(pump)
        stats = pump.synwatch.stats
        assert stats.half_open_probes >= 1
        assert stats.wedges == 1
        assert pump.stats.crashes == 1
        # A power cycle clears the wedge.
        await pump.power_cycle()
        assert pump.state is DeviceState.UP
        ssh = await grab_banner(loopback_host, pump.port(22), timeout_s=2.0)
        assert ssh.data.startswith(b"SSH-2.0-dropbear")


@pytest.mark.raw
@raw_only
@pytest.mark.usefixtures("no_leaked_sniffers")
async def test_one_half_open_syn_wedges_the_story_pump(loopback_host: str) -> None:
    """No nmap needed: a single SYN answered by the kernel's RST is enough."""
    async with EmulatedPump(loopback_host, seed=4, boot_delay_s=0.05) as pump:
        assert pump.synwatch is not None
        await _half_open_syn(loopback_host, pump.port(22))
        await _wait_for(lambda: pump.state is DeviceState.HUNG)
        assert pump.spared_ports == frozenset({21})
        await _assert_wedged_except_ftp(pump)


@pytest.mark.raw
@raw_only
@pytest.mark.usefixtures("no_leaked_sniffers")
async def test_fragileprobes_full_connects_never_wedge_the_story_pump(loopback_host: str) -> None:
    async with EmulatedPump(loopback_host, seed=5, boot_delay_s=0.05) as pump:
        assert pump.synwatch is not None
        connects = 0
        for _ in range(3):
            for model_port in (21, 22, 23):
                result = await grab_banner(loopback_host, pump.port(model_port), timeout_s=2.0)
                assert result.data, result
                connects += 1
            web = await http_get(loopback_host, pump.port(8080), timeout_s=2.0)
            assert web.status == 200
            assert (await tcp_connect(loopback_host, pump.port(8080), timeout_s=2.0)).outcome.value == "open"
            connects += 2
        # The watcher saw every handshake complete, and none of them was half-open.
        await _wait_for(lambda: pump.synwatch is not None and pump.synwatch.stats.full_connects >= connects)
        assert pump.synwatch.stats.half_open_probes == 0
        assert pump.state is DeviceState.UP
        assert pump.stats.crashes == 0


@pytest.mark.raw
@pytest.mark.nmap
@raw_only
@nmap_only
@pytest.mark.usefixtures("no_leaked_sniffers")
async def test_nmap_connect_scan_does_not_wedge_the_story_pump(loopback_host: str) -> None:
    """nmap -sT completes each handshake before its RST: a full connect, which this pump survives."""
    async with EmulatedPump(loopback_host, seed=6, boot_delay_s=0.05) as pump:
        assert pump.synwatch is not None
        ports = ",".join(str(pump.port(p)) for p in PORTS)
        report = await _nmap("-sT", "-p", ports, loopback_host)
        assert len(re.findall(r"/tcp\s+open\s", report)) == 4, report
        await _wait_for(lambda: pump.synwatch is not None and pump.synwatch.stats.full_connects >= 4)
        assert pump.synwatch.stats.half_open_probes == 0
        assert pump.state is DeviceState.UP


@pytest.mark.raw
@raw_only
@pytest.mark.usefixtures("no_leaked_sniffers")
async def test_pumps_share_one_sniffer_and_a_scan_wedges_only_the_scanned_pump(
    loopback_hosts: Callable[[], str],
) -> None:
    first, second = loopback_hosts(), loopback_hosts()
    before = len(_sniffer_threads())
    async with EmulatedPump(second, seed=8, boot_delay_s=0.05) as bystander:
        async with EmulatedPump(first, seed=7, boot_delay_s=0.05) as scanned:
            assert len(_sniffer_threads()) == before + 1
            await _half_open_syn(first, scanned.port(23))
            await _wait_for(lambda: scanned.state is DeviceState.HUNG)
            ssh = await grab_banner(second, bystander.port(22), timeout_s=2.0)
            assert ssh.data.startswith(b"SSH-2.0-dropbear")
            assert bystander.state is DeviceState.UP
        # The first pump is gone; the second is still watched.
        await _half_open_syn(second, bystander.port(23))
        await _wait_for(lambda: bystander.state is DeviceState.HUNG)
        assert bystander.synwatch is not None
        assert bystander.synwatch.stats.wedges == 1


@pytest.mark.raw
@raw_only
async def test_a_model_that_is_not_syn_sensitive_has_no_watcher(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="workstation", seed=1) as device:
        assert device.synwatch is None
        assert not device.model.fragility.syn_sensitive


async def test_without_raw_sockets_the_pump_runs_and_logs_that_syn_sensitivity_is_inactive(
    loopback_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a user without CAP_NET_RAW (the check itself is tested against the kernel in test_raw.py).
    monkeypatch.setattr("fragileprobe._raw._has_net_raw", lambda: False)
    with capture_logs() as logs:
        async with EmulatedPump(loopback_host, seed=1, boot_delay_s=0.05) as pump:
            assert pump.synwatch is not None
            stats = pump.synwatch.stats
            assert not stats.active
            assert "root or CAP_NET_RAW" in (stats.inactive_reason or "")
            ftp = await grab_banner(loopback_host, pump.port(21), timeout_s=2.0)
            assert ftp.data.startswith(b"220 ")
    inactive = [e for e in logs if e["event"] == "emulator.synwatch.inactive"]
    assert len(inactive) == 1
    assert inactive[0]["host"] == loopback_host
    assert "CAP_NET_RAW" in inactive[0]["reason"]
