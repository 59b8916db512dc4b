"""Hostile emulated devices do what they say, and stay bounded on the emulator side."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import pytest

from fragileprobe.emulator import (
    MODELS,
    DeviceModel,
    DeviceState,
    EmulatedDevice,
    Fleet,
    FragilitySpec,
    ServiceSpec,
    hostile_fleet,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import SocketStream

# Errors a client sees when the device resets the connection.
RESET_ERRORS = (anyio.BrokenResourceError, ConnectionResetError, OSError)


async def connect(host: str, port: int) -> SocketStream:
    with anyio.fail_after(2):
        return await anyio.connect_tcp(host, port)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await anyio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def read_at_most(stream: SocketStream, limit: int, timeout_s: float) -> bytes:
    """Read until ``limit`` bytes, EOF or ``timeout_s``, whichever first."""
    data = b""
    with anyio.move_on_after(timeout_s):
        while len(data) < limit:
            try:
                data += await stream.receive(65536)
            except anyio.EndOfStream:
                break
    return data


def custom(services: dict[int, ServiceSpec], **kwargs: object) -> DeviceModel:
    """A one-off model for fast timings (the catalogue's hostile models use real-world ones)."""
    base = {
        "name": "test-hostile",
        "vendor": "Test",
        "product": "test device",
        "os_family": "embedded",
        "category": "medical",
        "services": {**services, 8080: ServiceSpec(kind="http", server_header="test", title="t")},
        "web_port": 8080,
        "fragility": FragilitySpec(threshold=None),
    }
    base.update(kwargs)
    return DeviceModel(**base)  # type: ignore[arg-type]


def hostile(host: str, name: str, **kwargs: object) -> EmulatedDevice:
    return EmulatedDevice(host, model=name, seed=1, boot_delay_s=0.05, **kwargs)  # type: ignore[arg-type]


async def test_silent_service_accepts_and_never_speaks(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-tarpit") as dev:
        stream = await connect(dev.host, dev.port(22))
        await stream.send(b"SSH-2.0-probe\r\n")
        assert await read_at_most(stream, 1, 0.3) == b""
        await eventually(lambda: dev.stats.bytes_received_by_port[22] == 15)
        await stream.aclose()


async def test_mute_service_never_reads_so_the_window_fills(loopback_host: str) -> None:
    """The client's sends block once the kernel buffers are full; the device read nothing."""
    async with hostile(loopback_host, "hostile-tarpit") as dev:
        stream = await connect(dev.host, dev.port(23))
        sent = 0
        with anyio.move_on_after(1.0):
            while sent < 64 * 1024 * 1024:
                await stream.send(b"x" * 65536)
                sent += 65536
        assert sent < 64 * 1024 * 1024  # blocked long before 64 MiB
        assert dev.stats.bytes_received_by_port[23] == 0
        await stream.aclose()


async def test_mute_session_ends_at_its_idle_timeout(loopback_host: str) -> None:
    model = custom({23: ServiceSpec(kind="mute", idle_timeout_s=0.3)})
    async with EmulatedDevice(loopback_host, model=model) as dev:
        stream = await connect(dev.host, dev.port(23))
        await eventually(lambda: dev.stats.sessions_now == 1)
        started = time.monotonic()
        await eventually(lambda: dev.stats.sessions_now == 0)
        assert time.monotonic() - started < 2.0
        await stream.aclose()


async def test_drip_sends_one_byte_per_interval(loopback_host: str) -> None:
    model = custom({21: ServiceSpec(kind="drip", banner=b"220 slow\r\n", drip_interval_s=0.1)})
    async with EmulatedDevice(loopback_host, model=model) as dev:
        stream = await connect(dev.host, dev.port(21))
        started = time.monotonic()
        data = await read_at_most(stream, 1000, 0.55)
        elapsed = time.monotonic() - started
        # One byte right away, then one per 0.1 s: never more than elapsed / interval + 1.
        assert 3 <= len(data) <= int(elapsed / 0.1) + 1
        assert b"220 slow\r\n".startswith(data[:5])
        await stream.aclose()
        # The device notices the departed client on its next drips and ends the session.
        await eventually(lambda: dev.stats.sessions_now == 0)


async def test_catalogue_tarpit_drips_one_byte_a_second(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-tarpit") as dev:
        assert dev.model.services[21].drip_interval_s == 1.0
        stream = await connect(dev.host, dev.port(21))
        assert await read_at_most(stream, 100, 0.5) == b"2"
        await stream.aclose()


async def test_flood_sends_megabytes_then_closes(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-resetter") as dev:
        expected = dev.model.services[23].flood_bytes
        assert expected >= 1024 * 1024
        stream = await connect(dev.host, dev.port(23))
        data = await read_at_most(stream, expected + 1, 10.0)
        assert len(data) == expected
        await stream.aclose()


async def test_flood_stops_when_the_client_leaves(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-resetter") as dev:
        stream = await connect(dev.host, dev.port(23))
        assert len(await read_at_most(stream, 100_000, 2.0)) >= 100_000
        await stream.aclose()
        await eventually(lambda: dev.stats.sessions_now == 0)


async def test_reset_on_connect(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-resetter") as dev:
        stream = await connect(dev.host, dev.port(21))
        with pytest.raises(RESET_ERRORS), anyio.fail_after(2):
            await stream.receive()
        await stream.aclose()


async def test_reset_mid_banner(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-resetter") as dev:
        banner = dev.model.services[22].banner
        stream = await connect(dev.host, dev.port(22))
        with anyio.fail_after(2):
            first = await stream.receive()
        assert first == banner[: len(banner) // 2]
        with pytest.raises(RESET_ERRORS), anyio.fail_after(2):
            await stream.receive()
        await stream.aclose()


async def _http(dev: EmulatedDevice, port: int, limit: int, timeout_s: float) -> tuple[SocketStream, bytes]:
    stream = await connect(dev.host, dev.port(port))
    await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return stream, await read_at_most(stream, limit, timeout_s)


async def test_http_malformed_status_line(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-resetter") as dev:
        stream, data = await _http(dev, 80, 4096, 2.0)
        status_line = data.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 ")
        assert not status_line.split(b" ")[1].isdigit()
        await stream.aclose()


async def test_http_endless_headers(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-tarpit") as dev:
        stream, data = await _http(dev, 80, 64 * 1024, 5.0)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert len(data) >= 64 * 1024
        assert b"\r\n\r\n" not in data  # the head never ends
        await stream.aclose()
        await eventually(lambda: dev.stats.sessions_now == 0)


async def test_http_endless_chunked_body(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-tarpit") as dev:
        stream, data = await _http(dev, 8000, 64 * 1024, 5.0)
        head, sep, body = data.partition(b"\r\n\r\n")
        assert sep
        assert b"Transfer-Encoding: chunked" in head
        assert len(body) >= 32 * 1024
        assert b"\r\n0\r\n\r\n" not in body  # no last chunk
        await stream.aclose()
        await eventually(lambda: dev.stats.sessions_now == 0)


async def test_hostile_web_port_answers_normally(loopback_host: str) -> None:
    """The hostile models keep a sane heartbeat port, so a watchdog can tell hostile from dead."""
    for name in ("hostile-tarpit", "hostile-resetter"):
        async with hostile(loopback_host, name) as dev:
            stream, data = await _http(dev, 8080, 65536, 2.0)
            assert data.startswith(b"HTTP/1.1 200 OK")
            await stream.aclose()


async def _banner(dev: EmulatedDevice, port: int) -> bytes:
    stream = await connect(dev.host, dev.port(port))
    try:
        return await read_at_most(stream, 200, 0.5)
    finally:
        await stream.aclose()


async def test_firmware_changes_after_a_crash_and_power_cycle(loopback_host: str) -> None:
    async with hostile(loopback_host, "hostile-firmware") as dev:
        assert await _banner(dev, 21) == b"220 (vsFTPd 2.3.4)\r\n"
        await dev.power_cycle()  # a clean reboot keeps the firmware
        assert await _banner(dev, 21) == b"220 (vsFTPd 2.3.4)\r\n"
        assert not dev.firmware_changed
        dev.hang()
        await dev.power_cycle()
        assert dev.firmware_changed
        assert await _banner(dev, 21) == b"220 (vsFTPd 3.0.3)\r\n"
        assert await _banner(dev, 22) == b"SSH-2.0-dropbear_2019.78\r\n"
        stream, data = await _http(dev, 8080, 65536, 2.0)
        assert b"\r\nServer: GoAhead-Webs/3.6.5\r\n" in data
        await stream.aclose()


async def test_flapping_device_hangs_and_recovers_by_itself(loopback_host: str) -> None:
    """Up, hung, booting (refusing), up again, over and over, with nobody touching it."""
    flapper = dataclasses.replace(MODELS["hostile-flapper"], flap_period_s=0.3)
    async with EmulatedDevice(loopback_host, model=flapper, boot_delay_s=0.1) as dev:
        seen: list[DeviceState] = [dev.state]
        with anyio.fail_after(5):
            while dev.stats.power_cycles < 2:
                if dev.state is not seen[-1]:
                    seen.append(dev.state)
                await anyio.sleep(0.01)
        assert seen[:4] == [DeviceState.UP, DeviceState.HUNG, DeviceState.BOOTING, DeviceState.UP]
        assert dev.stats.crashes >= 2


def test_catalogue_has_hostile_models_of_every_kind() -> None:
    kinds = {
        spec.kind for m in MODELS.values() if m.name.startswith("hostile-") for spec in m.services.values()
    }
    expected = {
        "silent",
        "mute",
        "drip",
        "flood",
        "reset",
        "reset-mid-banner",
        "http-bad-status",
        "http-endless-headers",
        "http-endless-chunked",
    }
    assert expected <= kinds
    assert MODELS["hostile-firmware"].banners_after_crash
    assert MODELS["hostile-flapper"].flap_period_s


async def test_hostile_fleet_starts_and_has_ground_truth() -> None:
    config = hostile_fleet("127.76.5", seed=3, boot_delay_s=0.05)
    truth = config.ground_truth
    assert len(truth) == 80
    models = Counter(t.model for t in truth.values())
    for name in ("hostile-tarpit", "hostile-resetter", "hostile-firmware", "hostile-flapper"):
        assert models[name] == 12
    assert models[None] == 16
    async with Fleet(config, control_port=None) as fleet:
        assert len(fleet.devices) == 64
        tarpit = next(d for d in fleet.devices.values() if d.model.name == "hostile-tarpit")
        stream, data = await _http(tarpit, 8080, 65536, 2.0)
        assert data.startswith(b"HTTP/1.1 200")
        await stream.aclose()


async def test_mute_session_ends_when_the_client_leaves(loopback_host: str) -> None:
    """A mute service reads nothing, yet stops counting a session once its client has closed."""
    async with hostile(loopback_host, "hostile-tarpit") as dev:
        stream = await connect(dev.host, dev.port(23))
        await stream.send(b"unread data")
        await eventually(lambda: dev.stats.sessions_now == 1)
        await stream.aclose()
        await eventually(lambda: dev.stats.sessions_now == 0, timeout_s=2.0)
        assert dev.stats.bytes_received_by_port[23] == 0


def test_every_service_kind_has_a_handler() -> None:
    from fragileprobe.emulator import SERVICE_KINDS
    from fragileprobe.emulator._services import _HANDLERS

    assert set(_HANDLERS) == set(SERVICE_KINDS)
