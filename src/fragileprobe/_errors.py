"""The one exception hierarchy of fragileprobe.

Everything fragileprobe raises on purpose derives from :class:`FragileProbeError`, so a caller can catch
the whole family with one clause. Lower-layer errors (``OSError``, anyio's stream errors, ``sqlite3``)
are translated at exactly one boundary each and chained with ``raise ... from exc``.

::

    FragileProbeError
     +-- ConfigError (ValueError)          bad configuration or input spec
     |    +-- ScopeError                   a target outside the authorized scope
     +-- ProbeError                        a probe could not complete
     |    +-- ProbeTimeoutError (TimeoutError)
     |    +-- ProbeRefusedError (ConnectionRefusedError)
     |    +-- ProbeResetError (ConnectionResetError)
     +-- DeviceDownError                   the watchdog declared the device down
     +-- RecoveryError                     a recovery hook failed or timed out
     +-- StoreError                        the profile store is corrupt, locked or too new
     +-- RawUnavailableError               raw packets need scapy and root
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "DeviceDownError",
    "FragileProbeError",
    "ProbeError",
    "ProbeRefusedError",
    "ProbeResetError",
    "ProbeTimeoutError",
    "RawUnavailableError",
    "RecoveryError",
    "ScopeError",
    "StoreError",
]


class FragileProbeError(Exception):
    """Raised for every error fragileprobe reports on purpose (the root of the hierarchy)."""


class ConfigError(FragileProbeError, ValueError):
    """Raised when a configuration value or an input spec is invalid; the message names the field.

    Attributes:
        field: The setting at fault (``"dwell_s"``, ``"ports"``), when one setting is; ``None`` for input
            that is wrong as a whole (a file that is not TOML). The CLI maps it to its option.
    """

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ScopeError(ConfigError):
    """Raised when a target lies outside the authorized scope; nothing has been sent to it."""


class ProbeError(FragileProbeError):
    """Raised when a probe cannot complete (the network, not the caller, is at fault)."""


class ProbeTimeoutError(ProbeError, TimeoutError):
    """Raised when a connect or read did not finish within its time bound."""


class ProbeRefusedError(ProbeError, ConnectionRefusedError):
    """Raised when the peer refused the connection (RST in answer to our SYN)."""


class ProbeResetError(ProbeError, ConnectionResetError):
    """Raised when an established connection was reset by the peer."""


class DeviceDownError(FragileProbeError):
    """Raised when work is refused or cancelled because the watchdog declared the device down."""


class RecoveryError(FragileProbeError):
    """Raised when a recovery hook (power cycle, wait, command) failed or timed out.

    Attributes:
        partial: When raised by ``characterize()``, the ``Characterization`` holding every observation made
            before the recovery failed (it is also in the store, if one was given); otherwise ``None``.
    """

    partial: Any = None


class StoreError(FragileProbeError):
    """Raised when the profile store cannot be opened or written (corrupt, locked, newer schema)."""


class RawUnavailableError(FragileProbeError):
    """Raised when a raw-packet feature is used without scapy installed or without root."""
