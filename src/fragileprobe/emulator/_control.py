"""The fleet's control API: a tiny HTTP/1.1 JSON server on 127.0.0.1, and its client.

:class:`ControlServer` serves it for a fleet while its context is open; it is started by whoever wants it
(``fragileprobe emulate``, a test), beside the :class:`~fragileprobe.emulator.Fleet` of devices, which knows
nothing of it. :class:`FleetClient` drives it, from this process or another one.

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
from typing import TYPE_CHECKING, Any, Protocol, Self

import anyio
import anyio.abc
import structlog

from fragileprobe import _validate
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

__all__ = ["ControlServer", "DeviceInfo", "FleetClient", "device_to_json", "serve_control"]

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


class Controlled(Protocol):
    """What the control API needs of a fleet (a :class:`~fragileprobe.emulator.Fleet` is one)."""

    @property
    def devices(self) -> Mapping[str, EmulatedDevice]: ...

    @property
    def empty(self) -> tuple[str, ...]: ...

    def zone_of(self, host: str) -> str | None: ...


_Answer = tuple[str, object]


def _not_allowed(what: str) -> _Answer:
    return "405 Method Not Allowed", {"error": what}


async def _power_cycle(fleet: Controlled, host: str, query: Mapping[str, list[str]]) -> _Answer:
    device = fleet.devices[host]
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


async def _act(
    fleet: Controlled, method: str, host: str, action: str, query: Mapping[str, list[str]]
) -> _Answer:
    """``POST /devices/<host>/<action>``."""
    if method != "POST":
        return _not_allowed(f"{action} needs POST")
    if action == "power-cycle":
        return await _power_cycle(fleet, host, query)
    if action == "hang":
        fleet.devices[host].hang("control_api")
        return "200 OK", device_to_json(fleet.devices[host], fleet.zone_of(host))
    return "404 Not Found", {"error": f"unknown action {action!r}"}


def _listing(fleet: Controlled, method: str) -> _Answer:
    """``GET /devices``."""
    if method != "GET":
        return _not_allowed(f"{method} not allowed on /devices")
    devices = [device_to_json(d, fleet.zone_of(h)) for h, d in fleet.devices.items()]
    return "200 OK", {"devices": devices, "empty": list(fleet.empty)}


async def _route(fleet: Controlled, method: str, target: str) -> _Answer:
    url = urllib.parse.urlsplit(target)
    parts = [p for p in url.path.split("/") if p]
    if parts == ["devices"]:
        return _listing(fleet, method)
    if len(parts) not in (2, 3) or parts[0] != "devices":
        return "404 Not Found", {"error": f"no such endpoint {url.path!r}"}
    host = parts[1]
    device = fleet.devices.get(host)
    if device is None:
        return "404 Not Found", {"error": f"no device at {host!r} in this fleet"}
    if len(parts) == 3:
        return await _act(fleet, method, host, parts[2], urllib.parse.parse_qs(url.query))
    if method != "GET":
        return _not_allowed(f"{method} not allowed on /devices/<host>")
    return "200 OK", device_to_json(device, fleet.zone_of(host))


async def _handle(stream: SocketStream, fleet: Controlled) -> None:
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


async def serve_control(listener: Listener[SocketStream], fleet: Controlled) -> None:
    """Serve the control API on ``listener`` until cancelled."""

    async def handler(stream: SocketStream) -> None:
        await _handle(stream, fleet)

    await listener.serve(handler)


class ControlServer:
    """The control API of ``fleet``, served on a loopback address while the context is open.

    Args:
        fleet: What to control: a :class:`~fragileprobe.emulator.Fleet` (or anything with its ``devices``,
            ``empty`` and ``zone_of``).
        port: TCP port (0 = any free port).
        host: Loopback address to listen on.

    Raises:
        ConfigError: ``port`` is not 0-65535, or ``host`` is not a loopback address.

    ::

        async with Fleet(config, control_port=None) as fleet, ControlServer(fleet) as control:
            client = FleetClient(control.url)
    """

    def __init__(self, fleet: Controlled, *, port: int = 0, host: str = "127.0.0.1") -> None:
        self._fleet = fleet
        self._port = _validate.count("control_port", port, maximum=65535)
        self._host = check_loopback_host(host, field="control_host")
        self._url: str | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"ControlServer(url={self._url!r})"

    @property
    def url(self) -> str:
        """Base URL of the running API (``http://127.0.0.1:<port>``).

        Raises:
            RuntimeError: the server is not running.
        """
        if self._url is None:
            raise RuntimeError("the fleet's control API is not running")
        return self._url

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        stack = contextlib.AsyncExitStack()
        # Exit order (LIFO): cancel the server, wait for it, then close its listener.
        stack.push_async_callback(listener.aclose)
        started = False
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(serve_control, listener, self._fleet)
            started = True
        finally:
            if not started:
                await stack.aclose()
        self._stack = stack
        self._url = f"http://{self._host}:{port}"
        log.info("emulator.fleet_control", url=self._url)
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        stack = self._stack
        assert stack is not None
        self._stack = None
        self._url = None
        return await stack.__aexit__(*exc_info)  # type: ignore[arg-type]


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


def _translate_os_error(exc: OSError, where: str) -> ProbeError:
    """The probe error for a failed connect or exchange with the control API."""
    # anyio wraps the per-address failures: "All connection attempts failed" from the real cause.
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return ProbeRefusedError(f"{where}: connection refused")
    if isinstance(cause, ConnectionResetError):
        return ProbeResetError(f"{where}: connection reset")
    return ProbeError(f"{where}: {cause.strerror or cause}")


def _payload(data: bytes, where: str) -> Any:
    """The JSON payload of a control API response; a 404 is the caller's ``ConfigError``.

    Raises:
        ProbeError: the response is not HTTP or not JSON.
        ConfigError: 404 (no such device).
        FragileProbeError: any other status than 200.
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise ProbeError(f"{where}: malformed HTTP response")
    status = int(status_line[1])
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProbeError(f"{where}: response is not JSON") from exc
    if status == 404:
        raise ConfigError(f"host: {payload.get('error', 'not found')}", field="host")
    if status != 200:
        raise FragileProbeError(f"{where}: {status} {payload.get('error', '')}".rstrip())
    return payload


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
        self._timeout_s = _validate.positive("timeout_s", timeout_s)
        self.url = f"http://{self._host}:{self._port}"

    def __repr__(self) -> str:
        return f"FleetClient({self.url!r})"

    async def _exchange(self, request: bytes, timeout_s: float, where: str) -> bytes:
        """Send ``request`` and read the whole response (the server closes), bounded in bytes and time."""
        data = bytearray()
        with anyio.fail_after(timeout_s):
            async with await anyio.connect_tcp(self._host, self._port) as stream:
                await stream.send(request)
                while True:
                    try:
                        data += await stream.receive(65536)
                    except anyio.EndOfStream:
                        return bytes(data)
                    if len(data) > MAX_RESPONSE_BYTES:
                        raise ProbeError(f"{where}: response larger than {MAX_RESPONSE_BYTES} bytes")

    async def _request(self, method: str, path: str, *, extra_timeout_s: float = 0.0) -> Any:
        where = f"fleet control API at {self.url}"
        request = f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nConnection: close\r\n"
        if method == "POST":
            request += "Content-Length: 0\r\n"
        try:
            timeout_s = self._timeout_s + extra_timeout_s
            data = await self._exchange((request + "\r\n").encode("latin-1"), timeout_s, where)
        except TimeoutError as exc:
            raise ProbeTimeoutError(f"{where}: {method} {path} timed out") from exc
        except OSError as exc:
            raise _translate_os_error(exc, where) from exc
        except anyio.BrokenResourceError as exc:
            raise ProbeResetError(f"{where}: connection reset") from exc
        return _payload(data, where)

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
