"""Fleets: config format, the hospital fleet's ground truth, and the control API (in- and cross-process)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import pytest

from fragileprobe import ConfigError, ProbeError
from fragileprobe.emulator import (
    ControlServer,
    DeviceState,
    EmulatorProcess,
    Fleet,
    FleetClient,
    FleetConfig,
    hospital_fleet,
    uniform_fleet,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


# --- config ---------------------------------------------------------------------------------------------
def test_hospital_fleet_covers_254_addresses_with_ground_truth() -> None:
    config = hospital_fleet("127.77.0", seed=1)
    hosts = config.hosts
    assert len(hosts) == 254
    assert hosts == tuple(f"127.77.0.{i}" for i in range(1, 255))
    truth = config.ground_truth
    assert set(truth) == set(hosts)
    medical = {h for h, t in truth.items() if t.zone == "medical"}
    general = {h for h, t in truth.items() if t.zone == "general"}
    assert medical == {f"127.77.0.{i}" for i in range(1, 128)}
    assert general == {f"127.77.0.{i}" for i in range(128, 255)}
    models = Counter((t.zone, t.model) for t in truth.values() if t.model)
    assert models[("medical", "infusion-pump")] == 30
    assert models[("medical", "patient-monitor")] == 10
    # Misplaced pumps: the "wrong network drop" a discovery must flag.
    assert models[("general", "infusion-pump")] + models[("general", "syringe-pump")] >= 3
    assert models[("general", "workstation")] > 0
    assert models[("general", "printer")] > 0
    assert sum(1 for t in truth.values() if t.model is None) == len(config.empty) > 100
    assert {t.os_family for t in truth.values() if t.model} >= {"embedded", "windows", "generic unix"}
    # The zones are CIDRs a discovery can be given.
    for cidr in config.zones["medical"]:
        assert ipaddress.ip_address("127.77.0.5") in ipaddress.ip_network(cidr)


def test_hospital_fleet_reproducible_by_seed() -> None:
    assert hospital_fleet(seed=5) == hospital_fleet(seed=5)
    assert hospital_fleet(seed=5).ground_truth != hospital_fleet(seed=6).ground_truth


def test_toml_roundtrip(tmp_path: Path) -> None:
    config = hospital_fleet("127.77.1", seed=2, boot_delay_s=0.1)
    path = tmp_path / "fleet.toml"
    path.write_text(config.to_toml())
    assert FleetConfig.from_toml(path) == config


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"device": [{"host": "127.1.1.1", "model": "toaster"}]}, "model"),
        ({"device": [{"host": "10.1.1.1", "model": "printer"}]}, "host"),
        ({"device": [{"host": "127.1.1.1", "model": "printer", "colour": "red"}]}, r"device\[0\]"),
        ({"device": [{"model": "printer"}]}, r"device\[0\]"),
        ({"device": [{"host": "127.1.1.1", "model": "printer"}], "empty": ["127.1.1.1"]}, "host"),
        ({"devices": []}, "fleet config"),
        ({"empty": ["192.168.0.1"]}, "empty"),
        ({"zones": {"medical": ["not-a-net"]}}, "zones"),
    ],
)
def test_bad_fleet_config_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}"):
        FleetConfig.from_mapping(data)


def test_bad_toml_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[device]\nhost = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        FleetConfig.from_toml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        FleetConfig.from_toml(tmp_path / "missing.toml")


def test_bad_prefix_and_control_settings() -> None:
    with pytest.raises(ConfigError, match=r"^prefix"):
        hospital_fleet("10.0.0")
    with pytest.raises(ConfigError, match=r"^prefix"):
        hospital_fleet("127.0")
    with pytest.raises(ConfigError, match=r"^control_port"):
        Fleet({"device": []}, control_port=70000)
    with pytest.raises(ConfigError, match=r"^control_host"):
        Fleet({"device": []}, control_host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"^control_port: must be an integer in 0-65535, got -1"):
        ControlServer(Fleet({"device": []}, control_port=None), port=-1)
    with pytest.raises(ConfigError, match=r"^timeout_s: must be a positive number"):
        FleetClient("http://127.0.0.1:80", timeout_s=0)
    with pytest.raises(ConfigError, match=r"^url"):
        FleetClient("http://192.168.1.1:80")
    with pytest.raises(ConfigError, match=r"^url"):
        FleetClient("ftp://127.0.0.1:21")


# --- in-process fleet -------------------------------------------------------------------------------------
def _small_config(hosts: Callable[[], str]) -> dict[str, object]:
    return {
        "boot_delay_s": 0.05,
        "device": [
            {
                "host": hosts(),
                "model": "infusion-pump",
                "seed": 1,
                "threshold": 3,
                "jitter": 0,
                "zone": "ward",
            },
            {"host": hosts(), "model": "printer", "seed": 2},
            {"host": hosts(), "model": "patient-monitor", "seed": 3},
        ],
        "empty": [hosts()],
    }


async def test_fleet_serves_every_device_and_control_api(loopback_hosts: Callable[[], str]) -> None:
    config = _small_config(loopback_hosts)
    async with Fleet(config) as fleet:
        pump_host = config["device"][0]["host"]  # type: ignore[index]
        pump = fleet.device(pump_host)
        assert pump.threshold == 3
        assert fleet.zone_of(pump_host) == "ward"
        with pytest.raises(ConfigError, match=r"^host"):
            fleet.device("127.0.0.99")
        client = FleetClient(fleet.control_url)
        infos = await client.list_devices()
        assert [i.host for i in infos] == list(fleet.devices)
        assert await client.empty_hosts() == list(fleet.empty)
        info = await client.device(pump_host)
        assert info.model == "infusion-pump"
        assert info.state is DeviceState.UP
        assert dict(info.ports) == dict(pump.ports)
        assert info.web_port == pump.web_port
        hung = await client.hang(pump_host)
        assert hung.state is DeviceState.HUNG
        assert (await client.stats(pump_host)).crashes == 1
        cycled = await client.power_cycle(pump_host, boot_delay_s=0.01)
        assert cycled.state is DeviceState.UP
        assert cycled.stats.power_cycles == 1
        with pytest.raises(ConfigError, match=r"^host"):
            await client.stats("127.0.0.99")


async def test_control_server_is_started_beside_a_fleet_of_devices_only(
    loopback_hosts: Callable[[], str],
) -> None:
    """``Fleet(control_port=None)`` is the devices alone; a ControlServer started beside it drives them, and
    stops with its own context (the devices keep serving)."""
    config = _small_config(loopback_hosts)
    pump_host = config["device"][0]["host"]  # type: ignore[index]
    async with Fleet(config, control_port=None) as fleet:
        server = ControlServer(fleet, host="127.0.0.1")
        with pytest.raises(RuntimeError, match="not running"):
            _ = server.url
        async with server:
            assert server.url.startswith("http://127.0.0.1:")
            client = FleetClient(server.url, timeout_s=5)
            assert [i.host for i in await client.list_devices()] == list(fleet.devices)
            assert (await client.hang(pump_host)).state is DeviceState.HUNG
        with pytest.raises(RuntimeError, match="not running"):
            _ = server.url
        with pytest.raises(ProbeError, match="refused"):
            await client.list_devices()
        with pytest.raises(RuntimeError):
            _ = fleet.control_url
        assert fleet.device(pump_host).state is DeviceState.HUNG


async def test_control_api_rejects_malformed_requests(loopback_hosts: Callable[[], str]) -> None:
    async with Fleet(_small_config(loopback_hosts)) as fleet:
        host, port = fleet.control_url.removeprefix("http://").split(":")
        for request, status in [
            (b"garbage\r\n\r\n", b"400"),
            (b"DELETE /devices HTTP/1.1\r\n\r\n", b"405"),
            (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
            (b"GET /devices HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", b"400"),
        ]:
            async with await anyio.connect_tcp(host, int(port)) as stream:
                await stream.send(request)
                with anyio.fail_after(5):
                    response = await stream.receive(65536)
            assert response.split(b" ")[1] == status, request[:40]


async def test_client_reports_unreachable_control_api(loopback_host: str) -> None:
    client = FleetClient(f"http://{loopback_host}:9", timeout_s=2)
    with pytest.raises(ProbeError, match="refused"):
        await client.list_devices()


async def test_uniform_fleet_starts_all_devices() -> None:
    config = uniform_fleet("127.78.9", count=20, model="infusion-pump", boot_delay_s=0.05)
    async with Fleet(config, control_port=None) as fleet:
        assert len(fleet.devices) == 20
        for device in list(fleet.devices.values())[::5]:
            async with await anyio.connect_tcp(device.host, device.web_port) as stream:
                await stream.send(b"GET / HTTP/1.0\r\n\r\n")
                with anyio.fail_after(2):
                    assert (await stream.receive()).startswith(b"HTTP/1.1 200")
        with pytest.raises(RuntimeError):
            _ = fleet.control_url


# --- from another process -------------------------------------------------------------------------------
async def test_fleet_control_api_from_another_process(
    tmp_path: Path, loopback_hosts: Callable[[], str]
) -> None:
    """`fragileprobe emulate --fleet` in a subprocess; this process crashes a pump and power-cycles it."""
    config = FleetConfig.from_mapping(_small_config(loopback_hosts))
    path = tmp_path / "fleet.toml"
    path.write_text(config.to_toml())
    emulator = EmulatorProcess("--fleet", str(path), "--control-port", "0")
    try:
        lines = emulator.wait_ready()
        assert sum(line.startswith("device ") for line in lines) == 3
        client = FleetClient(emulator.control_url)
        infos = {i.host: i for i in await client.list_devices()}
        pump = infos[config.devices[0].host]
        assert pump.threshold == 3
        # Three concurrent sessions reach the pump's threshold.
        streams = [await anyio.connect_tcp(pump.host, pump.ports[21]) for _ in range(3)]
        for _ in range(250):
            if (await client.state(pump.host)) is DeviceState.HUNG:
                break
            await anyio.sleep(0.02)
        stats = await client.stats(pump.host)
        assert stats.crashes == 1
        assert stats.peak_sessions == 3
        for stream in streams:
            await stream.aclose()
        assert (await client.state(pump.host)) is DeviceState.HUNG
        back = await client.power_cycle(pump.host, boot_delay_s=0.05)
        assert back.state is DeviceState.UP
        async with await anyio.connect_tcp(pump.host, pump.ports[21]) as stream:
            with anyio.fail_after(2):
                assert (await stream.receive()).startswith(b"220")
    finally:
        code = emulator.stop()
    assert code == 0
