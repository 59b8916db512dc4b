"""The emulated devices on loopback: banners, slowdown, hang at threshold, power cycle, stats, config."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from fragileprobe import ConfigError
from fragileprobe.emulator import (
    MAX_HELD_CONNECTIONS,
    MODELS,
    UNPRIVILEGED_PORT_OFFSET,
    DeviceState,
    EmulatedDevice,
    EmulatedPump,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import SocketStream

BOOT_S = 0.1
# How long a test waits to be sure a hung device stays silent (it never answers, so any value proves it
# only up to that time; short keeps the suite quick).
SILENCE_S = 0.3


async def connect(host: str, port: int) -> SocketStream:
    with anyio.fail_after(2):
        return await anyio.connect_tcp(host, port)


async def read_some(stream: SocketStream, timeout_s: float = 2.0) -> bytes:
    with anyio.fail_after(timeout_s):
        return await stream.receive(65536)


async def read_until(stream: SocketStream, marker: bytes, timeout_s: float = 2.0) -> bytes:
    data = b""
    with anyio.fail_after(timeout_s):
        while marker not in data:
            chunk = await stream.receive(65536)
            data += chunk
    return data


async def read_all(stream: SocketStream, timeout_s: float = 2.0, limit: int = 1 << 20) -> bytes:
    data = b""
    with anyio.fail_after(timeout_s):
        while len(data) < limit:
            try:
                data += await stream.receive(65536)
            except anyio.EndOfStream:
                break
    return data


async def http_get(host: str, port: int, path: str = "/", method: str = "GET") -> bytes:
    stream = await connect(host, port)
    async with stream:
        await stream.send(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return await read_all(stream)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait until ``predicate()`` holds (polling: the device has no event to wait on), or fail."""
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await anyio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def stays_silent(stream: SocketStream, seconds: float = SILENCE_S) -> bool:
    """True if nothing at all arrives on ``stream`` for ``seconds`` (and it is not closed)."""
    with anyio.move_on_after(seconds):
        await stream.receive(1)
        return False
    return True


def pump(host: str, **kwargs: object) -> EmulatedPump:
    kwargs.setdefault("boot_delay_s", BOOT_S)
    kwargs.setdefault("seed", 7)
    return EmulatedPump(host, **kwargs)  # type: ignore[arg-type]


# --- banners and protocols ------------------------------------------------------------------------------
async def test_pump_serves_its_banners(loopback_host: str) -> None:
    """FTP, SSH and Telnet greet with the model's old banners; the web port is the heartbeat port."""
    async with pump(loopback_host) as dev:
        assert set(dev.ports) == {21, 22, 23, 8080}
        assert dev.web_port == dev.port(8080) == 8080
        ftp = await connect(dev.host, dev.port(21))
        assert await read_some(ftp) == b"220 (vsFTPd 2.3.4)\r\n"
        await ftp.send(b"USER anonymous\r\n")
        assert (await read_some(ftp)).startswith(b"331 ")
        await ftp.send(b"PASS x\r\n")
        assert (await read_some(ftp)).startswith(b"530 ")
        await ftp.send(b"QUIT\r\n")
        assert (await read_all(ftp)).startswith(b"221 ")
        await ftp.aclose()
        ssh = await connect(dev.host, dev.port(22))
        assert await read_some(ssh) == b"SSH-2.0-dropbear_0.52\r\n"
        await ssh.aclose()
        telnet = await connect(dev.host, dev.port(23))
        greeting = await read_until(telnet, b"login: ")
        assert greeting.startswith(b"\xff\xfd\x01")  # IAC DO ECHO, as BusyBox telnetd opens
        assert greeting.endswith(b"mis3000 login: ")
        await telnet.aclose()


async def test_telnet_rejects_root_root_and_accepts_model_password(loopback_host: str) -> None:
    async with pump(loopback_host) as dev:
        telnet = await connect(dev.host, dev.port(23))
        await read_until(telnet, b"login: ")
        # A client answering the negotiation: IAC WONT ECHO mixed into the input must be ignored.
        await telnet.send(b"\xff\xfc\x01root\r\n")
        await read_until(telnet, b"Password: ")
        await telnet.send(b"root\r\n")
        rejected = await read_until(telnet, b"login: ")
        assert b"Login incorrect" in rejected
        await telnet.send(b"admin\r\n")
        await read_until(telnet, b"Password: ")
        password = MODELS["infusion-pump"].telnet_password
        assert password
        await telnet.send(password.encode() + b"\r\n")
        shell = await read_until(telnet, b"# ")
        assert b"BusyBox" in shell
        await telnet.send(b"exit\r\n")
        assert await read_all(telnet) == b""
        await telnet.aclose()


async def test_http_status_page_has_server_header_and_title(loopback_host: str) -> None:
    async with pump(loopback_host) as dev:
        response = await http_get(dev.host, dev.web_port)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"\r\nServer: GoAhead-Webs/2.5.0" in head
        assert b"<title>MIS-3000 Infusion Pump</title>" in body
        assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
        missing = await http_get(dev.host, dev.web_port, "/nope")
        assert missing.startswith(b"HTTP/1.1 404")
        head_only = await http_get(dev.host, dev.web_port, "/", method="HEAD")
        assert head_only.startswith(b"HTTP/1.1 200")
        assert head_only.endswith(b"\r\n\r\n")


async def test_oversized_http_request_is_refused_with_431(loopback_host: str) -> None:
    async with pump(loopback_host) as dev, await connect(dev.host, dev.web_port) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nX: " + b"a" * 20000)
        assert (await read_all(stream)).startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("name", sorted(n for n in MODELS if not n.startswith("hostile-")))
async def test_every_model_serves_every_port(loopback_hosts: object, name: str) -> None:
    """Each catalogue model listens on all its ports; web ports answer HTTP with a Server header."""
    host = loopback_hosts()  # type: ignore[operator]
    async with EmulatedDevice(host, model=name, seed=1, boot_delay_s=BOOT_S) as dev:
        for bound in dev.ports.values():
            stream = await connect(host, bound)
            await stream.aclose()
            # One session at a time: wait until the device has noticed the close (the patient monitor
            # would otherwise hang, which is the point of its model, see test_patient_monitor_...).
            await eventually(lambda: dev.stats.sessions_now == 0, timeout_s=2)
        assert dev.state is DeviceState.UP
        if dev.model.web_port is not None:
            response = await http_get(host, dev.web_port)
            assert response.startswith(b"HTTP/1.1 200")
            assert b"Server: " in response
        assert dev.stats.connects_total >= len(dev.ports)


async def test_patient_monitor_hangs_when_all_its_ports_are_hit_at_once(loopback_host: str) -> None:
    """One connection to each of its 14 ports at once (what a connect scan does) exceeds its ceiling."""
    async with EmulatedDevice(loopback_host, model="patient-monitor", seed=3, boot_delay_s=BOOT_S) as dev:
        assert len(dev.ports) >= 12
        assert dev.threshold is not None
        assert dev.threshold < len(dev.ports)
        streams = [await connect(loopback_host, bound) for bound in dev.ports.values()]
        await eventually(lambda: dev.state is DeviceState.HUNG, timeout_s=2)
        for stream in streams:
            await stream.aclose()


async def test_printer_raw_port_counts_bytes_and_never_answers(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="printer", boot_delay_s=BOOT_S) as dev:
        stream = await connect(dev.host, dev.port(9100))
        await stream.send(b"%!PS\n" * 200)
        assert await stays_silent(stream)
        assert dev.stats.bytes_received_by_port[9100] == 1000
        await stream.aclose()


# --- port offset ------------------------------------------------------------------------------------------
async def test_port_offset_moves_privileged_ports_only(loopback_host: str) -> None:
    """With an offset (what a non-root user gets), 21 is served at 10021 while 8080 stays put."""
    async with pump(loopback_host, port_offset=UNPRIVILEGED_PORT_OFFSET) as dev:
        assert dict(dev.ports) == {21: 10021, 22: 10022, 23: 10023, 8080: 8080}
        ftp = await connect(dev.host, 10021)
        assert await read_some(ftp) == b"220 (vsFTPd 2.3.4)\r\n"
        await ftp.aclose()


def test_default_offset_depends_on_root(loopback_host: str) -> None:
    dev = EmulatedPump(loopback_host)
    expected = 0 if os.geteuid() == 0 else UNPRIVILEGED_PORT_OFFSET
    assert dev.port(21) == 21 + expected
    assert dev.port(8080) == 8080


# --- load, hang, power cycle ------------------------------------------------------------------------------
async def _timed_get(host: str, port: int) -> float:
    start = time.monotonic()
    response = await http_get(host, port)
    assert response.startswith(b"HTTP/1.1 200")
    return time.monotonic() - start


async def test_responses_slow_down_with_load(loopback_host: str) -> None:
    """With sessions held open, the heartbeat page answers measurably later."""
    async with pump(loopback_host, threshold=20, jitter=0, slowdown_s_per_session=0.08) as dev:
        idle = await _timed_get(dev.host, dev.web_port)
        held = [await connect(dev.host, dev.port(21)) for _ in range(6)]
        for stream in held:
            await read_some(stream)
        assert dev.stats.sessions_now == 6
        loaded = await _timed_get(dev.host, dev.web_port)
        # 7 sessions -> 6 * 0.08 = 0.48 s of slowdown on top of the idle latency.
        assert loaded > idle + 0.3
        assert dev.response_delay_s() == pytest.approx(dev.model.fragility.base_latency_s + 5 * 0.08)
        for stream in held:
            await stream.aclose()


async def test_hangs_at_threshold_and_stays_hung_until_power_cycle(loopback_host: str) -> None:
    async with pump(loopback_host, threshold=4, jitter=0) as dev:
        assert dev.threshold == 4
        held = []
        for _ in range(3):
            stream = await connect(dev.host, dev.port(21))
            assert (await read_some(stream)).startswith(b"220")
            held.append(stream)
        assert dev.state is DeviceState.UP
        tipping = await connect(dev.host, dev.port(22))
        await eventually(lambda: dev.state is DeviceState.HUNG, timeout_s=2)
        # The session that tipped it over never gets its banner; open sessions stall.
        assert await stays_silent(tipping)
        await held[0].send(b"USER x\r\n")
        assert await stays_silent(held[0])
        # New connections complete the handshake but are never served; the web server is dead.
        late = await connect(dev.host, dev.port(21))
        assert await stays_silent(late)
        web = await connect(dev.host, dev.web_port)
        await web.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await stays_silent(web)
        # Everyone leaves; the device stays hung anyway.
        for stream in [*held, tipping, late, web]:
            await stream.aclose()
        await anyio.sleep(0.1)
        assert dev.state is DeviceState.HUNG
        again = await connect(dev.host, dev.port(21))
        assert await stays_silent(again)
        await again.aclose()
        stats = dev.stats
        assert stats.crashes == 1
        assert stats.peak_sessions == 4
        assert stats.attempts_while_hung == 4  # tipping, late, web, again
        assert stats.sessions_served == 3
        assert stats.connects_total == 7
        assert stats.bytes_received_by_port[21] == len(b"USER x\r\n")


async def test_power_cycle_refuses_while_booting_then_recovers(loopback_host: str) -> None:
    async with pump(loopback_host, threshold=2, jitter=0, boot_delay_s=0.5) as dev:
        first = await connect(dev.host, dev.port(21))
        second = await connect(dev.host, dev.port(21))
        await eventually(lambda: dev.state is DeviceState.HUNG, timeout_s=2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(dev.power_cycle)
            await eventually(lambda: dev.state is DeviceState.BOOTING, timeout_s=2)
            await anyio.sleep(0.05)
            with pytest.raises(OSError):  # ConnectionRefusedError: nothing listens while booting
                await anyio.connect_tcp(dev.host, dev.web_port)
            # The open sessions were reset: the device forgot them.
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                await read_all(first)
        await first.aclose()
        await second.aclose()
        assert dev.state is DeviceState.UP
        assert (await http_get(dev.host, dev.web_port)).startswith(b"HTTP/1.1 200")
        assert dev.stats.power_cycles == 1
        assert dev.stats.sessions_now == 0


async def test_thresholds_reproducible_by_seed_across_power_cycles(loopback_hosts: object) -> None:
    sequences = []
    for _ in range(2):
        host = loopback_hosts()  # type: ignore[operator]
        async with EmulatedPump(host, seed=99, boot_delay_s=0) as dev:
            seq = [dev.threshold]
            for _ in range(4):
                await dev.power_cycle()
                seq.append(dev.threshold)
            sequences.append(seq)
            assert all(t is not None and 7 <= t <= 9 for t in seq)
    assert sequences[0] == sequences[1]


async def test_forced_hang_and_wedge_spare_ports(loopback_host: str) -> None:
    """wedge(except_ports={21}) silences everything but FTP; a power cycle clears it."""
    async with pump(loopback_host) as dev:
        dev.wedge(except_ports={21})
        assert dev.state is DeviceState.HUNG
        ftp = await connect(dev.host, dev.port(21))
        assert (await read_some(ftp)).startswith(b"220")
        await ftp.aclose()
        web = await connect(dev.host, dev.web_port)
        await web.send(b"GET / HTTP/1.1\r\n\r\n")
        assert await stays_silent(web)
        await web.aclose()
        await dev.power_cycle(boot_delay_s=0)
        assert (await http_get(dev.host, dev.web_port)).startswith(b"HTTP/1.1 200")
        dev.hang()
        ftp = await connect(dev.host, dev.port(21))
        assert await stays_silent(ftp)
        await ftp.aclose()
        with pytest.raises(ConfigError, match="except_ports"):
            dev.wedge(except_ports={25})


async def test_connects_since_counts_recent_attempts(loopback_host: str) -> None:
    async with pump(loopback_host) as dev:
        for _ in range(2):
            await (await connect(dev.host, dev.port(22))).aclose()
        mark = anyio.current_time()  # the device's clock: the event loop's
        for _ in range(3):
            await (await connect(dev.host, dev.port(22))).aclose()
        await eventually(lambda: dev.connects_since(mark) >= 3, timeout_s=2)
        assert dev.connects_since(mark) == 3
        assert dev.connects_since(0.0) == 5


async def test_hung_device_holds_a_bounded_number_of_connections(loopback_host: str) -> None:
    """Past MAX_HELD_CONNECTIONS the hung device stops accepting (the kernel backlog takes over)."""
    async with pump(loopback_host, threshold=1, jitter=0) as dev:
        streams = []
        try:
            for _ in range(MAX_HELD_CONNECTIONS + 20):
                streams.append(await connect(dev.host, dev.port(22)))
            await eventually(lambda: dev.stats.connects_total >= MAX_HELD_CONNECTIONS, timeout_s=3)
            await anyio.sleep(0.1)
            assert dev.stats.connects_total == MAX_HELD_CONNECTIONS
            assert dev.stats.attempts_while_hung == MAX_HELD_CONNECTIONS
        finally:
            for stream in streams:
                await stream.aclose()


# --- configuration errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "toaster"}, "model"),
        ({"threshold": 0}, "threshold"),
        ({"jitter": -2}, "jitter"),
        ({"port_offset": 65520}, "port_offset"),
        ({"port_offset": -1}, "port_offset"),
        ({"boot_delay_s": -1.0}, "boot_delay_s"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_bad_config_names_the_field(loopback_host: str, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}"):
        EmulatedDevice(loopback_host, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.5", "::1", "localhost", "127.0.0.256"])
def test_host_outside_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=r"^host"):
        EmulatedPump(host)


async def test_port_already_in_use_is_a_config_error(loopback_host: str) -> None:
    async with pump(loopback_host):
        with pytest.raises(ConfigError, match=r"^port"):
            async with pump(loopback_host):
                pass


async def test_a_failing_session_does_not_take_the_device_down(
    loopback_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in one service handler ends that session only; it is logged and the device keeps serving."""
    from structlog.testing import capture_logs

    from fragileprobe.emulator import _services

    async def broken(conn: _services.ServiceConn) -> None:
        raise RuntimeError("handler bug")

    monkeypatch.setitem(_services._HANDLERS, "ssh", broken)
    async with pump(loopback_host) as dev:
        with capture_logs() as logs:
            stream = await connect(dev.host, dev.port(22))
            assert await read_all(stream) == b""  # closed without a word
            await stream.aclose()
        assert any(e["event"] == "emulator.service_error" for e in logs)
        assert dev.state is DeviceState.UP
        assert (await http_get(dev.host, dev.web_port)).startswith(b"HTTP/1.1 200")


async def test_cancelled_power_cycle_still_boots(loopback_host: str) -> None:
    """A caller that gives up during the boot delay does not leave the device off for good."""
    async with pump(loopback_host, boot_delay_s=0.3) as dev:
        dev.hang()
        with anyio.move_on_after(0.1):
            await dev.power_cycle()
        assert dev.state is DeviceState.BOOTING
        await eventually(lambda: dev.state is DeviceState.UP, timeout_s=3)
        assert (await http_get(dev.host, dev.web_port)).startswith(b"HTTP/1.1 200")
