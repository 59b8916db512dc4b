"""The issue's examples on real sockets, against a fragile device written here (not the emulator).

The device is a small asyncio server on its own loopback address that counts the sessions open on *its*
side, from its accept until its own code closes the socket, and hangs (stops answering everything) once it
holds ``hang_at`` sessions. Its console greets one second after the accept and notices a close only when it
next reads, after the greeting; its web port (the heartbeat) answers and closes.

These are wall-clock runs (a few seconds); tests/test_device_side.py proves the same promises exactly, as
properties in virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from fragileprobe import Guard, HttpHeartbeat, Scope, Target


@dataclass
class SlowConsoleDevice:
    host: str
    greet_after_s: float = 1.0
    hang_at: int | None = None
    sessions: int = 0
    peak: int = 0
    hung: bool = False
    servers: list[asyncio.Server] = field(default_factory=list)
    console_port: int = 0
    web_port: int = 0

    async def __aenter__(self) -> SlowConsoleDevice:
        console = await asyncio.start_server(self._console, self.host, 0)
        web = await asyncio.start_server(self._web, self.host, 0)
        self.servers = [console, web]
        self.console_port = console.sockets[0].getsockname()[1]
        self.web_port = web.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def _opened(self) -> None:
        self.sessions += 1
        self.peak = max(self.peak, self.sessions)
        if self.hang_at is not None and self.sessions >= self.hang_at:
            self.hung = True

    async def _frozen(self) -> None:
        await asyncio.sleep(3600)

    async def _console(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._opened()
        try:
            await asyncio.sleep(self.greet_after_s)
            if self.hung:
                await self._frozen()
            writer.write(b"login: ")
            await writer.drain()
            while await reader.read(1024):  # it notices our FIN only here, after its greeting
                if self.hung:
                    await self._frozen()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.sessions -= 1
            writer.close()

    async def _web(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._opened()
        try:
            if self.hung:
                await self._frozen()
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            self.sessions -= 1
            writer.close()


def _target(dev: SlowConsoleDevice) -> Target:
    heartbeat = HttpHeartbeat(port=dev.web_port, timeout_s=1.0)
    return Target(dev.host, ports=[dev.console_port], heartbeat=heartbeat)


async def test_caller_timeouts_cannot_pile_sessions_up_on_a_slow_console(loopback_host: str) -> None:
    """Two callers loop ``move_on_after(0.1): grab_banner`` against a console that greets 1 s after the
    accept, Guard ceiling 2. The old code freed each cancelled probe's slot at once, while the console held
    the session until its next read: the device held 21 of our sessions. Now: never more than 2 (one
    console session and the heartbeat's)."""
    async with SlowConsoleDevice(loopback_host) as dev:
        with capture_logs(), anyio.fail_after(30):
            async with Guard(_target(dev), ceiling=2, scope=Scope([dev.host]), interval_s=0.5) as guard:

                async def caller() -> None:
                    for _ in range(15):
                        with anyio.move_on_after(0.1):
                            await guard.grab_banner(dev.console_port)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(caller)
                    tg.start_soon(caller)
                stats = guard.stats
    assert dev.peak <= 2, f"the device held {dev.peak} of our sessions at once (ceiling 2)"
    assert stats.peak_device_sessions <= 2
    assert stats.linger_s_total > 0  # the time the slots stayed charged after our side was done


async def test_a_read_timeout_shorter_than_the_greeting_cannot_pile_sessions_up(loopback_host: str) -> None:
    """No cancellation: a 0.3 s read timeout against the 1 s greeting. The old code peaked at 5 on the
    device with ceiling 2, where its own docs promised 3."""
    async with SlowConsoleDevice(loopback_host) as dev:
        with capture_logs(), anyio.fail_after(30):
            async with Guard(_target(dev), ceiling=2, scope=Scope([dev.host]), interval_s=0.5) as guard:

                async def caller() -> None:
                    for _ in range(4):
                        await guard.grab_banner(dev.console_port, read_timeout_s=0.3)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(caller)
                    tg.start_soon(caller)
    assert dev.peak <= 2, f"the device held {dev.peak} of our sessions at once (ceiling 2)"


@pytest.mark.parametrize("ceiling", [2, 3])
async def test_a_device_that_hangs_at_the_ceiling_plus_one_is_never_hung(
    loopback_host: str, ceiling: int
) -> None:
    """A device that hangs at ceiling + 1 sessions, hammered through the Guard by more callers than places,
    with caller timeouts: it never hangs, because the Guard's count is the device's."""
    async with SlowConsoleDevice(loopback_host, greet_after_s=0.3, hang_at=ceiling + 1) as dev:
        with capture_logs(), anyio.fail_after(30):
            async with Guard(_target(dev), ceiling=ceiling, scope=Scope([dev.host]), interval_s=0.2) as guard:

                async def caller(give_up_s: float) -> None:
                    for _ in range(6):
                        with anyio.move_on_after(give_up_s):
                            await guard.grab_banner(dev.console_port, read_timeout_s=0.5)

                async with anyio.create_task_group() as tg:
                    for timeout in (0.05, 0.1, 0.2, 0.4, 1.0):
                        tg.start_soon(caller, timeout)
                down = guard.device_down
    assert not dev.hung, f"hung at {dev.peak} sessions with ceiling {ceiling}"
    assert not down


@dataclass
class StoryShapedDevice:
    """Three consoles that greet at once and read continuously, and a web port (the heartbeat) that answers
    and hangs up within milliseconds; the whole device wedges once it holds ``hang_at`` sessions.
    ``power_cycle`` ends every session and unwedges it."""

    host: str
    hang_at: int
    sessions: int = 0
    peak: int = 0
    hung: bool = False
    hangs: int = 0
    servers: list[asyncio.Server] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> StoryShapedDevice:
        for handler in (self._console, self._console, self._console, self._web):
            server = await asyncio.start_server(self._tracked(handler), self.host, 0)
            self.servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.power_cycle()
        for server in self.servers:
            server.close()

    def _tracked(self, handler: Any) -> Any:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)  # type: ignore[arg-type]
            self.sessions += 1
            self.peak = max(self.peak, self.sessions)
            if not self.hung and self.sessions >= self.hang_at:
                self.hung = True
                self.hangs += 1
            try:
                if self.hung:
                    await asyncio.sleep(3600)
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
                pass
            finally:
                self.sessions -= 1
                self.tasks.discard(task)  # type: ignore[arg-type]
                writer.close()

        return run

    async def _console(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"login: ")
        await writer.drain()
        while await reader.read(1024):
            if self.hung:
                await asyncio.sleep(3600)

    async def _web(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    async def power_cycle(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.sleep(0.1)
        self.hung = False


@pytest.mark.slow
async def test_the_recommended_ceiling_used_through_the_guard_does_not_hang_a_story_shaped_device(
    loopback_host: str,
) -> None:
    """The issue's second example on real sockets. The old code passed "level 4" with fewer than 4 sessions
    on the device (web sessions closed by the device at once while our slot stayed taken), recommended 4 for
    a device that hangs at 5, and a Guard at 4 then hung it (4 probes and the heartbeat)."""
    from fragileprobe._characterize import characterize

    async with StoryShapedDevice(loopback_host, hang_at=5) as dev:
        web = dev.ports[3]
        target = Target(dev.host, ports=dev.ports, heartbeat=HttpHeartbeat(port=web, timeout_s=0.5))
        with capture_logs(), anyio.fail_after(120):
            char = await characterize(
                target,
                scope=Scope([dev.host]),
                ladder=(2, 3, 4, 5, 6, 7),
                trials=2,
                recovery=dev.power_cycle,
                model_key="story-shaped",
                dwell_s=1.0,
                hold_s=0.3,
                interval_s=0.2,
                heartbeat_timeout_s=0.5,
                healthy_beats=2,
                recovery_timeout_s=10.0,
                baseline_beats=3,
                read_timeout_s=0.3,
                connect_timeout_s=0.5,
            )
            hangs_before = dev.hangs
            dev.peak = dev.sessions
            assert char.safe_ceiling is not None
            assert char.safe_ceiling >= 2, char.summary()
            async with Guard(target, ceiling=char.safe_ceiling, scope=Scope([dev.host]), interval_s=0.2) as g:

                async def hold(port: int) -> None:
                    # A scanner's check holds its session: here 1.5 s each, on consoles and the web port.
                    for _ in range(2):
                        async with g.connect(port) as stream:
                            with anyio.move_on_after(1.5), contextlib.suppress(anyio.EndOfStream):
                                while True:
                                    await stream.receive(1024)

                async with anyio.create_task_group() as tg:
                    for i in range(8):
                        tg.start_soon(hold, dev.ports[i % 4])
    assert hangs_before >= 1, "the ladder reached the hang: it was measured"
    assert char.safe_ceiling < 5, char.summary()
    assert dev.hangs == hangs_before, f"a Guard at the recommended {char.safe_ceiling} hung the device"
