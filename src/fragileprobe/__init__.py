"""fragileprobe: look at fragile network devices without knocking them over.

The public API is what this module lists in ``__all__``. Names load lazily on first use, so
``import fragileprobe`` stays cheap (no anyio, no sqlite3, and never scapy, pandas or matplotlib until a
feature that needs them is used).
"""

from __future__ import annotations

import importlib
from typing import Any

from fragileprobe._errors import (
    ConfigError,
    DeviceDownError,
    FragileProbeError,
    ProbeError,
    ProbeRefusedError,
    ProbeResetError,
    ProbeTimeoutError,
    RawUnavailableError,
    RecoveryError,
    ScopeError,
    StoreError,
)

__version__ = "0.1.0"

# public name -> private module that defines it
_LAZY: dict[str, str] = {
    # core (scope, probes, limiter, heartbeats)
    "Beat": "_heartbeat",
    "ConcurrencyLimiter": "_limiter",
    "DownEvent": "_watchdog",
    "Guard": "_guard",
    "GuardStats": "_guard",
    "Heartbeat": "_heartbeat",
    "HttpHeartbeat": "_heartbeat",
    "HttpResult": "_probes",
    "LimiterStatistics": "_limiter",
    "Outcome": "_probes",
    "PORT_SETS": "_scope",
    "ProbeResult": "_probes",
    "ProbeStream": "_probes",
    "Scope": "_scope",
    "Target": "_scope",
    "TcpHeartbeat": "_heartbeat",
    "grab_banner": "_probes",
    "http_get": "_probes",
    "parse_ports": "_scope",
    "parse_targets": "_scope",
    "tcp_connect": "_probes",
    "run_sync": "_sync",
    "Watchdog": "_watchdog",
    "WatchdogTimeline": "_watchdog",
    "OsGuess": "_fingerprint",
    "ServiceInfo": "_fingerprint",
    "fingerprint_http": "_fingerprint",
    "fingerprint_service": "_fingerprint",
    "guess_os": "_fingerprint",
    "model_key": "_fingerprint",
    # discovery (groups, zones, alerts, the driver)
    "Alert": "_groups",
    "Asset": "_discovery",
    "DiscoveryReport": "_discovery",
    "Rule": "_groups",
    "Rules": "_groups",
    "Zone": "_groups",
    "Zones": "_groups",
    "discover": "_discovery",
    "discover_sync": "_discovery",
    # characterization (ramp strategy, results, profiles, store, recovery hooks, the driver)
    "Characterization": "_profile",
    "DeviceProfile": "_profile",
    "LevelOutcome": "_profile",
    "LevelResult": "_profile",
    "TrialResult": "_profile",
    "derive_ceiling": "_profile",
    "RampConfig": "_ramp",
    "RampStrategy": "_ramp",
    "ProfileStore": "_store",
    "RecoveryContext": "_recovery",
    "command_recovery": "_recovery",
    "emulator_recovery": "_recovery",
    "fleet_recovery": "_recovery",
    "manual_recovery": "_recovery",
    "wait_for_recovery": "_recovery",
    "EarlyWarning": "_characterize",
    "ProgressEvent": "_characterize",
    "characterize": "_characterize",
    "characterize_sync": "_characterize",
    # people's side: notebook progress and reports (matplotlib only when a plot is drawn)
    "NotebookProgress": "_progress",
    "ReportFiles": "_report",
    "write_report": "_report",
    # raw packets (optional extra fragileprobe[raw]; scapy is imported only when a feature runs)
    "CaptureSummary": "_raw",
    "IcmpHeartbeat": "_raw",
    "IcmpResult": "_raw",
    "PassiveOsHint": "_raw",
    "SynAckObservation": "_raw",
    "capture": "_raw",
    "icmp_reachable": "_raw",
    "os_hint_from_ttl": "_raw",
    "raw_available": "_raw",
    "require_raw": "_raw",
    "syn_ack_observer": "_raw",
}

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
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fragileprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fragileprobe.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

