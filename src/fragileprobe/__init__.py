"""fragileprobe: look at fragile network devices without knocking them over.

The public API is the table :data:`_PUBLIC` below (public name -> the private module that defines it);
``__all__`` is made from it. Names load on first use (PEP 562), so ``import fragileprobe`` stays cheap: no
anyio, no sqlite3, and never scapy, pandas or matplotlib until a feature that needs them is used. The error
tree loads with the package, and its classes (and the public functions) say ``fragileprobe`` in their
``__module__``, so a traceback names ``fragileprobe.DeviceDownError``; records keep their defining module
(type hints are looked up through it, see :mod:`fragileprobe._public`).

Layers, bottom to top. A module imports only from its own layer or below, never above, not even lazily
inside a function (``tests/test_layers.py`` walks the import graph and holds this table, with its few
exceptions and their reasons)::

    top            cli, __main__, _demo          the programs built on the library
                   testing, emulator             public test support; the library never imports them
    outputs        _report, _progress, export,   what people and other tools read: reports, notebook
                   _shield, _socks, sites        progress, scanner templates, the SOCKS5 shield, site agents
    orchestrators  _characterize, _discovery,    the two drivers and their pure policies (rules and zones,
                   _discovery_settings,          per-host plans, timeouts that follow the network; the
                   _discovery_policy,            discovery settings, its pure policy and its executor)
                   _discovery_run, _groups,
                   _hostpolicy, _timing
    store          _db, _schema, _repo_profiles, profiles, runs and the inventory, on SQLite or PostgreSQL:
                   _repo_inventory, _store       one core, two repositories, the ProfileStore facade
    ramp           _ramp, _profile, _recovery,   the ramp state machine, its records, recovery hooks,
                   _level_verdict, _charsettings a level's verdict, characterization settings
    guard          _guard                        one device, its ceiling, heartbeat and watchdog together
    watchdog       _watchdog                     stop everything the moment the device stops answering
    sessions       _limiter, _sessions           the ceiling, counted as the device counts sessions
    heartbeat      _heartbeat, _raw              "still alive?" (TCP, HTTP, ICMP)
    probes         _results, _translate, _http,  probe records, the error-translation table, the sans-IO
                   _probes, _fingerprint, _udp   HTTP parser, the probes, banner parsing, UDP
    network        _net                          the network seam (sockets, or testing.FakeNetwork)
    scope          _addresses, _ports, _target,  what names a device, and the authorized scope
                   _scope
    foundation     _errors, _validate, _numbers, one error tree, one configuration check, numbers from
                   _files, _sync, _public,       device bytes, bounded file reads, sync entry points, the
                   _codec                        record codec

A new public name is one entry in :data:`_PUBLIC` plus its line in the ``TYPE_CHECKING`` block at the end
(``tests/test_public_api.py`` checks that the two agree and prints the missing line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fragileprobe import _public

__version__ = "0.1.0"

# public name -> the private module that defines it (loaded on first use)
_PUBLIC: dict[str, str] = {
    # the one error tree (loaded with the package: tracebacks name fragileprobe.<Error> from the start)
    "FragileProbeError": "_errors",
    "ConfigError": "_errors",
    "ScopeError": "_errors",
    "ProbeError": "_errors",
    "ProbeTimeoutError": "_errors",
    "ProbeRefusedError": "_errors",
    "ProbeResetError": "_errors",
    "DeviceDownError": "_errors",
    "RecoveryError": "_errors",
    "StoreError": "_errors",
    "RawUnavailableError": "_errors",
    # core (scope, probes, limiter, heartbeats)
    "Beat": "_heartbeat",
    "ConcurrencyLimiter": "_limiter",
    "DownEvent": "_watchdog",
    "Guard": "_guard",
    "GuardStats": "_guard",
    "Heartbeat": "_heartbeat",
    "HttpHeartbeat": "_heartbeat",
    "HttpResult": "_results",
    "LimiterStatistics": "_limiter",
    "Outcome": "_results",
    "PORT_SETS": "_ports",
    "Phase": "_results",
    "ProbeResult": "_results",
    "ProbeStream": "_probes",
    "Scope": "_scope",
    "Target": "_target",
    "TcpHeartbeat": "_heartbeat",
    "grab_banner": "_probes",
    "http_get": "_probes",
    "parse_ports": "_ports",
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
    "DiscoverySettings": "_discovery_settings",
    "Rule": "_groups",
    "Rules": "_groups",
    "Zone": "_groups",
    "Zones": "_groups",
    "discover": "_discovery_run",
    "discover_sync": "_discovery_run",
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
    "fleet_recovery": "emulator._recovery",
    "manual_recovery": "_recovery",
    "wait_for_recovery": "_recovery",
    "EarlyWarning": "_level_verdict",
    "ProgressEvent": "_characterize",
    "characterize": "_characterize",
    "characterize_sync": "_characterize",
    "CharacterizeSettings": "_charsettings",
    "RecoverySettings": "_charsettings",
    "TimingSettings": "_charsettings",
    # people's side: notebook progress and reports (matplotlib only when a plot is drawn)
    "NotebookProgress": "_progress",
    "NotebookDiscoveryProgress": "_progress",
    "ReportFiles": "_report._files",
    "write_report": "_report._files",
    # the shield: a SOCKS5 server that puts any scanner behind the ceiling and the watchdog
    "Shield": "_shield",
    "ShieldSession": "_shield",
    "ShieldStats": "_shield",
    "ShieldTrip": "_shield",
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

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    value = _public.load(__name__, _PUBLIC, name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


# The error tree loads with the package: cheap, and a traceback names fragileprobe.<Error> from the start.
for _name in [name for name, module in _PUBLIC.items() if module == "_errors"]:
    __getattr__(_name)
del _name

if TYPE_CHECKING:  # pragma: no cover - the public names, for type checkers and IDEs
    from fragileprobe._characterize import ProgressEvent as ProgressEvent
    from fragileprobe._characterize import characterize as characterize
    from fragileprobe._characterize import characterize_sync as characterize_sync
    from fragileprobe._charsettings import CharacterizeSettings as CharacterizeSettings
    from fragileprobe._charsettings import RecoverySettings as RecoverySettings
    from fragileprobe._charsettings import TimingSettings as TimingSettings
    from fragileprobe._discovery import Asset as Asset
    from fragileprobe._discovery import DiscoveryReport as DiscoveryReport
    from fragileprobe._discovery_run import discover as discover
    from fragileprobe._discovery_run import discover_sync as discover_sync
    from fragileprobe._discovery_settings import DiscoverySettings as DiscoverySettings
    from fragileprobe._errors import ConfigError as ConfigError
    from fragileprobe._errors import DeviceDownError as DeviceDownError
    from fragileprobe._errors import FragileProbeError as FragileProbeError
    from fragileprobe._errors import ProbeError as ProbeError
    from fragileprobe._errors import ProbeRefusedError as ProbeRefusedError
    from fragileprobe._errors import ProbeResetError as ProbeResetError
    from fragileprobe._errors import ProbeTimeoutError as ProbeTimeoutError
    from fragileprobe._errors import RawUnavailableError as RawUnavailableError
    from fragileprobe._errors import RecoveryError as RecoveryError
    from fragileprobe._errors import ScopeError as ScopeError
    from fragileprobe._errors import StoreError as StoreError
    from fragileprobe._fingerprint import OsGuess as OsGuess
    from fragileprobe._fingerprint import ServiceInfo as ServiceInfo
    from fragileprobe._fingerprint import fingerprint_http as fingerprint_http
    from fragileprobe._fingerprint import fingerprint_service as fingerprint_service
    from fragileprobe._fingerprint import guess_os as guess_os
    from fragileprobe._fingerprint import model_key as model_key
    from fragileprobe._groups import Alert as Alert
    from fragileprobe._groups import Rule as Rule
    from fragileprobe._groups import Rules as Rules
    from fragileprobe._groups import Zone as Zone
    from fragileprobe._groups import Zones as Zones
    from fragileprobe._guard import Guard as Guard
    from fragileprobe._guard import GuardStats as GuardStats
    from fragileprobe._heartbeat import Beat as Beat
    from fragileprobe._heartbeat import Heartbeat as Heartbeat
    from fragileprobe._heartbeat import HttpHeartbeat as HttpHeartbeat
    from fragileprobe._heartbeat import TcpHeartbeat as TcpHeartbeat
    from fragileprobe._level_verdict import EarlyWarning as EarlyWarning
    from fragileprobe._limiter import ConcurrencyLimiter as ConcurrencyLimiter
    from fragileprobe._limiter import LimiterStatistics as LimiterStatistics
    from fragileprobe._ports import PORT_SETS as PORT_SETS
    from fragileprobe._ports import parse_ports as parse_ports
    from fragileprobe._probes import ProbeStream as ProbeStream
    from fragileprobe._probes import grab_banner as grab_banner
    from fragileprobe._probes import http_get as http_get
    from fragileprobe._probes import tcp_connect as tcp_connect
    from fragileprobe._profile import Characterization as Characterization
    from fragileprobe._profile import DeviceProfile as DeviceProfile
    from fragileprobe._profile import LevelOutcome as LevelOutcome
    from fragileprobe._profile import LevelResult as LevelResult
    from fragileprobe._profile import TrialResult as TrialResult
    from fragileprobe._profile import derive_ceiling as derive_ceiling
    from fragileprobe._progress import NotebookDiscoveryProgress as NotebookDiscoveryProgress
    from fragileprobe._progress import NotebookProgress as NotebookProgress
    from fragileprobe._ramp import RampConfig as RampConfig
    from fragileprobe._ramp import RampStrategy as RampStrategy
    from fragileprobe._raw import CaptureSummary as CaptureSummary
    from fragileprobe._raw import IcmpHeartbeat as IcmpHeartbeat
    from fragileprobe._raw import IcmpResult as IcmpResult
    from fragileprobe._raw import PassiveOsHint as PassiveOsHint
    from fragileprobe._raw import SynAckObservation as SynAckObservation
    from fragileprobe._raw import capture as capture
    from fragileprobe._raw import icmp_reachable as icmp_reachable
    from fragileprobe._raw import os_hint_from_ttl as os_hint_from_ttl
    from fragileprobe._raw import raw_available as raw_available
    from fragileprobe._raw import require_raw as require_raw
    from fragileprobe._raw import syn_ack_observer as syn_ack_observer
    from fragileprobe._recovery import RecoveryContext as RecoveryContext
    from fragileprobe._recovery import command_recovery as command_recovery
    from fragileprobe._recovery import emulator_recovery as emulator_recovery
    from fragileprobe._recovery import manual_recovery as manual_recovery
    from fragileprobe._recovery import wait_for_recovery as wait_for_recovery
    from fragileprobe._report._files import ReportFiles as ReportFiles
    from fragileprobe._report._files import write_report as write_report
    from fragileprobe._results import HttpResult as HttpResult
    from fragileprobe._results import Outcome as Outcome
    from fragileprobe._results import Phase as Phase
    from fragileprobe._results import ProbeResult as ProbeResult
    from fragileprobe._scope import Scope as Scope
    from fragileprobe._scope import parse_targets as parse_targets
    from fragileprobe._shield import Shield as Shield
    from fragileprobe._shield import ShieldSession as ShieldSession
    from fragileprobe._shield import ShieldStats as ShieldStats
    from fragileprobe._shield import ShieldTrip as ShieldTrip
    from fragileprobe._store import ProfileStore as ProfileStore
    from fragileprobe._sync import run_sync as run_sync
    from fragileprobe._target import Target as Target
    from fragileprobe._watchdog import DownEvent as DownEvent
    from fragileprobe._watchdog import Watchdog as Watchdog
    from fragileprobe._watchdog import WatchdogTimeline as WatchdogTimeline
    from fragileprobe.emulator._recovery import fleet_recovery as fleet_recovery
