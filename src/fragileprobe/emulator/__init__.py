"""Emulated fragile devices for testing fragileprobe (and other tools) on loopback.

``EmulatedPump`` / ``EmulatedDevice`` serve one device model on a 127.x.y.z address; ``Fleet`` runs many of
them in one process with an HTTP control API that ``FleetClient`` drives from another process. The
fragility (sessions -> latency, crash threshold with seeded jitter) is a pure model in ``FragilitySpec``.
See docs/emulator.md. Importing this package loads anyio and structlog only (never scapy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> private module (loaded on first use, so `import fragileprobe.emulator` stays light)
_LAZY: dict[str, str] = {
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
    "DeviceInfo": "_control",
    "EmulatorProcess": "_process",
    "FleetClient": "_control",
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

__all__ = [
    "DEFAULT_BOOT_DELAY_S",
    "MAX_HELD_CONNECTIONS",
    "MODELS",
    "SERVICE_KINDS",
    "UNPRIVILEGED_PORT_OFFSET",
    "DeviceConfig",
    "DeviceInfo",
    "DeviceModel",
    "DeviceState",
    "DeviceStats",
    "DeviceTruth",
    "EmulatedDevice",
    "EmulatedPump",
    "EmulatorProcess",
    "Fleet",
    "FleetClient",
    "FleetConfig",
    "FragilitySpec",
    "ServiceSpec",
    "draw_threshold",
    "get_model",
    "hospital_fleet",
    "hostile_fleet",
    "threshold_bounds",
    "uniform_fleet",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fragileprobe.emulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fragileprobe.emulator.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from fragileprobe.emulator._control import DeviceInfo, FleetClient
    from fragileprobe.emulator._device import (
        DEFAULT_BOOT_DELAY_S,
        MAX_HELD_CONNECTIONS,
        UNPRIVILEGED_PORT_OFFSET,
        DeviceStats,
        EmulatedDevice,
        EmulatedPump,
    )
    from fragileprobe.emulator._fleet import (
        DeviceConfig,
        DeviceTruth,
        Fleet,
        FleetConfig,
        hospital_fleet,
        hostile_fleet,
        uniform_fleet,
    )
    from fragileprobe.emulator._fragility import DeviceState, FragilitySpec, draw_threshold, threshold_bounds
    from fragileprobe.emulator._models import MODELS, SERVICE_KINDS, DeviceModel, ServiceSpec, get_model
    from fragileprobe.emulator._process import EmulatorProcess
