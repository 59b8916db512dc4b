"""discover(): per-host limits, stored ceilings, unresponsive hosts, store, resume, inventory, alerts."""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest

from fragileprobe import ConfigError, ScopeError
from fragileprobe._discovery import DiscoveryProgress, DiscoveryReport
from fragileprobe._discovery_run import discover
from fragileprobe._groups import Zone, Zones
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._raw import raw_available
from fragileprobe._scope import Scope
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import EmulatedDevice

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

PUMP_PORTS = (21, 22, 23, 8080)
FAST: dict[str, Any] = {"connect_timeout_s": 1.0, "banner_timeout_s": 0.3, "rate_per_host": 100.0}


@contextlib.asynccontextmanager
async def devices(*specs: tuple[str, str]) -> AsyncIterator[list[EmulatedDevice]]:
    """Run emulated devices ``(host, model)`` for the block."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for host, model in specs:
            out.append(
                await stack.enter_async_context(EmulatedDevice(host, model=model, seed=1, boot_delay_s=0.05))
            )
        yield out


def scope_of(*hosts: str) -> Scope:
    return Scope(list(hosts))


def store_profile(store: ProfileStore, key: str, *, fails_at: int) -> int:
    levels = [
        LevelResult(level=n, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0)
        for n in range(1, fails_at)
    ]
    levels.append(LevelResult(level=fails_at, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.5))
    ladder = tuple(range(1, fails_at + 1))
    store.save(
        Characterization.from_trials(
            host="127.0.0.1",
            model_key=key,
            ladder=ladder,
            trials=[TrialResult(index=0, levels=tuple(levels))],
        )
    )
    ceiling = store.ceiling_for(key)
    assert ceiling is not None
    return ceiling


async def test_pump_is_found_fingerprinted_and_grouped(loopback_host: str) -> None:
    async with devices((loopback_host, "infusion-pump")) as (pump,):
        report = await discover(
            loopback_host, scope=scope_of(loopback_host), ports=(*PUMP_PORTS, 80, 445), **FAST
        )
    (asset,) = report.assets
    assert asset.open_ports == PUMP_PORTS
    assert [(s.service, s.product) for s in asset.services] == [
        ("ftp", "vsFTPd"),
        ("ssh", "dropbear"),
        ("telnet", None),
        ("http", "GoAhead-Webs"),
    ]
    assert asset.service(8080) is not None
    assert asset.service(8080).title == "MIS-3000 Infusion Pump"  # type: ignore[union-attr]
    assert asset.os_family == "generic unix"
    assert asset.groups == ("Medical Device?",)
    assert report.groups["Medical Device?"] == [asset]
    assert pump.stats.peak_sessions == 1
    assert pump.stats.crashes == 0
    # Nothing was sent to the speak-first services; only the GET / to the web port.
    assert pump.stats.bytes_received_by_port[21] == 0
    assert pump.stats.bytes_received_by_port[23] == 0
    assert pump.stats.bytes_received_by_port[8080] > 0


async def test_printer_port_gets_connect_and_close_only(loopback_host: str) -> None:
    async with devices((loopback_host, "printer")) as (printer,):
        report = await discover(
            loopback_host, scope=scope_of(loopback_host), ports=(80, 515, 631, 9100), **FAST
        )
    assert report.assets[0].open_ports == (80, 515, 631, 9100)
    assert printer.stats.bytes_received_by_port[9100] == 0
    assert printer.stats.connects_total == 4
    assert report.assets[0].os_family == "embedded"


async def test_per_host_sessions_are_capped_by_a_stored_profile(
    tmp_path: Path, loopback_hosts: Callable[[], str]
) -> None:
    """per_host_sessions=4, stored ceiling 2: no host is probed with more than 2 sessions at once."""
    host = loopback_hosts()
    ports = (*tuple(range(1, 30)), *PUMP_PORTS, 80, 104, 2575, 3000, 4000, 5000, 5900, 9000, 24105)
    store = ProfileStore(tmp_path / "fp.db")
    ceiling = store_profile(store, "some-model-0123456789ab", fails_at=5)  # min(4, 4, 5 - 3)
    assert ceiling == 2
    async with devices((host, "patient-monitor")) as (monitor,):
        report = await discover(
            host, scope=scope_of(host), ports=ports, store=store, per_host_sessions=4, **FAST
        )
    assert report.assets[0].sessions_limit == ceiling
    assert 1 <= monitor.stats.peak_sessions <= ceiling
    assert monitor.stats.crashes == 0


async def test_per_host_sessions_without_profiles_use_the_given_value(loopback_host: str) -> None:
    async with devices((loopback_host, "workstation")) as (ws,):
        report = await discover(
            loopback_host, scope=scope_of(loopback_host), ports=range(1, 200), per_host_sessions=3, **FAST
        )
    assert report.assets[0].sessions_limit == 3
    assert ws.stats.peak_sessions <= 3


async def test_a_host_that_stops_answering_is_left_alone_and_reported(loopback_host: str) -> None:
    """The monitor hangs after its first answer: after 2 timeouts nothing more is sent to it."""
    async with devices((loopback_host, "patient-monitor")) as (monitor,):
        gave_up_at: list[float] = []

        async def hang_after_first_connect() -> None:
            for _ in range(2000):  # bounded wait for the first connect
                if monitor.stats.connects_total >= 1:
                    break
                await anyio.sleep(0.005)
            await anyio.sleep(0.05)  # let the FTP banner arrive first
            monitor.hang("test")

        async with anyio.create_task_group() as tg:
            tg.start_soon(hang_after_first_connect)
            report = await discover(
                loopback_host,
                scope=scope_of(loopback_host),
                ports=(21, 80, 3000, 4000, 5900, 8080, 9000, 24105),
                unresponsive_after=2,
                connect_timeout_s=1.0,
                banner_timeout_s=0.3,
                rate_per_host=5.0,
            )
            gave_up_at.append(time.monotonic())
        connects_after = monitor.connects_since(gave_up_at[0])
    (u,) = report.unresponsive
    assert u.host == loopback_host
    assert len(u.answered_ports) == 1, "it spoke once (on the first liveness port) before it hung"
    assert "2 consecutive timeouts" in u.reason
    assert connects_after == 0
    assert monitor.stats.connects_total < 8, "the ports after the give-up were never tried"


async def test_scope_is_checked_before_anything_is_sent(loopback_hosts: Callable[[], str]) -> None:
    inside, outside = loopback_hosts(), loopback_hosts()
    async with devices((outside, "infusion-pump")) as (pump,):
        with pytest.raises(ScopeError):
            await discover([inside, outside], scope=scope_of(inside), ports=PUMP_PORTS, **FAST)
    assert pump.stats.connects_total == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_host_sessions": 0}, "per_host_sessions"),
        ({"per_host_sessions": 1.5}, "per_host_sessions"),
        ({"rate_per_host": -1}, "rate_per_host"),
        ({"max_hosts_in_parallel": 0}, "max_hosts_in_parallel"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"banner_timeout_s": float("nan")}, "banner_timeout_s"),
        ({"resume": True}, "resume=True needs a store"),
        ({"ports": "99999"}, "ports"),
        ({"webhook_url": "gopher://x"}, "webhook_url"),
    ],
)
async def test_bad_parameters_raise_config_error_naming_them(
    loopback_host: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await discover(loopback_host, scope=scope_of(loopback_host), **kwargs)  # type: ignore[arg-type]


async def test_assets_and_alerts_are_stored_and_the_inventory_tracks_new_gone_moved(
    tmp_path: Path, loopback_hosts: Callable[[], str]
) -> None:
    pump_host, ws_host = loopback_hosts(), loopback_hosts()
    store = ProfileStore(tmp_path / "fp.db")
    medical = Zones([Zone("ward", (pump_host, ws_host), kind="medical")])
    office = Zones([Zone("ward", (ws_host,), kind="medical"), Zone("office", (pump_host,), kind="general")])
    kw = {"scope": scope_of(pump_host, ws_host), "ports": (*PUMP_PORTS, 445, 3389), "store": store, **FAST}
    async with devices((pump_host, "infusion-pump"), (ws_host, "workstation")):
        first = await discover([pump_host, ws_host], zones=medical, **kw)
        assert set(first.new) == {pump_host, ws_host}
        assert not first.alerts
        # The pump is plugged into an office drop: moved, and an alert.
        second = await discover([pump_host, ws_host], zones=office, **kw)
    assert not second.new
    assert [(m.host, m.from_zone, m.to_zone) for m in second.moved] == [(pump_host, "ward", "office")]
    (alert,) = second.alerts
    assert alert.host == pump_host
    row = store.asset(pump_host)
    assert row is not None
    assert row.zone == "office"
    assert row.first_seen_s <= row.last_seen_s
    assert [a["host"] for a in store.alerts()] == [pump_host]
    # Both devices gone: a third run finds nothing and reports them gone.
    third = await discover([pump_host, ws_host], zones=office, **kw)
    assert not third.assets
    assert set(third.gone) == {pump_host, ws_host}


async def test_interrupted_scan_resumes_without_probing_finished_hosts_again(
    tmp_path: Path, loopback_hosts: Callable[[], str]
) -> None:
    hosts = [loopback_hosts() for _ in range(6)]
    store = ProfileStore(tmp_path / "fp.db")
    zones = Zones([Zone("office", tuple(hosts), kind="general")])
    kw = {
        "scope": scope_of(*hosts),
        "ports": PUMP_PORTS,
        "store": store,
        "zones": zones,
        "max_hosts_in_parallel": 1,
        "seed": 5,
        **FAST,
    }
    async with devices(*[(h, "infusion-pump") for h in hosts]) as pumps:
        with anyio.CancelScope() as cancel:

            def stop_after_two(p: DiscoveryProgress) -> None:
                if p.hosts_done == 2:
                    cancel.cancel()

            await discover(hosts, progress=stop_after_two, **kw)
        assert cancel.cancelled_caught
        connects_before = {p.host: p.stats.connects_total for p in pumps}
        done_first = {h for h, n in connects_before.items() if n == len(PUMP_PORTS)}
        assert len(done_first) >= 2
        report = await discover(hosts, resume=True, **kw)
        connects_after = {p.host: p.stats.connects_total for p in pumps}
    assert report.hosts_resumed == 2
    assert report.hosts_scanned == 4
    assert {a.host for a in report.assets} == set(hosts)
    assert sorted(a.host for a in report.alerts) == sorted(hosts), "one alert per host across both parts"
    assert len(store.alerts()) == len(hosts)
    resumed = {h for h in hosts if store.asset(h) is not None}
    assert resumed == set(hosts)
    assert any("resumed scan" in n for n in report.notes)
    # Hosts finished before the interruption were not probed again.
    finished_early = {a.host for a in report.assets if "finished before resume" in a.notes}
    assert len(finished_early) == 2
    for h in finished_early:
        assert connects_after[h] == connects_before[h]


async def test_alerts_go_to_the_jsonl_file_and_webhook(
    tmp_path: Path, loopback_hosts: Callable[[], str]
) -> None:
    pump_host, hook_host = loopback_hosts(), loopback_hosts()
    received: list[dict[str, object]] = []
    listener = await anyio.create_tcp_listener(local_host=hook_host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            with anyio.fail_after(5):
                while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                    data += await stream.receive()
            received.append(json.loads(data.split(b"\r\n\r\n", 1)[1]))
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    zones = Zones([Zone("guest", (pump_host,), kind="guest")])
    async with devices((pump_host, "infusion-pump")), listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        report = await discover(
            pump_host,
            scope=scope_of(pump_host),
            ports=PUMP_PORTS,
            zones=zones,
            alert_file=tmp_path / "a.jsonl",
            webhook_url=f"http://{hook_host}:{port}/a",
            **FAST,
        )
        tg.cancel_scope.cancel()
    (alert,) = report.alerts
    assert alert.zone_kind == "guest"
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [alert.to_dict()]
    assert received == [alert.to_dict()]


async def test_report_serializes_and_summarizes(loopback_host: str) -> None:
    async with devices((loopback_host, "infusion-pump")):
        report = await discover(loopback_host, scope=scope_of(loopback_host), ports=PUMP_PORTS, **FAST)
    assert isinstance(report, DiscoveryReport)
    data = json.loads(report.to_json())
    assert data["assets"][0]["host"] == loopback_host
    assert data["groups"] == {"Medical Device?": [loopback_host]}
    frame = report.to_dataframe()
    assert list(frame["host"]) == [loopback_host]
    assert "Medical Device?: 1" in report.summary()


_RAW_OK, _RAW_REASON = raw_available()


@pytest.mark.skipif(_RAW_OK, reason="raw extras are available here; the note path needs them missing")
async def test_raw_without_privilege_or_scapy_is_a_note_not_an_error(loopback_host: str) -> None:
    async with devices((loopback_host, "infusion-pump")):
        report = await discover(
            loopback_host, scope=scope_of(loopback_host), ports=PUMP_PORTS, raw=True, **FAST
        )
    assert len(report.assets) == 1
    assert any("raw extras" in n and "skipped" in n for n in report.notes)


@pytest.mark.raw
@pytest.mark.skipif(not _RAW_OK, reason=f"raw-packet test skipped: {_RAW_REASON}")
async def test_raw_adds_the_passive_os_hint_and_icmp_reachability(loopback_hosts: Callable[[], str]) -> None:
    """The SYN-ACKs of our own connects give an OS hint; an address without open ports answers ICMP."""
    pump_host, empty_host = loopback_hosts(), loopback_hosts()
    async with devices((pump_host, "infusion-pump")):
        report = await discover(
            [pump_host, empty_host], scope=scope_of(pump_host, empty_host), ports=PUMP_PORTS, raw=True, **FAST
        )
    (asset,) = report.assets
    assert any(n.startswith("passive OS hint") for n in asset.notes), asset.notes
    assert report.icmp_only == (empty_host,)  # loopback answers echo on every 127/8 address


async def test_asset_target_keeps_the_open_ports_and_a_web_heartbeat(loopback_host: str) -> None:
    async with devices((loopback_host, "infusion-pump")):
        report = await discover(loopback_host, scope=scope_of(loopback_host), ports=(*PUMP_PORTS, 80), **FAST)
    target = report.assets[0].target(name="ward pump")
    assert target.ports == PUMP_PORTS
    assert target.heartbeat.port == 8080
    assert target.name == "ward pump"


def test_discover_sync_runs_from_plain_code(loopback_host: str) -> None:
    from fragileprobe import discover_sync

    report = discover_sync(loopback_host, scope=scope_of(loopback_host), ports=PUMP_PORTS, **FAST)
    assert report.assets == ()
    assert report.hosts_scanned == 1


async def test_port_aliases_name_silent_services_on_moved_ports(loopback_host: str) -> None:
    """A workstation served at +10000 (unprivileged emulator): aliases give its silent ports their names."""
    async with contextlib.AsyncExitStack() as stack:
        ws = await stack.enter_async_context(
            EmulatedDevice(loopback_host, model="workstation", seed=1, port_offset=10000)
        )
        bound = {ws.port(p): p for p in (135, 139, 445, 3389)}
        plain = await discover(loopback_host, scope=scope_of(loopback_host), ports=sorted(bound), **FAST)
        aliased = await discover(
            loopback_host, scope=scope_of(loopback_host), ports=sorted(bound), port_aliases=bound, **FAST
        )
    assert {s.service for s in plain.assets[0].services} == {"unknown", "rdp"}
    # By port: 3389 (not moved: only ports below 1024 are), 10135, 10139, 10445.
    assert [s.service for s in aliased.assets[0].services] == ["rdp", "msrpc", "smb", "smb"]
    assert aliased.assets[0].open_ports == tuple(sorted(bound))
    assert aliased.assets[0].os_family == "windows"


async def test_an_error_in_a_worker_surfaces_as_itself(loopback_host: str) -> None:
    """Not wrapped in the task group's ExceptionGroup."""

    def fail(progress: DiscoveryProgress) -> None:
        raise ConfigError(f"progress sink broke at {progress.host}")

    with pytest.raises(ConfigError, match="progress sink broke"):
        await discover(loopback_host, scope=scope_of(loopback_host), ports=PUMP_PORTS, progress=fail, **FAST)
