"""The recovery hook for an emulated fleet: power-cycle one of its devices through the control API.

It lives with the emulator, not in :mod:`fragileprobe._recovery`, because the library never imports the
emulator (``tests/test_layers.py``); ``fragileprobe.fleet_recovery`` names this same function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from fragileprobe import _validate
from fragileprobe.emulator._control import FleetClient

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fragileprobe._recovery import RecoveryContext

__all__ = ["fleet_recovery"]

log = structlog.get_logger(__name__)


def fleet_recovery(control_url: str, host: str | None = None) -> Callable[[RecoveryContext], Awaitable[None]]:
    """A hook that power-cycles a device of an emulated fleet through the fleet's control API.

    Args:
        control_url: The fleet's control URL (loopback).
        host: The device to cycle; default: the host being characterized.
    """
    if not isinstance(control_url, str) or not control_url:
        raise _validate.fail("control_url", "a URL string", control_url)
    FleetClient(control_url)  # checks the URL now (http, loopback host, port range), not at the first crash

    async def hook(ctx: RecoveryContext) -> None:
        client = FleetClient(control_url)
        log.info("recovery.fleet_power_cycle", host=host or ctx.host, control_url=control_url)
        await client.power_cycle(host or ctx.host)

    return hook
