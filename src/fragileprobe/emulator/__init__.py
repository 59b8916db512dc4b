"""Emulated fragile devices for testing fragileprobe (and other tools) on loopback.

``EmulatedPump`` / ``EmulatedDevice`` serve one device model on a 127.x.y.z address; ``Fleet`` runs many of
them in one process with an HTTP control API that ``FleetClient`` drives from another process. The
fragility (sessions -> latency, crash threshold with seeded jitter) is a pure model in ``FragilitySpec``.
See docs/emulator.md. Importing this package loads nothing else: each name is imported on first use from
the one table :data:`_PUBLIC` (public name -> private module), and never scapy.

The emulator is test support: the library never imports it (``tests/test_layers.py``); only the programs
built on it (``cli``, ``_demo``) and tests do. Its control API (:class:`ControlServer`, driven by
:class:`FleetClient`) is started by whoever wants it, beside a :class:`Fleet` of devices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fragileprobe import _public

# public name -> the private module that defines it (loaded on first use)
_PUBLIC: dict[str, str] = {
    "DEFAULT_BOOT_DELAY_S": "_device",
    "MAX_HELD_CONNECTIONS": "_device",
    "UNPRIVILEGED_PORT_OFFSET": "_device",
    "DeviceStats": "_device",
    "EmulatedDevice": "_device",
    "EmulatedPump": "_device",
    "DeviceConfig": "_fleet",
    "DeviceTruth": "_fleet",
    "Fleet": "_fleet",
    "FleetConfig": "_fleet",
    "hospital_fleet": "_fleet",
    "hostile_fleet": "_fleet",
    "uniform_fleet": "_fleet",
    "ControlServer": "_control",
    "DeviceInfo": "_control",
    "EmulatorProcess": "_process",
    "FleetClient": "_control",
    "fleet_recovery": "_recovery",
    "DeviceState": "_fragility",
    "FragilitySpec": "_fragility",
    "draw_threshold": "_fragility",
    "threshold_bounds": "_fragility",
    "MODELS": "_models",
    "SERVICE_KINDS": "_models",
    "DeviceModel": "_models",
    "ServiceSpec": "_models",
    "get_model": "_models",
}

__all__ = [*_PUBLIC]


def __getattr__(name: str) -> object:
    value = _public.load(__name__, _PUBLIC, name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - the public names, for type checkers and IDEs
    from fragileprobe.emulator._control import ControlServer as ControlServer
    from fragileprobe.emulator._control import DeviceInfo as DeviceInfo
    from fragileprobe.emulator._control import FleetClient as FleetClient
    from fragileprobe.emulator._device import DEFAULT_BOOT_DELAY_S as DEFAULT_BOOT_DELAY_S
    from fragileprobe.emulator._device import MAX_HELD_CONNECTIONS as MAX_HELD_CONNECTIONS
    from fragileprobe.emulator._device import UNPRIVILEGED_PORT_OFFSET as UNPRIVILEGED_PORT_OFFSET
    from fragileprobe.emulator._device import DeviceStats as DeviceStats
    from fragileprobe.emulator._device import EmulatedDevice as EmulatedDevice
    from fragileprobe.emulator._device import EmulatedPump as EmulatedPump
    from fragileprobe.emulator._fleet import DeviceConfig as DeviceConfig
    from fragileprobe.emulator._fleet import DeviceTruth as DeviceTruth
    from fragileprobe.emulator._fleet import Fleet as Fleet
    from fragileprobe.emulator._fleet import FleetConfig as FleetConfig
    from fragileprobe.emulator._fleet import hospital_fleet as hospital_fleet
    from fragileprobe.emulator._fleet import hostile_fleet as hostile_fleet
    from fragileprobe.emulator._fleet import uniform_fleet as uniform_fleet
    from fragileprobe.emulator._fragility import DeviceState as DeviceState
    from fragileprobe.emulator._fragility import FragilitySpec as FragilitySpec
    from fragileprobe.emulator._fragility import draw_threshold as draw_threshold
    from fragileprobe.emulator._fragility import threshold_bounds as threshold_bounds
    from fragileprobe.emulator._models import MODELS as MODELS
    from fragileprobe.emulator._models import SERVICE_KINDS as SERVICE_KINDS
    from fragileprobe.emulator._models import DeviceModel as DeviceModel
    from fragileprobe.emulator._models import ServiceSpec as ServiceSpec
    from fragileprobe.emulator._models import get_model as get_model
    from fragileprobe.emulator._process import EmulatorProcess as EmulatorProcess
    from fragileprobe.emulator._recovery import fleet_recovery as fleet_recovery
