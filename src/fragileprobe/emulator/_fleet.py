"""Many emulated devices in one process, described by a small config.

The fleet is the devices. Its HTTP control API is :class:`~fragileprobe.emulator.ControlServer`, started
beside it by whoever wants one; ``Fleet(config)`` still starts one by default (``control_port=0``), the
shorthand the CLI and older tests rely on (``control_port=None``: the devices only).

Config format (a mapping, or the same as a TOML file)::

    boot_delay_s = 0.2          # optional, default for every device
    port_offset = 10000         # optional, default for every device (else: 0 as root, 10000 otherwise)
    empty = ["127.77.0.9"]      # optional: addresses that are part of the fleet but where nothing listens

    [[device]]
    host = "127.77.0.1"         # required, in 127.0.0.0/8
    model = "infusion-pump"     # required, a catalogue name
    seed = 1                    # optional
    zone = "medical"            # optional ground-truth label (tests compare discovery results with it)
    threshold = 7               # optional overrides: threshold, jitter, boot_delay_s, port_offset,
                                #   base_latency_s, slowdown_s_per_session

:func:`hospital_fleet` builds the standard 254-address test fleet with its ground truth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import random
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import structlog

from fragileprobe._errors import ConfigError
from fragileprobe._files import read_bounded_text
from fragileprobe.emulator._control import ControlServer
from fragileprobe.emulator._device import EmulatedDevice, check_loopback_host
from fragileprobe.emulator._models import MODELS, get_model

if TYPE_CHECKING:
    import os

__all__ = [
    "DeviceConfig",
    "DeviceTruth",
    "Fleet",
    "FleetConfig",
    "hospital_fleet",
    "hostile_fleet",
    "uniform_fleet",
]

log = structlog.get_logger(__name__)

# Largest fleet config accepted: a /16 worth of addresses. Beyond that one process runs out of file
# descriptors long before anything useful happens.
MAX_FLEET_ADDRESSES = 65536
# Largest fleet config file read (a 254-device file is about 20 KiB).
MAX_CONFIG_FILE_BYTES = 4 * 1024 * 1024

_DEVICE_KEYS = frozenset(
    {
        "host",
        "model",
        "seed",
        "zone",
        "threshold",
        "jitter",
        "boot_delay_s",
        "port_offset",
        "base_latency_s",
        "slowdown_s_per_session",
    }
)
_FLEET_KEYS = frozenset({"device", "empty", "boot_delay_s", "port_offset", "zones", "syn_watch"})


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    """One device of a fleet (keyword-only; validated). ``None`` fields use the model or fleet default."""

    host: str
    model: str
    seed: int | None = None
    zone: str | None = None
    threshold: int | None = None
    jitter: int | None = None
    boot_delay_s: float | None = None
    port_offset: int | None = None
    base_latency_s: float | None = None
    slowdown_s_per_session: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", check_loopback_host(self.host))
        get_model(self.model)  # ConfigError naming "model" if unknown
        if self.zone is not None and not isinstance(self.zone, str):
            raise ConfigError(f"zone: must be a string, got {self.zone!r}")


@dataclass(frozen=True, slots=True)
class DeviceTruth:
    """Ground truth about one fleet address, for tests that check discovery results."""

    host: str
    model: str | None  # None for an empty address
    zone: str | None
    category: str | None  # "medical", "workstation", "printer", "server"
    os_family: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    """A fleet: devices, empty addresses and zone ranges (keyword-only; validated)."""

    devices: tuple[DeviceConfig, ...]
    empty: tuple[str, ...] = ()
    boot_delay_s: float | None = None
    port_offset: int | None = None
    #: Zone name -> CIDR ranges (ground truth for discovery tests).
    zones: Mapping[str, tuple[str, ...] | str] = field(default_factory=dict)
    #: Run SYN-scan watchers for syn-sensitive devices. Off by default in a fleet: each watcher is a
    #: sniffer thread, and dozens of them in one process drop packets under load and then mistake full
    #: connects for half-open probes.
    syn_watch: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.syn_watch, bool):
            raise ConfigError(f"syn_watch: must be true or false, got {self.syn_watch!r}")
        object.__setattr__(self, "devices", tuple(self.devices))
        empty = tuple(check_loopback_host(h, field="empty") for h in self.empty)
        object.__setattr__(self, "empty", empty)
        if len(self.devices) + len(empty) > MAX_FLEET_ADDRESSES:
            raise ConfigError(f"device: a fleet holds at most {MAX_FLEET_ADDRESSES} addresses")
        seen: set[str] = set()
        for host in [d.host for d in self.devices] + list(empty):
            if host in seen:
                raise ConfigError(f"host: {host} appears more than once in the fleet config")
            seen.add(host)
        zones: dict[str, tuple[str, ...]] = {}
        for name, ranges in dict(self.zones).items():
            ranges_t = (ranges,) if isinstance(ranges, str) else tuple(ranges)
            for cidr in ranges_t:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError as exc:
                    raise ConfigError(f"zones: {name}: {cidr!r} is not a network") from exc
            zones[str(name)] = ranges_t
        object.__setattr__(self, "zones", types.MappingProxyType(zones))

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every address of the fleet, devices and empty ones, in address order."""
        return tuple(sorted([d.host for d in self.devices] + list(self.empty), key=ipaddress.IPv4Address))

    @property
    def ground_truth(self) -> Mapping[str, DeviceTruth]:
        """Host -> what really is there (model, zone, category, OS family), empty addresses included."""
        truth: dict[str, DeviceTruth] = {}
        for d in self.devices:
            model = MODELS[d.model]
            truth[d.host] = DeviceTruth(
                d.host, d.model, d.zone or self._zone_of(d.host), model.category, model.os_family
            )
        for host in self.empty:
            truth[host] = DeviceTruth(host, None, self._zone_of(host), None, None)
        return types.MappingProxyType(
            dict(sorted(truth.items(), key=lambda kv: ipaddress.IPv4Address(kv[0])))
        )

    def _zone_of(self, host: str) -> str | None:
        address = ipaddress.IPv4Address(host)
        for name, ranges in self.zones.items():
            if any(address in ipaddress.ip_network(cidr, strict=False) for cidr in ranges):
                return name
        return None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FleetConfig:
        """Build a config from a mapping shaped like the TOML format (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"fleet config: must be a mapping, got {type(data).__name__}")
        unknown = set(data) - _FLEET_KEYS
        if unknown:
            raise ConfigError(
                f"fleet config: unknown key(s) {sorted(unknown)} (known: {sorted(_FLEET_KEYS)})"
            )
        raw_devices = data.get("device", [])
        if not isinstance(raw_devices, list):
            raise ConfigError("device: must be a list of tables ([[device]] in TOML)")
        devices = []
        for index, entry in enumerate(raw_devices):
            if not isinstance(entry, Mapping):
                raise ConfigError(f"device[{index}]: must be a table")
            unknown = set(entry) - _DEVICE_KEYS
            if unknown:
                raise ConfigError(f"device[{index}]: unknown key(s) {sorted(unknown)}")
            for required in ("host", "model"):
                if required not in entry:
                    raise ConfigError(f"device[{index}]: missing {required!r}")
            devices.append(DeviceConfig(**dict(entry)))
        empty = data.get("empty", [])
        if not isinstance(empty, list):
            raise ConfigError("empty: must be a list of addresses")
        return cls(
            devices=tuple(devices),
            empty=tuple(empty),
            boot_delay_s=data.get("boot_delay_s"),
            port_offset=data.get("port_offset"),
            zones=data.get("zones", {}),
            syn_watch=data.get("syn_watch", False),
        )

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> FleetConfig:
        """Read a TOML fleet config file."""
        file = Path(path)
        text = read_bounded_text(file, max_bytes=MAX_CONFIG_FILE_BYTES, label=f"fleet config {file}")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"fleet config: {file} is not valid TOML: {exc}") from exc
        try:
            return cls.from_mapping(data)
        except ConfigError as exc:  # name the file: the message alone does not say which config was wrong
            raise ConfigError(f"{file}: {exc}") from exc

    def to_toml(self) -> str:
        """Render the config in the TOML format :meth:`from_toml` reads."""
        lines = []
        if self.boot_delay_s is not None:
            lines.append(f"boot_delay_s = {self.boot_delay_s!r}")
        if self.port_offset is not None:
            lines.append(f"port_offset = {self.port_offset}")
        if self.syn_watch:
            lines.append("syn_watch = true")
        lines.append("empty = [" + ", ".join(f'"{h}"' for h in self.empty) + "]")
        if self.zones:
            lines.append("")
            lines.append("[zones]")
            for name, ranges in self.zones.items():
                lines.append(f'"{name}" = [' + ", ".join(f'"{r}"' for r in ranges) + "]")
        for d in self.devices:
            lines += ["", "[[device]]"]
            for f in dataclasses.fields(d):
                value = getattr(d, f.name)
                if value is None:
                    continue
                lines.append(f'{f.name} = "{value}"' if isinstance(value, str) else f"{f.name} = {value!r}")
        return "\n".join(lines) + "\n"


def _coerce_config(config: FleetConfig | Mapping[str, Any] | str | os.PathLike[str]) -> FleetConfig:
    if isinstance(config, FleetConfig):
        return config
    if isinstance(config, Mapping):
        return FleetConfig.from_mapping(config)
    return FleetConfig.from_toml(config)


def _check_prefix(prefix: str) -> str:
    parts = prefix.split(".")
    if len(parts) != 3:
        raise ConfigError(f"prefix: {prefix!r} must be three octets, like '127.77.0'")
    check_loopback_host(f"{prefix}.1", field="prefix")
    return prefix


def uniform_fleet(
    prefix: str = "127.78.0",
    *,
    count: int = 254,
    model: str = "infusion-pump",
    seed: int = 0,
    boot_delay_s: float | None = None,
) -> FleetConfig:
    """A fleet of ``count`` identical devices at ``prefix.1`` ... ``prefix.<count>`` (the scale benchmark)."""
    _check_prefix(prefix)
    if not 1 <= count <= 254:
        raise ConfigError(f"count: must be 1-254, got {count!r}")
    get_model(model)
    devices = tuple(
        DeviceConfig(host=f"{prefix}.{i}", model=model, seed=seed + i) for i in range(1, count + 1)
    )
    return FleetConfig(devices=devices, boot_delay_s=boot_delay_s)


# The standard hospital fleet: what sits in each half of the /24. The medical half is a clinical VLAN, the
# general half an office VLAN into which a few pumps were plugged by mistake ("wrong network drop").
_MEDICAL_MIX = (
    ("infusion-pump", 30),
    ("syringe-pump", 14),
    ("patient-monitor", 10),
    ("slow-pump", 4),
    ("workstation", 6),
    ("printer", 2),
)
_GENERAL_MIX = (
    ("infusion-pump", 3),
    ("syringe-pump", 1),
    ("workstation", 40),
    ("printer", 12),
    ("linux-server", 4),
)


def hospital_fleet(
    prefix: str = "127.77.0",
    *,
    seed: int = 0,
    boot_delay_s: float | None = None,
    port_offset: int | None = None,
) -> FleetConfig:
    """The standard 254-address test fleet, with ground truth (:attr:`FleetConfig.ground_truth`).

    Zone "medical" is ``prefix.0/25`` (devices on .1-.126, .127 empty), zone "general" is
    ``prefix.128/25`` (.128-.254). The medical half holds 30 infusion pumps, 14 syringe pumps, 10 patient
    monitors, 4 slow pumps, 6 workstations and 2 printers; the general half 3 infusion pumps and 1 syringe
    pump (misplaced medical devices), 40 workstations, 12 printers and 4 Linux servers. Every other
    address is empty. Which address holds what is shuffled by ``seed`` (same seed, same fleet).
    """
    _check_prefix(prefix)
    rng = random.Random(seed)
    devices: list[DeviceConfig] = []
    empty: list[str] = []
    halves = (("medical", range(1, 128), _MEDICAL_MIX), ("general", range(128, 255), _GENERAL_MIX))
    for zone, octets, mix in halves:
        slots = [f"{prefix}.{i}" for i in octets]
        rng.shuffle(slots)
        for model, count in mix:
            for _ in range(count):
                host = slots.pop()
                devices.append(DeviceConfig(host=host, model=model, seed=rng.randrange(2**32), zone=zone))
        empty.extend(slots)
    devices.sort(key=lambda d: ipaddress.IPv4Address(d.host))
    empty.sort(key=ipaddress.IPv4Address)
    return FleetConfig(
        devices=tuple(devices),
        empty=tuple(empty),
        boot_delay_s=boot_delay_s,
        port_offset=port_offset,
        zones={"medical": (f"{prefix}.0/25",), "general": (f"{prefix}.128/25",)},
    )


def hostile_fleet(
    prefix: str = "127.76.0",
    *,
    seed: int = 0,
    boot_delay_s: float | None = 0.5,
    port_offset: int | None = None,
) -> FleetConfig:
    """A fleet full of hostile devices, for "discovery over a fleet full of them finishes" tests.

    ``prefix.1`` - ``prefix.80``: 12 of each hostile model (tarpit, resetter, firmware, flapper) and, mixed
    among them, 8 story pumps, 4 patient monitors and 4 printers; the other 16 addresses are empty. One
    zone, "hostile" = ``prefix.0/25``. Placement is shuffled by ``seed``.
    """
    _check_prefix(prefix)
    rng = random.Random(seed)
    slots = [f"{prefix}.{i}" for i in range(1, 81)]
    rng.shuffle(slots)
    mix = (
        ("hostile-tarpit", 12),
        ("hostile-resetter", 12),
        ("hostile-firmware", 12),
        ("hostile-flapper", 12),
        ("infusion-pump", 8),
        ("patient-monitor", 4),
        ("printer", 4),
    )
    devices = []
    for model, count in mix:
        for _ in range(count):
            devices.append(
                DeviceConfig(host=slots.pop(), model=model, seed=rng.randrange(2**32), zone="hostile")
            )
    devices.sort(key=lambda d: ipaddress.IPv4Address(d.host))
    return FleetConfig(
        devices=tuple(devices),
        empty=tuple(sorted(slots, key=ipaddress.IPv4Address)),
        boot_delay_s=boot_delay_s,
        port_offset=port_offset,
        zones={"hostile": (f"{prefix}.0/25",)},
    )


class Fleet:
    """Many emulated devices in one process (and, unless ``control_port=None``, their control API).

    Args:
        config: A :class:`FleetConfig`, a mapping in the config format, or a TOML file path.
        control_port: Port of a :class:`~fragileprobe.emulator.ControlServer` started with the devices
            (0 = any free port; ``None`` = none: start one yourself if you want it).
        control_host: Loopback address of that control API.

    Raises:
        ConfigError: a bad config, ``control_port`` or ``control_host``.

    Use as an async context manager; every device serves from ``__aenter__`` until ``__aexit__``.
    """

    def __init__(
        self,
        config: FleetConfig | Mapping[str, Any] | str | os.PathLike[str],
        *,
        control_port: int | None = 0,
        control_host: str = "127.0.0.1",
    ) -> None:
        self.config = _coerce_config(config)
        self._control = (
            None if control_port is None else ControlServer(self, port=control_port, host=control_host)
        )
        devices: dict[str, EmulatedDevice] = {}
        for d in self.config.devices:
            devices[d.host] = EmulatedDevice(
                d.host,
                model=d.model,
                seed=d.seed,
                threshold=d.threshold,
                jitter=d.jitter,
                port_offset=d.port_offset if d.port_offset is not None else self.config.port_offset,
                boot_delay_s=d.boot_delay_s if d.boot_delay_s is not None else self.config.boot_delay_s,
                base_latency_s=d.base_latency_s,
                slowdown_s_per_session=d.slowdown_s_per_session,
                syn_watch=self.config.syn_watch,
            )
        self._devices = devices
        self._zones = {d.host: d.zone for d in self.config.devices}
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def devices(self) -> Mapping[str, EmulatedDevice]:
        """Host -> device."""
        return types.MappingProxyType(self._devices)

    @property
    def empty(self) -> tuple[str, ...]:
        """Addresses of the fleet where nothing listens."""
        return self.config.empty

    @property
    def ground_truth(self) -> Mapping[str, DeviceTruth]:
        """See :attr:`FleetConfig.ground_truth`."""
        return self.config.ground_truth

    def zone_of(self, host: str) -> str | None:
        """The configured zone label of a device."""
        return self._zones.get(host)

    def device(self, host: str) -> EmulatedDevice:
        """Return the device at ``host``.

        Raises:
            ConfigError: no device of this fleet is at ``host``.
        """
        try:
            return self._devices[host]
        except KeyError:
            raise ConfigError(f"host: no device at {host!r} in this fleet") from None

    @property
    def control_url(self) -> str:
        """Base URL of the control API started with the fleet (``http://127.0.0.1:<port>``).

        Raises:
            RuntimeError: no control API is running (the fleet is not open, or ``control_port=None``).
        """
        if self._control is None:
            raise RuntimeError("the fleet's control API is not running")
        return self._control.url

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        started = False
        try:
            for device in self._devices.values():
                await stack.enter_async_context(device)
            if self._control is not None:
                await stack.enter_async_context(self._control)
            started = True
        finally:
            if not started:
                # A device could not bind (or we were cancelled): stop what started; the error propagates.
                await stack.__aexit__(None, None, None)
        self._stack = stack
        log.info("emulator.fleet_up", devices=len(self._devices), empty=len(self.config.empty))
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        stack = self._stack
        assert stack is not None
        self._stack = None
        return await stack.__aexit__(*exc_info)  # type: ignore[arg-type]
