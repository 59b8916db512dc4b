"""Heartbeats against the emulated pump and small loopback peers: a sign of life or a clear failure."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pytest

from fragileprobe import Beat, ConfigError, Heartbeat, HttpHeartbeat, TcpHeartbeat
from fragileprobe.emulator import EmulatedPump

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SLACK_S = 0.5


@asynccontextmanager
async def http_server(host: str, response: bytes | None) -> AsyncIterator[int]:
    """Answers every request with ``response``; None means accept and stay silent."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive()
                if response is None:
                    await anyio.sleep(30)
                await stream.send(response or b"")
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                pass

    listener = await anyio.create_tcp_listener(local_host=host, local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


def test_heartbeats_satisfy_the_protocol() -> None:
    assert isinstance(HttpHeartbeat(), Heartbeat)
    assert isinstance(TcpHeartbeat(22), Heartbeat)


def test_defaults_and_repr() -> None:
    assert HttpHeartbeat() == HttpHeartbeat(port=8080, path="/", expect_status=200, timeout_s=2.0)
    assert repr(TcpHeartbeat(22, timeout_s=0.5)) == "TcpHeartbeat(port=22, timeout_s=0.5)"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: HttpHeartbeat(port=0), "HttpHeartbeat.port"),
        (lambda: HttpHeartbeat(timeout_s=0), "HttpHeartbeat.timeout_s"),
        (lambda: HttpHeartbeat(path="status"), "HttpHeartbeat.path"),
        (lambda: HttpHeartbeat(expect_status=42), "HttpHeartbeat.expect_status"),
        (lambda: TcpHeartbeat(70000), "TcpHeartbeat.port"),
        (lambda: TcpHeartbeat(22, timeout_s=-1), "TcpHeartbeat.timeout_s"),
    ],
)
def test_bad_settings_are_config_errors(make: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{fragment}: must be .*, got ") as info:
        make()  # type: ignore[operator]
    assert info.value.field == fragment


async def test_http_heartbeat_on_the_emulated_pump(loopback_host: str) -> None:
    async with EmulatedPump(loopback_host, seed=1) as pump:
        beat = await HttpHeartbeat(port=pump.web_port, timeout_s=1.0).beat(loopback_host)
        assert beat.ok
        assert beat.error is None
        assert beat.latency_s > 0
        pump.hang()
        failed = await HttpHeartbeat(port=pump.web_port, timeout_s=0.2).beat(loopback_host)
    assert not failed.ok
    assert "timeout" in (failed.error or "")
    assert failed.latency_s <= 0.2 + SLACK_S


async def test_http_heartbeat_wrong_status_fails(loopback_host: str) -> None:
    async with http_server(loopback_host, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n") as port:
        beat = await HttpHeartbeat(port=port).beat(loopback_host)
        any_status = await HttpHeartbeat(port=port, expect_status=None).beat(loopback_host)
    assert not beat.ok
    assert beat.error == "status 503, expected 200"
    assert any_status.ok


async def test_http_heartbeat_silent_server_fails_within_its_timeout(loopback_host: str) -> None:
    async with http_server(loopback_host, None) as port:
        beat = await HttpHeartbeat(port=port, timeout_s=0.2).beat(loopback_host)
    assert not beat.ok
    assert beat.latency_s <= 0.2 + SLACK_S


async def test_heartbeats_on_a_closed_port_fail_as_closed(loopback_host: str) -> None:
    async with http_server(loopback_host, None) as port:
        pass
    http_beat = await HttpHeartbeat(port=port).beat(loopback_host)
    tcp_beat = await TcpHeartbeat(port).beat(loopback_host)
    assert isinstance(http_beat, Beat)
    assert not http_beat.ok
    assert not tcp_beat.ok
    assert (tcp_beat.error or "").startswith("closed")


async def test_tcp_heartbeat_ok_on_an_open_port(loopback_host: str) -> None:
    async with http_server(loopback_host, None) as port:
        beat = await TcpHeartbeat(port, timeout_s=0.5).beat(loopback_host)
    assert beat.ok
