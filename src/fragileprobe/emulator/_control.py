"""The fleet's control API: a tiny HTTP/1.1 JSON server on 127.0.0.1, and its client.

Endpoints (one request per connection, ``Connection: close``)::

    GET  /devices                          {"devices": [<device>...], "empty": [<host>...]}
    GET  /devices/<host>                   <device>
    POST /devices/<host>/power-cycle       power-cycles (waits until up again), returns <device>
         ?boot_delay_s=<float>             optional boot delay for this cycle
    POST /devices/<host>/hang              hangs the device now, returns <device>

A ``<device>`` is ``{"host", "model", "zone", "seed", "state", "threshold", "ports": {model: bound},
"web_port", "stats": {...DeviceStats..., "bytes_received_by_port": {port: n}}}``. Errors answer
``{"error": "..."}`` with 400, 404 or 405. Every read is bounded in bytes and time on both sides.
"""

from __future__ import annotations

import contextlib
import json
import types
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from fragileprobe._errors import (
    ConfigError,
    FragileProbeError,
    ProbeError,
    ProbeRefusedError,
    ProbeResetError,
    ProbeTimeoutError,
)
from fragileprobe.emulator._device import DeviceStats, EmulatedDevice, check_loopback_host
from fragileprobe.emulator._fragility import DeviceState

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import Listener, SocketStream

    from fragileprobe.emulator._fleet import Fleet

__all__ = ["DeviceInfo", "FleetClient", "device_to_json", "serve_control"]

log = structlog.get_logger(__name__)

# A control request is one line and a few headers; 8 KiB is what common servers allow for a request head.
MAX_REQUEST_HEAD = 8192
# A request must arrive within this time, or the server drops the connection (slowloris guard).
REQUEST_TIMEOUT_S = 5.0
# Largest response the client reads: a 254-device listing is about 150 KiB; 16 MiB leaves room for a /16.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Default client deadline per call; a power-cycle call adds the boot delay it asks for.
DEFAULT_CLIENT_TIMEOUT_S = 30.0


def _stats_to_json(stats: DeviceStats) -> dict[str, Any]:
    return {
        "sessions_now": stats.sessions_now,
        "peak_sessions": stats.peak_sessions,
        "sessions_served": stats.sessions_served,
        "connects_total": stats.connects_total,
        "crashes": stats.crashes,
        "attempts_while_hung": stats.attempts_while_hung,
        "power_cycles": stats.power_cycles,
        "bytes_received_by_port": {str(p): n for p, n in stats.bytes_received_by_port.items()},
    }


def device_to_json(device: EmulatedDevice, zone: str | None = None) -> dict[str, Any]:
    """The JSON object the control API returns for ``device``."""
    return {
        "host": device.host,
        "model": device.model.name,
        "zone": zone,
        "seed": device.seed,
        "state": device.state.value,
        "threshold": device.threshold,
        "ports": {str(p): b for p, b in device.ports.items()},
        "web_port": device.web_port if device.model.web_port is not None else None,
        "stats": _stats_to_json(device.stats),
    }


# --- server --------------------------------------------------------------------------------------------
def _response(status: str, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read_head(stream: SocketStream) -> bytes | None:
    head = bytearray()
    with anyio.move_on_after(REQUEST_TIMEOUT_S):
        while b"\r\n\r\n" not in head:
            try:
                head += await stream.receive(4096)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return None
            if len(head) > MAX_REQUEST_HEAD:
                return None
        return bytes(head)
    return None


async def _route(fleet: Fleet, method: str, target: str) -> tuple[str, object]:
    url = urllib.parse.urlsplit(target)
    parts = [p for p in url.path.split("/") if p]
    query = urllib.parse.parse_qs(url.query)
    if parts == ["devices"]:
        if method != "GET":
            return "405 Method Not Allowed", {"error": f"{method} not allowed on /devices"}
        devices = [device_to_json(d, fleet.zone_of(h)) for h, d in fleet.devices.items()]
        return "200 OK", {"devices": devices, "empty": list(fleet.empty)}
    if len(parts) in (2, 3) and parts[0] == "devices":
        host = parts[1]
        device = fleet.devices.get(host)
        if device is None:
            return "404 Not Found", {"error": f"no device at {host!r} in this fleet"}
        if len(parts) == 2:
            if method != "GET":
                return "405 Method Not Allowed", {"error": f"{method} not allowed on /devices/<host>"}
            return "200 OK", device_to_json(device, fleet.zone_of(host))
        action = parts[2]
        if method != "POST":
            return "405 Method Not Allowed", {"error": f"{action} needs POST"}
        if action == "power-cycle":
            boot_delay_s: float | None = None
            if "boot_delay_s" in query:
                try:
                    boot_delay_s = float(query["boot_delay_s"][0])
                except ValueError:
                    return "400 Bad Request", {"error": "boot_delay_s: not a number"}
            try:
                await device.power_cycle(boot_delay_s=boot_delay_s)
            except ConfigError as exc:
                return "400 Bad Request", {"error": str(exc)}
            return "200 OK", device_to_json(device, fleet.zone_of(host))
        if action == "hang":
            device.hang("control_api")
            return "200 OK", device_to_json(device, fleet.zone_of(host))
        return "404 Not Found", {"error": f"unknown action {action!r}"}
    return "404 Not Found", {"error": f"no such endpoint {url.path!r}"}


async def _handle(stream: SocketStream, fleet: Fleet) -> None:
    async with stream:
        head = await _read_head(stream)
        status: str
        payload: object
        if head is None:
            status, payload = "400 Bad Request", {"error": "request head missing, too large or too slow"}
        else:
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(request_line) != 3:
                status, payload = "400 Bad Request", {"error": "malformed request line"}
            else:
                method, target, _version = request_line
                status, payload = await _route(fleet, method.upper(), target)
        log.debug("emulator.control_request", status=status)
        # If the client already left there is nothing to tell it.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await stream.send(_response(status, payload))


async def serve_control(listener: Listener[SocketStream], fleet: Fleet) -> None:
    """Serve the control API on ``listener`` until cancelled."""

    async def handler(stream: SocketStream) -> None:
        await _handle(stream, fleet)

    await listener.serve(handler)


# --- client --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as the control API describes it."""

    host: str
    model: str
    zone: str | None
    seed: int
    state: DeviceState
    threshold: int | None
    ports: Mapping[int, int]
    web_port: int | None
    stats: DeviceStats

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceInfo:
        """Parse one ``<device>`` object.

        Raises:
            ProbeError: the object does not have the documented shape.
        """
        try:
            raw_stats = data["stats"]
            stats = DeviceStats(
                sessions_now=int(raw_stats["sessions_now"]),
                peak_sessions=int(raw_stats["peak_sessions"]),
                sessions_served=int(raw_stats["sessions_served"]),
                connects_total=int(raw_stats["connects_total"]),
                crashes=int(raw_stats["crashes"]),
                attempts_while_hung=int(raw_stats["attempts_while_hung"]),
                power_cycles=int(raw_stats["power_cycles"]),
                bytes_received_by_port=types.MappingProxyType(
                    {int(p): int(n) for p, n in raw_stats["bytes_received_by_port"].items()}
                ),
            )
            return cls(
                host=str(data["host"]),
                model=str(data["model"]),
                zone=None if data.get("zone") is None else str(data["zone"]),
                seed=int(data["seed"]),
                state=DeviceState(data["state"]),
                threshold=None if data["threshold"] is None else int(data["threshold"]),
                ports=types.MappingProxyType({int(p): int(b) for p, b in data["ports"].items()}),
                web_port=None if data["web_port"] is None else int(data["web_port"]),
                stats=stats,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProbeError(f"fleet control API sent a malformed device record: {exc!r}") from exc


class FleetClient:
    """Async client of a fleet's control API (usable from another process).

    Args:
        url: ``http://127.x.y.z:<port>`` as printed by ``fragileprobe emulate`` or ``Fleet.control_url``.
        timeout_s: Deadline of each call (a power cycle adds its boot delay).

    Raises:
        ConfigError: the URL is not an http URL on a loopback address.
    """

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ConfigError(f"url: {url!r} is not an http://host:port URL")
        self._host = check_loopback_host(parts.hostname, field="url")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"url: {url!r} has an invalid port") from exc
        if port is None:
            raise ConfigError(f"url: {url!r} has no port")
        self._port = port
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s: must be > 0, got {timeout_s!r}")
        self._timeout_s = float(timeout_s)
        self.url = f"http://{self._host}:{self._port}"

    def __repr__(self) -> str:
        return f"FleetClient({self.url!r})"

    async def _request(self, method: str, path: str, *, extra_timeout_s: float = 0.0) -> Any:
        where = f"fleet control API at {self.url}"
        request = f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nConnection: close\r\n"
        if method == "POST":
            request += "Content-Length: 0\r\n"
        data = bytearray()
        try:
            with anyio.fail_after(self._timeout_s + extra_timeout_s):
                async with await anyio.connect_tcp(self._host, self._port) as stream:
                    await stream.send((request + "\r\n").encode("latin-1"))
                    while True:
                        try:
                            data += await stream.receive(65536)
                        except anyio.EndOfStream:
                            break
                        if len(data) > MAX_RESPONSE_BYTES:
                            raise ProbeError(f"{where}: response larger than {MAX_RESPONSE_BYTES} bytes")
        except TimeoutError as exc:
            raise ProbeTimeoutError(f"{where}: {method} {path} timed out") from exc
        except OSError as exc:
            # anyio wraps the per-address failures: "All connection attempts failed" from the real cause.
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            if isinstance(cause, ConnectionRefusedError):
                raise ProbeRefusedError(f"{where}: connection refused") from exc
            if isinstance(cause, ConnectionResetError):
                raise ProbeResetError(f"{where}: connection reset") from exc
            raise ProbeError(f"{where}: {cause.strerror or cause}") from exc
        except anyio.BrokenResourceError as exc:
            raise ProbeResetError(f"{where}: connection reset") from exc
        head, sep, body = bytes(data).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if not sep or len(status_line) < 2 or not status_line[1].isdigit():
            raise ProbeError(f"{where}: malformed HTTP response")
        status = int(status_line[1])
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProbeError(f"{where}: response is not JSON") from exc
        if status == 404:
            raise ConfigError(f"host: {payload.get('error', 'not found')}")
        if status != 200:
            raise FragileProbeError(f"{where}: {status} {payload.get('error', '')}".rstrip())
        return payload

    async def list_devices(self) -> list[DeviceInfo]:
        """Every device of the fleet."""
        payload = await self._request("GET", "/devices")
        return [DeviceInfo.from_json(d) for d in payload["devices"]]

    async def empty_hosts(self) -> list[str]:
        """The fleet's empty addresses."""
        payload = await self._request("GET", "/devices")
        return [str(h) for h in payload["empty"]]

    async def device(self, host: str) -> DeviceInfo:
        """One device (ConfigError naming ``host`` if the fleet has none there)."""
        return DeviceInfo.from_json(await self._request("GET", f"/devices/{urllib.parse.quote(host)}"))

    async def stats(self, host: str) -> DeviceStats:
        """One device's stats."""
        return (await self.device(host)).stats

    async def state(self, host: str) -> DeviceState:
        """One device's state."""
        return (await self.device(host)).state

    async def power_cycle(self, host: str, *, boot_delay_s: float | None = None) -> DeviceInfo:
        """Power-cycle one device; returns once it is up again."""
        path = f"/devices/{urllib.parse.quote(host)}/power-cycle"
        extra = 0.0
        if boot_delay_s is not None:
            path += f"?boot_delay_s={float(boot_delay_s)!r}"
            extra = max(0.0, float(boot_delay_s))
        else:
            # The server's device boot delay is unknown here: allow for a long one.
            extra = DEFAULT_CLIENT_TIMEOUT_S
        return DeviceInfo.from_json(await self._request("POST", path, extra_timeout_s=extra))

    async def hang(self, host: str) -> DeviceInfo:
        """Hang one device now (as if it had crashed)."""
        return DeviceInfo.from_json(await self._request("POST", f"/devices/{urllib.parse.quote(host)}/hang"))
