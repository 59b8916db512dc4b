"""The discovery executor over the in-memory network and a virtual clock: it does what the policy decides.

No sockets: ``fragileprobe.testing.FakeNetwork`` plays the devices and ``run_virtual`` runs the event loop on
virtual time, so timeouts cost nothing and the counts are exact.
"""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from fragileprobe import DiscoverySettings, Scope
from fragileprobe._discovery import DiscoveryProgress, DiscoveryReport
from fragileprobe._discovery_run import discover
from fragileprobe.testing import DeviceSocket, FakeNetwork, http_ok, run_virtual

LIVE = "127.0.0.60"
SILENT = ("127.0.0.61", "127.0.0.62")
HOSTS = [LIVE, *SILENT]
PORTS = (21, 23, 80, 9100)


async def ftp_banner(sock: DeviceSocket) -> None:
    await sock.send(b"220 pump ftp ready\r\n")
    await sock.receive_until_closed()


async def printer(sock: DeviceSocket) -> None:
    await sock.receive_until_closed()


def scan(**kwargs: Any) -> tuple[DiscoveryReport, dict[str, int], list[DiscoveryProgress]]:
    seen: list[DiscoveryProgress] = []

    async def main() -> tuple[DiscoveryReport, dict[str, int]]:
        async with FakeNetwork(connect_delay_s=0.001) as net:
            net.serve(LIVE, 21, ftp_banner)
            net.serve(LIVE, 80, http_ok)
            net.serve(LIVE, 9100, printer)
            report = await discover(HOSTS, scope=Scope(HOSTS), network=net, progress=seen.append, **kwargs)
            return report, {h: net.accepts(h) for h in HOSTS}

    with capture_logs():
        report, accepts = run_virtual(main)
    return report, accepts, seen


def test_the_executor_probes_what_the_policy_plans_and_reports_it() -> None:
    report, accepts, seen = scan(
        ports=PORTS, udp_ports=(), seed=1, connect_timeout_s=0.5, banner_timeout_s=0.5
    )
    assert [a.host for a in report.assets] == [LIVE]
    assert report.assets[0].open_ports == (21, 80, 9100)
    assert accepts[LIVE] == 3, "one session per open port, nothing retried"
    assert (report.hosts_alive, report.hosts_scanned) == (1, 3)
    # The live host: each of its 4 ports once; each silent address: its 2 liveness ports, nothing more.
    assert report.probes_sent == len(PORTS) + 2 * len(SILENT)
    assert [p.hosts_done for p in seen] == [1, 2, 3]
    assert seen[-1].hosts_silent == len(SILENT)
    assert all(b.elapsed_s <= a.elapsed_s for a, b in zip(seen[1:], seen, strict=False)), "one clock"
    assert report.wall_time_s >= seen[-1].elapsed_s


def test_a_settings_object_and_the_flat_keywords_are_the_same_scan() -> None:
    flat, flat_accepts, _ = scan(
        ports=PORTS, udp_ports=(), seed=2, per_host_sessions=2, connect_timeout_s=0.5, banner_timeout_s=0.5
    )
    config = DiscoverySettings(
        ports=PORTS, udp_ports=(), seed=2, per_host_sessions=2, connect_timeout_s=0.5, banner_timeout_s=0.5
    )
    given, given_accepts, _ = scan(settings=config)
    assert given.params == flat.params == config.params()
    assert [(a.host, a.open_ports, a.groups, a.sessions_limit) for a in given.assets] == [
        (a.host, a.open_ports, a.groups, a.sessions_limit) for a in flat.assets
    ]
    assert (given.probes_sent, given_accepts) == (flat.probes_sent, flat_accepts)
    fewer, _, _ = scan(settings=config.replace(ports=(21,)))
    assert fewer.params["ports"] == [21]
    assert fewer.assets[0].open_ports == (21,)
