"""Discovery on a network where most addresses never answer (the namespace test bed, root only), and a
device written here that speaks once and then goes quiet (plain loopback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest

from _support.netbed import LiveHost, NetBed, netbed_available
from fragileprobe._discovery_run import discover
from fragileprobe._scope import Scope

if TYPE_CHECKING:
    from collections.abc import Iterator

SCAN = str(Path(__file__).parent / "_support" / "netscan.py")
BLOCK = "10.92.0.0/24"
LIVE = (
    LiveHost("10.92.0.10", "infusion-pump", firewalled=True),
    LiveHost("10.92.0.77", "infusion-pump", firewalled=True),
    LiveHost("10.92.0.20", "syringe-pump", threshold=3, jitter=0),
    LiveHost("10.92.0.30", "printer", filtered_ports=(80,)),
    LiveHost("10.92.0.40", "linux-server", delay_ms=60),
    LiveHost("10.92.0.200", "patient-monitor"),
)


@pytest.fixture(scope="module")
def bed() -> Iterator[NetBed]:
    why = netbed_available()
    if why is not None:
        pytest.skip(why)
    with NetBed(block=BLOCK, live=LIVE) as b:
        yield b


def scan(bed: NetBed, *targets: str, **params: Any) -> dict[str, Any]:
    bed.restart_fleet()
    bed.reset_counters()
    proc = bed.run(sys.executable, SCAN, *targets, "--params", json.dumps(params), timeout_s=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.mark.slow
def test_firewalled_pumps_behind_100_filtered_ports_are_found_whole_and_stay_medical(bed: NetBed) -> None:
    """Issue 15: with 100 ports, firewalled pumps were left alone after three filtered ports in a row,
    skipped before their web port, and dropped out of "Medical Device?". Filtered is not hung."""
    out = scan(bed, BLOCK, ports="1-100,8080", udp_ports=[])
    for pump in ("10.92.0.10", "10.92.0.77"):
        assert out["assets"][pump] == [21, 22, 23, 8080], "every open port, the web port included"
        assert pump not in out["unresponsive"]
        assert "Medical Device?" in out["groups"][pump]
        assert any("filtered" in n for n in out["notes"][pump])
    assert out["unresponsive"] == []


@pytest.mark.slow
def test_silent_addresses_cost_two_syns_and_no_live_host_is_lost(bed: NetBed) -> None:
    """Defaults on the hospital mix: every live host and service found, nothing hung, one session per
    host, and each of the 250 silent addresses cost its two liveness SYNs, not one per port."""
    ports = (21, 22, 23, 80, 443, 8080)
    out = scan(bed, BLOCK, ports=",".join(map(str, ports)))
    truth = {h.host: [p for p in h.open_ports if p in ports] for h in LIVE}
    assert out["assets"] == {h: p for h, p in truth.items() if p}
    assert out["hosts_alive"] == len(LIVE), "the printer behind a filtered 80 still answered (RST) elsewhere"
    stats = bed.device_stats()
    assert all(s["crashes"] == 0 for s in stats.values()), stats
    assert max(s["peak_sessions"] for s in stats.values()) == 1
    silent = 256 - len(LIVE)
    live_syns = sum(len(ports) for _ in LIVE)  # at most one connect per port of a live host
    assert bed.syns() <= 2 * silent + live_syns
    assert bed.syns() >= 2 * silent, "every silent address got both liveness probes"
    assert out["progress"][-1]["eta_s"] == 0.0


def test_addresses_without_a_route_are_not_silently_called_silent(bed: NetBed) -> None:
    """The scanner namespace has no route to 10.93.0.0/30: every probe fails locally (ENETUNREACH). Those
    addresses are skipped, and the report says why instead of passing them off as silent space."""
    out = scan(bed, "10.93.0.0/30", udp_ports=[])
    assert out["assets"] == {}
    assert out["hosts_alive"] == 0
    assert any("could not reach their address" in n and "unreachable" in n for n in out["report_notes"])
    assert bed.syns() == 0


@pytest.mark.slow
def test_nmap_host_discovery_misses_the_firewalled_pumps_here(bed: NetBed) -> None:
    """The bed is realistic enough to show the failure the shortcut must avoid: nmap's ping probes
    (ICMP, SYN 443, ACK 80) get no answer from a host firewall that drops closed ports."""
    import shutil

    if shutil.which("nmap") is None:
        pytest.skip("nmap is not installed")
    bed.restart_fleet()
    proc = bed.run("nmap", "-sn", "-n", "-oG", "-", BLOCK, timeout_s=300)
    up = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("Host:") and "Up" in line}
    assert {"10.92.0.20", "10.92.0.200"} <= up
    assert not {"10.92.0.10", "10.92.0.77"} & up


@pytest.mark.slow
def test_the_cli_says_its_global_rate_before_the_first_packet_and_finds_every_host(
    bed: NetBed, tmp_path: Path
) -> None:
    from fragileprobe.emulator._process import fragileprobe_command

    bed.restart_fleet()
    bad = bed.run(
        *fragileprobe_command(),
        "discover",
        BLOCK,
        "--udp-ports",
        "5353",
        "--store",
        str(tmp_path / "bad.db"),
        timeout_s=120,
    )
    assert bad.returncode == 2
    assert "--udp-ports" in bad.stderr
    assert not (tmp_path / "bad.db").exists(), "nothing created before the input was validated"
    proc = bed.run(
        *fragileprobe_command(),
        "discover",
        BLOCK,
        "--ports",
        "21,22,23,80,443,8080",
        "--store",
        str(tmp_path / "fp.db"),
        "--json",
        timeout_s=300,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    first = proc.stderr.splitlines()[0]
    assert "at most 1000 new connections/s in total" in first
    data = json.loads(proc.stdout)
    assert {a["host"] for a in data["assets"]} == {h.host for h in LIVE if h.host != "10.92.0.30"}
    assert data["hosts_alive"] == len(LIVE)
    assert data["global_rate"] == 1000.0


# --- a device that answers its first connection, then accepts and never answers (issue 11) -----------

# The ports the device listens on, by the well-known service they pose as (a banner, web and silent mix).
POSES = (21, 22, 23, 25, 80, 110, 143, 443, 445, 3389, 8080, 5900, 3306, 135, 139, 8443)


class SpeaksOnceDevice:
    """Listens on one port per entry of POSES; the very first connection gets an FTP banner, every later
    one is accepted and held in silence (a stuck application on a live TCP stack)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.connects = 0
        self.ports: dict[int, int] = {}  # bound port -> posed well-known port
        self._listeners: list[anyio.abc.SocketListener] = []

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connects += 1
        async with stream:
            if self.connects == 1:
                await stream.send(b"220 pump-ftp ready\r\n")
            await anyio.sleep(30)  # bounded: the test's task group is cancelled long before

    async def serve(self, tg: anyio.abc.TaskGroup) -> None:
        for pose in POSES:
            listener = await anyio.create_tcp_listener(local_host=self.host, local_port=0)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            self.ports[port] = pose
            self._listeners.append(listener)
            tg.start_soon(listener.serve, self.handle)


async def test_a_device_that_spoke_once_and_went_quiet_is_left_alone_never_safe(loopback_host: str) -> None:
    device = SpeaksOnceDevice(loopback_host)
    try:
        async with anyio.create_task_group() as tg:
            await device.serve(tg)
            report = await discover(
                loopback_host,
                scope=Scope([loopback_host]),
                ports=list(device.ports),
                port_aliases=device.ports,
                liveness_ports=1,
                udp_ports=[],
                banner_timeout_s=0.3,
                rate_per_host=50,
            )
            tg.cancel_scope.cancel()
    finally:
        for listener in device._listeners:
            await listener.aclose()
    (u,) = report.unresponsive
    assert u.host == loopback_host
    assert len(u.answered_ports) == 1, "it spoke on its first connection only"
    # One answer, then at most `unresponsive_after` (3) silent connects where an answer was due, plus the
    # client-first ports (443, 445, ...) met on the way, which expect nothing: far from the 15 of issue 11.
    assert device.connects <= 1 + 3 + sum(1 for pose in POSES if pose in (443, 445, 3389, 135, 139, 8443))
    assert device.connects < len(POSES)
    (asset,) = report.assets
    assert not any(g.startswith("safe to scan") for g in asset.groups)


async def test_hosts_at_once_are_sized_to_the_file_limit(loopback_hosts: Any) -> None:
    """Without max_hosts_in_parallel, discovery works as many hosts at once as ``ulimit -n`` allows (minus
    the headroom), instead of refusing or running out of files mid-scan."""
    import resource

    from fragileprobe._probes import FD_HEADROOM

    hosts = [loopback_hosts() for _ in range(300)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        report = await discover(hosts, scope=Scope(hosts), ports=[9], udp_ports=[], rate_per_host=100)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert report.max_hosts_in_parallel == 200 - FD_HEADROOM
    assert report.hosts_alive == 300, "every loopback address refused port 9: all alive, none lost to EMFILE"


def test_the_notebook_view_prints_a_bounded_number_of_lines_outside_a_notebook(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fragileprobe import NotebookDiscoveryProgress
    from fragileprobe._discovery import DiscoveryProgress

    view = NotebookDiscoveryProgress()
    for done in range(1, 4097):
        view(
            DiscoveryProgress(
                hosts_done=done,
                hosts_total=4096,
                assets_found=done // 80,
                alerts=0,
                host="10.0.0.1",
                hosts_alive=done // 70,
                elapsed_s=done / 400,
                eta_s=(4096 - done) / 400,
            )
        )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= NotebookDiscoveryProgress.MAX_LINES
    assert lines[-1].startswith("discovery: 4096/4096 addresses, 58 live, 51 assets")
