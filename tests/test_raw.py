"""Raw-packet features behind the scapy seam: ICMP, passive OS hint, pcap capture, and clear errors.

Tests marked ``raw`` need root (CAP_NET_RAW) and scapy and are skipped otherwise; CI runs them as root. All
traffic stays on loopback, each emulated device on its own 127.x.y.z address.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe import (
    ConfigError,
    capture,
    grab_banner,
    icmp_reachable,
    os_hint_from_ttl,
    raw_available,
    syn_ack_observer,
)
from fragileprobe._raw import SynAckObservation, TcpSegment, summarize_syn_acks, tcp_segment_from_frame
from fragileprobe.emulator import EmulatedDevice, EmulatedPump

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

_RAW_OK, _RAW_REASON = raw_available()
_SCAPY = importlib.util.find_spec("scapy") is not None
# Stacked under @pytest.mark.raw: skips with the exact reason (no scapy, or no root / CAP_NET_RAW).
raw_only = pytest.mark.skipif(not _RAW_OK, reason=f"raw-packet test skipped: {_RAW_REASON}")

# Run in a subprocess: take CAP_NET_RAW away (when running as root), as a non-root user lacks it. Dropping
# the capability rather than the uid keeps the interpreter (installed under /root) readable.
DROP_NET_RAW = textwrap.dedent(
    """
    import ctypes, os, socket
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
        data = (Data * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
        no_net_raw = ~(1 << 13) & 0xFFFFFFFF  # CAP_NET_RAW
        data[0].effective &= no_net_raw
        data[0].permitted &= no_net_raw
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        print("RAW_SOCKET_OPENED")
    except PermissionError:
        print("RAW_SOCKET_DENIED")
    """
)

# Run in a subprocess: make scapy impossible to import, as on a machine without the [raw] extra.
BLOCK_SCAPY = "import sys\nsys.modules['scapy'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


# --------------------------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize(
    ("ttl", "initial", "family", "hint"),
    [
        (64, 64, "generic unix", "generic unix"),
        (57, 64, "generic unix", "generic unix"),
        (128, 128, "windows", "windows"),
        (120, 128, "windows", "windows"),
        (255, 255, "embedded", "embedded/network device"),
        (250, 255, "embedded", "embedded/network device"),
        (30, 32, "embedded", "old embedded stack or Windows 9x"),
        (0, 0, "unknown", "unknown"),
        (256, 0, "unknown", "unknown"),
    ],
)
def test_os_hint_from_ttl_maps_initial_ttls_to_stack_families(
    ttl: int, initial: int, family: str, hint: str
) -> None:
    assert os_hint_from_ttl(ttl) == (initial, family, hint)


@given(st.integers(min_value=1, max_value=255))
def test_initial_ttl_is_the_smallest_common_value_at_or_above_the_observed(ttl: int) -> None:
    initial, family, _ = os_hint_from_ttl(ttl)
    assert initial in (32, 64, 128, 255)
    assert initial >= ttl
    assert all(not (ttl <= other < initial) for other in (32, 64, 128, 255))
    assert family != "unknown"


@given(st.integers())
def test_os_hint_from_ttl_never_raises(ttl: int) -> None:
    initial, family, hint = os_hint_from_ttl(ttl)
    assert isinstance(initial, int)
    assert family
    assert hint


def _obs(port: int, ttl: int) -> SynAckObservation:
    initial, _, _ = os_hint_from_ttl(ttl)
    return SynAckObservation(
        port=port,
        ttl=ttl,
        initial_ttl=initial,
        window=65535,
        mss=1460,
        window_scale=None,
        options=("MSS",),
        syn_acks=1,
    )


def test_summary_without_syn_acks_is_unknown_and_says_why() -> None:
    hint = summarize_syn_acks("127.0.0.9", (), loopback=False)
    assert hint.os_family == "unknown"
    assert hint.initial_ttl is None
    assert "no SYN-ACK" in (hint.note or "")


def test_summary_of_a_network_device_notes_mixed_ttls() -> None:
    hint = summarize_syn_acks("10.0.0.1", (_obs(23, 254), _obs(80, 255), _obs(8080, 63)), loopback=False)
    assert (hint.initial_ttl, hint.os_hint) == (255, "embedded/network device")
    assert "mixed initial TTLs" in (hint.note or "")
    assert hint.ttls_by_port == {23: 254, 80: 255, 8080: 63}


def test_summary_on_loopback_warns_that_it_describes_the_local_stack() -> None:
    hint = summarize_syn_acks("127.0.0.9", (_obs(22, 64),), loopback=True)
    assert hint.os_family == "generic unix"
    assert "loopback" in (hint.note or "")


@given(st.binary(max_size=200), st.sampled_from([1, 101, 113, 0]))
def test_frame_parser_never_raises_on_junk(frame: bytes, linktype: int) -> None:
    segment = tcp_segment_from_frame(frame, linktype, 1.0)
    assert segment is None or isinstance(segment, TcpSegment)


@pytest.mark.skipif(not _SCAPY, reason="scapy is not installed")
@settings(deadline=None, max_examples=60)  # building packets with scapy is slow, and slower on a busy machine
@given(
    sport=st.integers(1, 65535),
    dport=st.integers(1, 65535),
    flags=st.integers(0, 255),
    ttl=st.integers(1, 255),
    window=st.integers(0, 65535),
    mss=st.none() | st.integers(0, 65535),
    wscale=st.none() | st.integers(0, 14),
    payload=st.binary(max_size=40),
    vlan=st.booleans(),
)
def test_frame_parser_agrees_with_scapy(
    sport: int,
    dport: int,
    flags: int,
    ttl: int,
    window: int,
    mss: int | None,
    wscale: int | None,
    payload: bytes,
    vlan: bool,
) -> None:
    """The hot-path header parser reads what scapy builds, VLAN tags and TCP options included."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Dot1Q, Ether

    options: list[tuple[str, object]] = []
    if mss is not None:
        options.append(("MSS", mss))
    options.append(("SAckOK", b""))
    if wscale is not None:
        options.append(("WScale", wscale))
    ip = (
        IP(src="127.1.2.3", dst="127.4.5.6", ttl=ttl)
        / TCP(sport=sport, dport=dport, flags=flags, window=window, options=options)
        / payload
    )
    frame = bytes(Ether() / Dot1Q(vlan=5) / ip) if vlan else bytes(Ether() / ip)
    segment = tcp_segment_from_frame(frame, 1, 2.5)
    assert segment is not None
    assert (segment.src, segment.dst, segment.sport, segment.dport) == (
        "127.1.2.3",
        "127.4.5.6",
        sport,
        dport,
    )
    assert (segment.flags, segment.ttl, segment.window, segment.at_s) == (flags, ttl, window, 2.5)
    assert (segment.mss, segment.window_scale) == (mss, wscale)
    assert "SAckOK" in segment.options


def test_frame_parser_ignores_non_tcp_and_fragments() -> None:
    pytest.importorskip("scapy")
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.l2 import Ether

    assert tcp_segment_from_frame(bytes(Ether() / IP(dst="127.0.0.2") / ICMP()), 1, 0.0) is None
    later_fragment = bytes(Ether() / IP(dst="127.0.0.2", frag=10, proto=6) / (b"x" * 40))
    assert tcp_segment_from_frame(later_fragment, 1, 0.0) is None
    raw_ip = bytes(IP(dst="127.0.0.2") / TCP(dport=22, flags="S"))
    segment = tcp_segment_from_frame(raw_ip, 101, 0.0)
    assert segment is not None
    assert segment.is_syn


# ------------------------------------------------------------------------------------- validation, no raw


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 101}, "count"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 31.0}, "timeout_s"),
        ({"interval_s": -1.0}, "interval_s"),
    ],
)
async def test_icmp_reachable_rejects_bad_arguments_before_sending(
    kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: must be .*, got {kwargs[field]!r}$") as info:
        await icmp_reachable("127.0.0.1", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize("host", ["::1", "not-an-address", "127.0.0.256"])
async def test_raw_features_take_ipv4_addresses_only(host: str) -> None:
    with pytest.raises(ConfigError, match="host"):
        await icmp_reachable(host)
    with pytest.raises(ConfigError, match="host"):
        syn_ack_observer(host)
    with pytest.raises(ConfigError, match="host"):
        capture(host, "/nonexistent/x.pcap")


def test_capture_rejects_bounds_below_their_floor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_packets"):
        capture("127.0.0.1", tmp_path / "x.pcap", max_packets=0)
    with pytest.raises(ConfigError, match="max_bytes"):
        capture("127.0.0.1", tmp_path / "x.pcap", max_bytes=10)


def test_importing_the_raw_seam_does_not_import_scapy() -> None:
    """The seam, its public names and the SYN watcher load without scapy; scapy comes with first use."""
    out = _run(
        "import sys, fragileprobe\n"
        "fragileprobe.IcmpHeartbeat, fragileprobe.capture, fragileprobe.raw_available()\n"
        "import fragileprobe.emulator._synwatch\n"
        "print('scapy' in sys.modules)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not _SCAPY, reason="scapy is not installed")
def test_loading_scapy_is_quiet_and_leaves_the_applications_logging_alone() -> None:
    out = _run(
        "import logging, sys\n"
        "from fragileprobe._raw import _scapy\n"
        "_scapy('test')\n"
        "root = logging.getLogger()\n"
        "scapy_level = logging.getLogger('scapy').level\n"
        "print(len(root.handlers), root.level, scapy_level, 'scapy.all' in sys.modules)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    # No handler on the root logger, its level untouched, scapy's own default kept, never scapy.all.
    assert out.stdout.split() == ["0", str(logging.WARNING), str(logging.WARNING), "False"]


def test_without_raw_socket_privilege_every_raw_feature_says_so() -> None:
    """Without CAP_NET_RAW: a RawUnavailableError naming the privilege; the core still works."""
    code = DROP_NET_RAW + textwrap.dedent(
        """
        import anyio, fragileprobe
        from fragileprobe import RawUnavailableError
        ok, reason = fragileprobe.raw_available()
        print("AVAILABLE", ok, reason)
        try:
            fragileprobe.IcmpHeartbeat()
        except RawUnavailableError as exc:
            print("HEARTBEAT", exc)
        async def main():
            for name, enter in (
                ("ICMP", lambda: fragileprobe.icmp_reachable("127.0.0.1")),
                ("OBSERVER", lambda: fragileprobe.syn_ack_observer("127.0.0.1").__aenter__()),
                ("CAPTURE", lambda: fragileprobe.capture("127.0.0.1", "/tmp/never.pcap").__aenter__()),
            ):
                try:
                    await enter()
                except RawUnavailableError as exc:
                    print(name, exc)
            # The core needs no privilege: a full connect to a closed loopback port is just CLOSED.
            result = await fragileprobe.tcp_connect("127.0.0.1", 9, timeout_s=1.0)
            print("CORE", result.outcome.value)
        anyio.run(main)
        """
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines() if " " in line)
    if "RAW_SOCKET_OPENED" in out.stdout:
        pytest.skip("this interpreter keeps CAP_NET_RAW (file capabilities): cannot simulate its absence")
    # The check agrees with the kernel: a packet socket really cannot be opened.
    assert "RAW_SOCKET_DENIED" in out.stdout
    assert lines["AVAILABLE"].startswith("False")
    for name in ("AVAILABLE", "HEARTBEAT", "ICMP", "OBSERVER", "CAPTURE"):
        assert "root or CAP_NET_RAW" in lines[name], (name, lines[name])
    assert lines["HEARTBEAT"].startswith("IcmpHeartbeat needs raw packets")
    assert lines["CAPTURE"].startswith("capture needs raw packets")
    assert lines["CORE"] == "closed"


def test_without_scapy_raw_features_name_the_extra_to_install() -> None:
    """Without scapy: RawUnavailableError says "pip install 'fragileprobe[raw]'"; the core still works."""
    code = BLOCK_SCAPY + textwrap.dedent(
        """
        import anyio, fragileprobe
        from fragileprobe import RawUnavailableError
        ok, reason = fragileprobe.raw_available()
        print("AVAILABLE", ok, reason)
        try:
            fragileprobe.IcmpHeartbeat()
        except RawUnavailableError as exc:
            print("HEARTBEAT", exc)
        try:
            fragileprobe.require_raw("passive OS hint")
        except RawUnavailableError as exc:
            print("REQUIRE", exc)
        print("CORE", fragileprobe.Scope(["127.0.0.0/24"]).check("127.0.0.5"))
        """
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines() if " " in line)
    assert lines["AVAILABLE"].startswith("False")
    for name in ("AVAILABLE", "HEARTBEAT", "REQUIRE"):
        assert "scapy is not installed (pip install 'fragileprobe[raw]')" in lines[name], lines[name]
    assert lines["REQUIRE"].startswith("passive OS hint needs raw packets")
    assert lines["CORE"] == "127.0.0.5"


# ------------------------------------------------------------------------------------------- raw: ICMP


@pytest.mark.raw
@raw_only
@pytest.mark.parametrize("count", [1, 3])
async def test_icmp_echo_to_a_loopback_address_is_answered(loopback_host: str, count: int) -> None:
    result = await icmp_reachable(loopback_host, count=count, interval_s=0.01, timeout_s=2.0)
    assert result.reachable
    assert (result.sent, result.received) == (count, count)
    assert len(result.rtts_s) == count
    assert 0 < (result.rtt_s or 0.0) < 2.0
    assert result.ttl == 64  # Linux answers with its default TTL
    assert result.loss_fraction == 0.0


@pytest.mark.raw
@raw_only
async def test_icmp_heartbeat_beats_ok_on_a_loopback_address(loopback_host: str) -> None:
    from fragileprobe import Heartbeat, IcmpHeartbeat

    heartbeat = IcmpHeartbeat(timeout_s=2.0)
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.port == 0  # ICMP uses none of the device's TCP sessions
    beat = await heartbeat.beat(loopback_host)
    assert beat.ok, beat.error
    assert beat.error is None
    assert beat.latency_s > 0


@pytest.mark.raw
@raw_only
async def test_a_guard_watched_by_icmp_uses_no_tcp_session_for_its_heartbeats(loopback_host: str) -> None:
    """With IcmpHeartbeat the pump sees only the probes' connections: beats are echo requests."""
    from fragileprobe import Guard, IcmpHeartbeat, Scope, Target

    async with EmulatedPump(loopback_host, seed=2, boot_delay_s=0.05) as pump:
        target = Target(loopback_host, ports=(pump.port(21), pump.port(22)), heartbeat=IcmpHeartbeat())
        async with Guard(target, ceiling=2, scope=Scope([loopback_host]), interval_s=0.05) as guard:
            for _ in range(3):
                for port in target.ports:
                    assert (await guard.grab_banner(port)).data
            await anyio.sleep(0.2)  # a few more beats
            timeline = guard.timeline
        assert timeline.beats_total >= 2
        assert all(beat.ok for beat in timeline.beats)
        assert pump.stats.connects_total == 6  # the six probes; no heartbeat connection


@pytest.mark.raw
@raw_only
async def test_cancelled_icmp_check_returns_at_once_and_its_thread_ends(loopback_host: str) -> None:
    """Cancelling mid-check returns at once, and the abandoned worker closes its raw socket within ~50 ms.

    Without the stop flag the worker would keep its socket open for the remaining nine echoes (~9 s).
    """
    await icmp_reachable(loopback_host)  # warm up: scapy imported, worker thread started
    before = _open_fds()
    with anyio.move_on_after(0.2) as scope:
        await icmp_reachable(loopback_host, count=10, interval_s=1.0, timeout_s=1.0)
    assert scope.cancelled_caught
    for _ in range(100):  # up to 2 s
        if _open_fds() <= before:
            break
        await anyio.sleep(0.02)
    else:
        pytest.fail("the cancelled ICMP worker kept its raw socket open")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------------- raw: passive OS hint


@pytest.mark.raw
@raw_only
async def test_passive_os_hint_reads_the_syn_acks_of_full_connects(loopback_host: str) -> None:
    """The observer reports TTL and window per port from fragileprobe's own connects and sends nothing."""
    async with EmulatedPump(loopback_host, seed=7, boot_delay_s=0.05) as pump:
        async with syn_ack_observer(loopback_host) as observer:
            for model_port in (21, 22, 23):
                result = await grab_banner(loopback_host, pump.port(model_port), timeout_s=2.0)
                assert result.data
        hint = observer.hint()
        # Exactly the three connects we made: the observer added none.
        assert pump.stats.connects_total == 3
    assert {o.port for o in hint.observations} == {pump.port(p) for p in (21, 22, 23)}
    for o in hint.observations:
        assert (o.ttl, o.initial_ttl) == (64, 64)
        assert o.window > 0
        assert o.mss is not None
        assert o.syn_acks >= 1
    assert hint.initial_ttl == 64
    assert (hint.os_family, hint.os_hint) == ("generic unix", "generic unix")
    assert "loopback" in (hint.note or "")


@pytest.mark.raw
@raw_only
async def test_one_observer_gives_a_hint_per_host_and_ignores_hosts_it_was_not_asked_about(
    loopback_hosts: Callable[[], str],
) -> None:
    first, second, ignored = loopback_hosts(), loopback_hosts(), loopback_hosts()
    async with (
        EmulatedPump(first, seed=1, boot_delay_s=0.05) as a,
        EmulatedPump(second, seed=2, boot_delay_s=0.05) as b,
        EmulatedPump(ignored, seed=3, boot_delay_s=0.05) as c,
        syn_ack_observer([first, second]) as observer,
    ):
        await grab_banner(first, a.port(22), timeout_s=2.0)
        await grab_banner(second, b.port(21), timeout_s=2.0)
        await grab_banner(second, b.port(23), timeout_s=2.0)
        await grab_banner(ignored, c.port(21), timeout_s=2.0)
    hints = observer.hints()
    assert list(hints) == [first, second]
    assert {o.port for o in hints[first].observations} == {a.port(22)}
    assert {o.port for o in hints[second].observations} == {b.port(21), b.port(23)}
    assert all(h.os_family == "generic unix" for h in hints.values())
    with pytest.raises(ConfigError, match="several hosts"):
        observer.hint()
    with pytest.raises(ConfigError, match=r"^host: must be one of the observed hosts .*, got "):
        observer.hint(ignored)


IP_CMD = shutil.which("ip")

# Runs inside a fresh network namespace whose stack sends a different initial TTL: the emulated pump listens
# on the namespace's own loopback, so every packet stays inside the namespace.
_OS_HINT_IN_NAMESPACE = textwrap.dedent(
    """
    import anyio, json
    from pathlib import Path
    # net.ipv4 sysctls are per namespace: this changes the namespace's stack only.
    Path("/proc/sys/net/ipv4/ip_default_ttl").write_text("{ttl}")
    from fragileprobe import grab_banner, syn_ack_observer
    from fragileprobe.emulator import EmulatedDevice, EmulatedPump
    async def main():
        host = "127.0.3.7"
        async with EmulatedPump(host, seed=1, boot_delay_s=0.05) as pump:
            async with syn_ack_observer(host) as observer:
                for port in (21, 22):
                    await grab_banner(host, pump.port(port), timeout_s=2.0)
        hint = observer.hint()
        print(json.dumps(dict(ttls=sorted(o.ttl for o in hint.observations), initial=hint.initial_ttl,
                              family=hint.os_family, hint=hint.os_hint)))
    anyio.run(main)
    """
)


@pytest.mark.raw
@raw_only
@pytest.mark.skipif(IP_CMD is None, reason="iproute2 (ip) is not installed")
@pytest.mark.parametrize(
    ("default_ttl", "family", "hint"),
    [(128, "windows", "windows"), (255, "embedded", "embedded/network device")],
)
def test_passive_os_hint_recognizes_a_stack_by_its_initial_ttl(
    default_ttl: int, family: str, hint: str
) -> None:
    """In a network namespace whose stack starts packets at another TTL, the hint follows that stack."""
    assert IP_CMD is not None
    namespace = f"fp-raw-{os.getpid()}-{default_ttl}"
    made = subprocess.run([IP_CMD, "netns", "add", namespace], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        in_ns = [IP_CMD, "netns", "exec", namespace]
        subprocess.run([*in_ns, IP_CMD, "link", "set", "lo", "up"], check=True, timeout=10)
        out = subprocess.run(
            [*in_ns, sys.executable, "-c", _OS_HINT_IN_NAMESPACE.format(ttl=default_ttl)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run([IP_CMD, "netns", "delete", namespace], check=False, timeout=10)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "ttls": [default_ttl, default_ttl],
        "initial": default_ttl,
        "family": family,
        "hint": hint,
    }


# ------------------------------------------------------------------------------------------ raw: capture


def _read_pcap(path: Path) -> list[object]:
    import scapy.layers.l2  # noqa: F401  - registers Ethernet (link type 1) for the reader
    from scapy.utils import rdpcap

    return list(rdpcap(str(path)))


@pytest.mark.raw
@raw_only
async def test_capture_holds_the_targets_handshakes_and_nothing_of_other_hosts(
    loopback_hosts: Callable[[], str], tmp_path: Path
) -> None:
    from scapy.layers.inet import IP, TCP

    target, other = loopback_hosts(), loopback_hosts()
    path = tmp_path / "evidence" / "pump.pcap"
    async with (
        EmulatedPump(target, seed=1, boot_delay_s=0.05) as pump,
        EmulatedPump(other, seed=2, boot_delay_s=0.05) as neighbour,
        capture(target, path) as cap,
    ):
        for model_port in (21, 22):
            await grab_banner(target, pump.port(model_port), timeout_s=2.0)
            await grab_banner(other, neighbour.port(model_port), timeout_s=2.0)
    summary = cap.summary
    packets = _read_pcap(path)
    assert summary.packets_written == len(packets) > 0
    assert summary.bytes_written == path.stat().st_size
    assert summary.complete
    ips = [p[IP] for p in packets if IP in p]  # type: ignore[operator,index]
    assert len(ips) == len(packets)
    assert all(target in (ip.src, ip.dst) for ip in ips)
    assert not any(other in (ip.src, ip.dst) for ip in ips)
    for model_port in (21, 22):
        port = pump.port(model_port)
        flags = [str(ip[TCP].flags) for ip in ips if port in (ip[TCP].sport, ip[TCP].dport)]
        # The three-way handshake, in order, then the banner (PA) and the close.
        assert flags[:3] == ["S", "SA", "A"], flags
        assert any("P" in f for f in flags)
        assert any("F" in f or "R" in f for f in flags)
    # Each packet once: the loopback device's duplicate (outgoing) copies are not written.
    syns = [ip for ip in ips if str(ip[TCP].flags) == "S"]
    assert len(syns) == 2


@pytest.mark.raw
@raw_only
async def test_capture_keeps_every_handshake_of_a_burst(loopback_host: str, tmp_path: Path) -> None:
    """A burst of connects outruns the sniffer thread; the kernel buffer and the final drain keep them all."""
    from scapy.layers.inet import TCP

    from fragileprobe import tcp_connect

    path = tmp_path / "burst.pcap"
    connects = 300
    async with EmulatedDevice(loopback_host, model="workstation", seed=1) as device:
        port = next(iter(device.ports.values()))
        async with capture(loopback_host, path) as cap, anyio.create_task_group() as tg:
            limiter = anyio.CapacityLimiter(20)

            async def connect() -> None:
                async with limiter:
                    await tcp_connect(loopback_host, port, timeout_s=5.0)

            for _ in range(connects):
                tg.start_soon(connect)
    packets = _read_pcap(path)
    syns = [p for p in packets if str(p[TCP].flags) == "S"]  # type: ignore[index]
    assert len(syns) == connects
    assert cap.summary.complete
    assert cap.summary.packets_written == len(packets)


@pytest.mark.raw
@raw_only
async def test_capture_of_a_characterization_holds_every_connection_and_the_crash(
    loopback_host: str, tmp_path: Path
) -> None:
    """Evidence for the biomedical team: every SYN of the run, and the unanswered requests of the hang."""
    from scapy.layers.inet import IP, TCP
    from structlog.testing import capture_logs

    from fragileprobe import HttpHeartbeat, Scope, Target
    from fragileprobe._characterize import characterize
    from fragileprobe._recovery import emulator_recovery

    path = tmp_path / "characterization.pcap"
    async with EmulatedDevice(
        loopback_host, model="infusion-pump", seed=1, threshold=4, jitter=0, boot_delay_s=0.05
    ) as pump:
        target = Target(
            loopback_host,
            ports=tuple(pump.ports.values()),
            heartbeat=HttpHeartbeat(port=pump.web_port),
        )
        with capture_logs():
            async with capture(loopback_host, path) as cap:
                char = await characterize(
                    target,
                    scope=Scope([loopback_host]),
                    recovery=emulator_recovery(pump),
                    trials=1,
                    ladder=(1, 2, 5),
                    dwell_s=0.2,
                    hold_s=0.02,
                    interval_s=0.04,
                    heartbeat_timeout_s=0.25,
                    healthy_beats=2,
                    recovery_timeout_s=5.0,
                    baseline_beats=3,
                    read_timeout_s=0.2,
                    connect_timeout_s=0.5,
                )
        connects = pump.stats.connects_total
    assert char.crashes >= 1
    assert cap.summary.complete
    packets = _read_pcap(path)
    ips = [p[IP] for p in packets]  # type: ignore[index]
    assert all(loopback_host in (ip.src, ip.dst) for ip in ips)
    syns = [ip for ip in ips if ip.dst == loopback_host and str(ip[TCP].flags) == "S"]
    assert len(syns) >= connects > 0
    # The hang is in the evidence: a heartbeat request on the web port that the device never answered.
    web = pump.web_port
    asked: set[int] = set()
    answered: set[int] = set()
    for ip in ips:
        tcp = ip[TCP]
        if len(tcp.payload) and ip.dst == loopback_host and tcp.dport == web:
            asked.add(tcp.sport)
        elif len(tcp.payload) and ip.src == loopback_host and tcp.sport == web:
            answered.add(tcp.dport)
    assert answered
    assert asked - answered


@pytest.mark.raw
@raw_only
async def test_capture_stops_writing_at_its_packet_bound_and_counts_the_rest(
    loopback_host: str, tmp_path: Path
) -> None:
    path = tmp_path / "bounded.pcap"
    async with (
        EmulatedPump(loopback_host, seed=1, boot_delay_s=0.05) as pump,
        capture(loopback_host, path, max_packets=3) as cap,
    ):
        await grab_banner(loopback_host, pump.port(21), timeout_s=2.0)
        await grab_banner(loopback_host, pump.port(22), timeout_s=2.0)
    assert cap.summary.packets_written == 3 == len(_read_pcap(path))
    assert cap.summary.truncated
    assert not cap.summary.complete
    assert cap.summary.packets_dropped > 0


@pytest.mark.raw
@raw_only
async def test_an_empty_capture_is_still_a_valid_pcap(loopback_host: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    async with capture(loopback_host, path) as cap:
        pass
    assert cap.summary.packets_written == 0
    assert _read_pcap(path) == []
    assert path.stat().st_size == 24  # the pcap file header alone
