"""Safe vulnerability-scan settings per asset group, for nmap, Nessus, Greenbone/OpenVAS and InsightVM.

Pure: a ceiling (or a stored profile, or a group plus the store) in, frozen records and text out. The
scanner facts these numbers rest on are in ``docs/discovery.md`` and the project's anchors:

* nmap 7.93 (its source, measured on loopback; ``docs/scanners/nmap.md``): for a connect scan
  ``--max-parallelism`` caps the connects in flight across a whole host group, so it also caps every device;
  ``--scan-delay`` is per host, and the cap still applies together with it (the warning nmap prints says
  otherwise and is misleading); the hosts of a host group are scanned side by side, so one host group for the
  whole asset group makes the scan as long as its slowest host (bounded by ``--host-timeout``), where
  ``--max-hostgroup 1`` made it the sum of all hosts. nmap has no per-device cap above 1 that leaves the rest
  of the scan free. ``-sV`` excludes 9100-9107 by default; ``-O`` sends deliberately malformed packets and is
  never suggested for a fragile group.
* Nessus: "Max simultaneous checks per host", "Max simultaneous TCP sessions per host", "Safe checks",
  "Stop scanning hosts that become unresponsive during the scan" (off by default; always on here). Tenable's
  OT guidance uses 2 checks per host.
* Greenbone/OpenVAS: ``max_checks`` (concurrent VTs per host), ``max_hosts``, ``safe_checks``, opt-in
  ``max_vts_timeouts``; ports are excluded by scanning a port list without them.
* Rapid7 InsightVM: scan template "maximum scan processes" per asset and parallel assets per engine;
  TCP discovery by full connection instead of SYN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "CONSERVATIVE_CEILING",
    "MEDICAL_UNKNOWN_GROUP",
    "PRINTER_PORT_RANGE",
    "GroupScanSettings",
    "InsightVmTemplate",
    "NessusPolicy",
    "NmapArgs",
    "OpenVasSettings",
    "insightvm_template",
    "nessus_policy",
    "nmap_args",
    "nmap_host_group",
    "openvas_settings",
    "settings_for_groups",
    "template_for_group",
]

# The most conservative setting: one session per host at a time. Used for medical devices whose model has
# not been characterized yet.
CONSERVATIVE_CEILING: Final = 1
# The group the default rules put unknown medical-looking devices in.
MEDICAL_UNKNOWN_GROUP: Final = "Medical Device?"
# Raw print ports: whatever a scanner sends there is printed. Excluded from every group's scans.
PRINTER_PORT_RANGE: Final = (9100, 9107)
# Connects per second per host for fragile groups: discovery's default, a quarter of runZero's 40/s.
FRAGILE_RATE_PER_HOST: Final = 10.0
# Hosts in parallel for fragile groups on scanners whose per-host limits really are per host (Nessus,
# OpenVAS, InsightVM): Tenable's OT guidance uses 10.
FRAGILE_HOSTS_IN_PARALLEL: Final = 10
# Nessus checks per host for fragile groups: Tenable's OT setting.
OT_CHECKS_PER_HOST: Final = 2
# What a measured ceiling of 0 means for the people configuring a scanner.
DO_NOT_SCAN_NOTE: Final = (
    "characterization measured a ceiling of 0: even one session at a time crashed this model; keep these "
    "hosts out of regular scans (exclude them) and assess them with the vendor or by hand"
)
# nmap 7.93 sizes a host group at max(1024 / ports, 64) hosts at least: with no host count given, the group
# is nmap's own minimum.
NMAP_DEFAULT_HOST_GROUP: Final = 64
# One host group holds the whole asset group so that the per-host scan delays run side by side; above 256 a
# group's tail (its slowest host) holds back more healthy hosts than the parallel delays save (nmap's own
# default for a few ports is 256).
NMAP_MAX_HOST_GROUP: Final = 256
# Per-host budget: nmap's default 1,000 ports at 10 connects/s take under 2 minutes per host, with one retry
# under 4; a host still unfinished after 30 minutes is stalled, and the scan moves on without it.
NMAP_HOST_TIMEOUT: Final = "30m"
MS_PER_S: Final = 1000
# Network/read timeout for fragile hosts: Tenable's OT guidance (slow stacks answer late, not never).
FRAGILE_TIMEOUT_S: Final = 15


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupScanSettings:
    """The scanner-neutral settings a group's regular vulnerability scans should use.

    Attributes:
        group: The asset group.
        fragile: True for medical/fragile groups (a ceiling applies).
        sessions_per_host: Most TCP sessions held at once on one host, or None for the scanner default.
        checks_per_host: Most checks (plugins/VTs) at once per host, or None for the default.
        hosts_in_parallel: Hosts scanned at once, or None for the default.
        rate_per_host: Connects per second per host, or None for no cap.
        safe_checks: Only non-destructive checks.
        stop_unresponsive: Stop scanning a host that stops answering.
        service_detection: Version probes (nmap -sV) are acceptable.
        os_detection: Active OS fingerprinting (nmap -O) is acceptable.
        exclude_ports: Port ranges never to scan, inclusive ``(lo, hi)`` pairs.
        characterize_first: The group's model has no measured ceiling: characterize one device first.
        source: Where the numbers come from.
        notes: Things the person configuring the scanner must know.
        do_not_scan: Characterization measured a ceiling of 0 (even one session at a time crashed the
            model): keep these hosts out of regular scans. The session settings are then the scanner's
            minimum, for whoever scans them anyway.
    """

    group: str
    fragile: bool
    sessions_per_host: int | None
    checks_per_host: int | None
    hosts_in_parallel: int | None
    rate_per_host: float | None
    safe_checks: bool
    stop_unresponsive: bool
    service_detection: bool
    os_detection: bool
    exclude_ports: tuple[tuple[int, int], ...]
    characterize_first: bool
    source: str
    notes: tuple[str, ...] = ()
    do_not_scan: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "group": self.group,
            "fragile": self.fragile,
            "sessions_per_host": self.sessions_per_host,
            "checks_per_host": self.checks_per_host,
            "hosts_in_parallel": self.hosts_in_parallel,
            "rate_per_host": self.rate_per_host,
            "safe_checks": self.safe_checks,
            "stop_unresponsive": self.stop_unresponsive,
            "service_detection": self.service_detection,
            "os_detection": self.os_detection,
            "exclude_ports": [list(r) for r in self.exclude_ports],
            "characterize_first": self.characterize_first,
            "source": self.source,
            "notes": list(self.notes),
            "do_not_scan": self.do_not_scan,
        }

    def text(self) -> str:
        """Every scanner's settings for this group, as text for people."""
        parts = [f"# {self.group}: {self.source}"]
        if self.do_not_scan:
            parts.append(f"# DO NOT SCAN: {DO_NOT_SCAN_NOTE}")
        parts.extend(f"# note: {n}" for n in self.notes)
        parts.append(nmap_args(self).text())
        parts.append(nessus_policy(self).text())
        parts.append(openvas_settings(self).text())
        parts.append(insightvm_template(self).text())
        return "\n".join(parts)


def _fragile(
    group: str, ceiling: int, *, source: str, characterize_first: bool, notes: Iterable[str] = ()
) -> GroupScanSettings:
    if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 0:
        raise ConfigError(f"ceiling must be an integer >= 0, got {ceiling!r}")
    # A measured ceiling of 0 cannot be expressed to a scanner (0 means "default" to most of them): the
    # settings say "do not scan", with the scanner's minimum for whoever scans anyway.
    do_not_scan = ceiling == 0
    if do_not_scan:
        ceiling = CONSERVATIVE_CEILING
    return GroupScanSettings(
        group=group,
        fragile=True,
        sessions_per_host=ceiling,
        do_not_scan=do_not_scan,
        checks_per_host=max(1, min(ceiling, OT_CHECKS_PER_HOST)),
        hosts_in_parallel=FRAGILE_HOSTS_IN_PARALLEL,
        rate_per_host=FRAGILE_RATE_PER_HOST,
        safe_checks=True,
        stop_unresponsive=True,
        service_detection=False,
        os_detection=False,
        exclude_ports=(PRINTER_PORT_RANGE,),
        characterize_first=characterize_first,
        source=source,
        notes=tuple(notes),
    )


def _common_notes(s: GroupScanSettings) -> list[str]:
    """The notes every scanner's rendering carries for a group."""
    notes = [DO_NOT_SCAN_NOTE] if s.do_not_scan else []
    if s.characterize_first:
        notes.append("model not characterized yet: characterize a device first, then use its ceiling")
    return notes


def _regular(group: str, *, source: str) -> GroupScanSettings:
    return GroupScanSettings(
        group=group,
        fragile=False,
        sessions_per_host=None,
        checks_per_host=None,
        hosts_in_parallel=None,
        rate_per_host=None,
        safe_checks=True,
        stop_unresponsive=True,
        service_detection=True,
        os_detection=False,
        exclude_ports=(PRINTER_PORT_RANGE,),
        characterize_first=False,
        source=source,
        notes=(
            "scanner defaults are fine; printer ports 9100-9107 stay excluded (they print what they receive)",
        ),
    )


def _as_settings(x: int | GroupScanSettings | Any) -> GroupScanSettings:
    """Accept a GroupScanSettings, a ceiling (int) or a DeviceProfile-like object (model_key, ceiling)."""
    if isinstance(x, GroupScanSettings):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return _fragile(f"ceiling {x}", x, source=f"given ceiling {x}", characterize_first=False)
    key = getattr(x, "model_key", None)
    if isinstance(key, str):
        ceiling = getattr(x, "ceiling", None)
        if ceiling is None:
            return _fragile(
                key,
                CONSERVATIVE_CEILING,
                source=f"profile {key} has no ceiling yet",
                characterize_first=True,
                notes=("no safe ceiling measured: most conservative setting",),
            )
        return _fragile(
            key,
            int(ceiling),
            source=f"stored profile {key}: safe ceiling {ceiling}",
            characterize_first=False,
        )
    raise ConfigError(f"expected a ceiling, a DeviceProfile or GroupScanSettings, got {type(x).__name__}")


def template_for_group(
    group: str,
    store: Any = None,
    *,
    assets: Iterable[Any] = (),
) -> GroupScanSettings:
    """The settings for one asset group.

    * A group named after a model with a stored profile: that profile's ceiling.
    * "Medical Device?" (unknown medical devices): the most conservative setting (1 session per host) and
      a note that a device of the model should be characterized first.
    * Another group whose ``assets`` (from a DiscoveryReport) include known models or medical devices:
      the lowest stored ceiling among them, else the conservative setting.
    * Anything else ("safe to scan (...)"): scanner defaults, printer ports excluded.

    Args:
        group: The group name.
        store: A ProfileStore (anything with ``ceiling_for(model_key)``), or None.
        assets: The group's assets, to judge user-defined groups.

    Returns:
        GroupScanSettings.
    """
    if not isinstance(group, str) or not group:
        raise ConfigError(f"group must be a non-empty string, got {group!r}")
    if group == MEDICAL_UNKNOWN_GROUP:
        return _fragile(
            group,
            CONSERVATIVE_CEILING,
            source="unknown medical device: most conservative",
            characterize_first=True,
            notes=(
                "characterize one device of each model in this group first "
                "(fragileprobe characterize), then scan within its measured ceiling",
            ),
        )
    if store is not None:
        ceiling = store.ceiling_for(group)
        if ceiling is not None:
            return _fragile(
                group,
                int(ceiling),
                source=f"stored profile {group}: safe ceiling {ceiling}",
                characterize_first=False,
            )
    members = list(assets)
    ceilings = [a.ceiling for a in members if getattr(a, "ceiling", None) is not None]
    if ceilings:
        low = min(ceilings)
        return _fragile(
            group,
            low,
            source=f"lowest stored ceiling among the group's models: {low}",
            characterize_first=False,
        )
    if any(getattr(a, "medical", False) for a in members):
        return _fragile(
            group,
            CONSERVATIVE_CEILING,
            source="group holds medical devices of unknown models",
            characterize_first=True,
            notes=("characterize one device of each model first",),
        )
    return _regular(group, source="no fragile device known in this group")


def settings_for_groups(report: Any, store: Any = None) -> dict[str, GroupScanSettings]:
    """Settings for every group of a DiscoveryReport (``report.groups``: name -> assets)."""
    groups: Mapping[str, Any] = report.groups
    return {g: template_for_group(g, store, assets=members) for g, members in groups.items()}


# --- nmap -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NmapArgs:
    """nmap command-line arguments (targets not included), the reasoning behind them and notes.

    Attributes:
        args: The arguments, in order.
        notes: Things the person running the scan must know.
        reasoning: One line saying which nmap behaviour each bound rests on (empty for regular groups).
    """

    args: tuple[str, ...]
    notes: tuple[str, ...]
    reasoning: str = ""

    def command(self, targets: str = "<targets>") -> str:
        """``nmap <args> <targets>`` on one line."""
        return "nmap " + " ".join(self.args) + " " + targets

    def text(self) -> str:
        """The command line first, then the reasoning and the notes as comments."""
        lines = [self.command()]
        if self.reasoning:
            lines.append(f"# why: {self.reasoning}")
        lines.extend(f"#   {n}" for n in self.notes)
        return "\n".join(lines)


def _port_exclusion(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ranges)


def _nmap_delay(rate_per_host: float) -> str:
    """``--scan-delay`` for a per-host connect rate, in whole milliseconds (rounded up: never faster)."""
    return f"{math.ceil(MS_PER_S / rate_per_host)}ms"


def nmap_host_group(hosts: int | None) -> int:
    """The host group size for a fragile group of ``hosts`` devices (see :data:`NMAP_MAX_HOST_GROUP`)."""
    if hosts is None:
        return NMAP_DEFAULT_HOST_GROUP
    if isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1:
        raise ConfigError(f"hosts must be an integer >= 1 or None, got {hosts!r}")
    return min(hosts, NMAP_MAX_HOST_GROUP)


def nmap_args(x: int | GroupScanSettings | Any, *, hosts: int | None = None) -> NmapArgs:
    """nmap arguments for a ceiling, a stored profile or a group's settings.

    Fragile groups (nmap 7.93's behaviour, see ``docs/scanners/nmap.md``): a connect scan whose
    ``--max-parallelism k`` is the bound, because for a connect scan it caps the connects in flight across the
    whole host group, so no device can ever hold more than ``k`` of them; ``--scan-delay`` spaces the probes
    to each host (it is per host; nmap's warning that it disables ``--max-parallelism`` is misleading, the
    cap still applies); one host group holding the whole asset group (``--min-hostgroup`` =
    ``--max-hostgroup``), so the per-host delays run side by side and the scan takes as long as its slowest
    host instead of the sum of all hosts; ``--host-timeout`` bounds that slowest host; one retry; no
    ``-sV``/``-O``; printer ports excluded.

    Args:
        x: A ceiling, a DeviceProfile or a group's GroupScanSettings.
        hosts: How many devices the scan covers (sizes the host group); None: nmap's minimum group, 64.

    Returns:
        NmapArgs.

    Raises:
        ConfigError: A bad ceiling or host count.
    """
    s = _as_settings(x)
    excl = _port_exclusion(s.exclude_ports)
    if not s.fragile:
        args = ("-sT", "-sV", "--exclude-ports", excl)
        notes = (
            "-sT: full connects; -sV leaves 9100-9107 alone by default and they are excluded anyway",
            "default or -T4 timing is fine for this group; -O is not needed for vulnerability scans",
        )
        return NmapArgs(args, notes)
    parallel = s.sessions_per_host or CONSERVATIVE_CEILING
    group = nmap_host_group(hosts)
    delay = _nmap_delay(s.rate_per_host or FRAGILE_RATE_PER_HOST)
    args_list = [
        "-sT",
        "-Pn",
        "-n",
        "--max-parallelism",
        str(parallel),
        "--scan-delay",
        delay,
        "--min-hostgroup",
        str(group),
        "--max-hostgroup",
        str(group),
        "--max-retries",
        "1",
        "--host-timeout",
        NMAP_HOST_TIMEOUT,
        "--exclude-ports",
        excl,
    ]
    reasoning = (
        f"nmap 7.93: for a connect scan --max-parallelism caps connects in flight across the whole host "
        f"group, so it caps every device at {parallel} too (and the whole scan at {parallel}); --scan-delay "
        f"{delay} spaces the probes to each host (it is per host) and the cap still applies with it (the "
        f"warning 'ignored with --scan-delay' is misleading); up to {group} host(s) form one host group, so "
        f"their delays run side by side and the scan lasts as long as its slowest host, which "
        f"--host-timeout bounds"
    )
    notes_list = [
        "-Pn: no ping probes (an unprivileged ping is a connect to 80/443, a session like any other); "
        "-n: no DNS",
        "nmap has no per-device cap above 1 that leaves the rest of the scan free: the cap is shared by "
        "the whole host group (nmap issue #55 asks for a per-host cap)",
        "no -O (malformed OS-detection packets crash embedded stacks), no -sV/-A/--script on this group "
        "(service and script scans have their own parallelism, which --max-parallelism does not bound)",
    ]
    notes_list[:0] = _common_notes(s)
    return NmapArgs(tuple(args_list), tuple(notes_list), reasoning)


# --- Nessus -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NessusPolicy:
    """Nessus scan policy values (Settings > Advanced and Discovery > Port scanning)."""

    max_checks_per_host: int | None
    max_simultaneous_tcp_sessions_per_host: int | None
    max_hosts_per_scan: int | None
    network_timeout_s: int | None
    safe_checks: bool
    stop_scanning_unresponsive_hosts: bool
    port_scanner: str
    excluded_ports: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "max_checks_per_host": self.max_checks_per_host,
            "max_simultaneous_tcp_sessions_per_host": self.max_simultaneous_tcp_sessions_per_host,
            "max_hosts_per_scan": self.max_hosts_per_scan,
            "network_timeout_s": self.network_timeout_s,
            "safe_checks": self.safe_checks,
            "stop_scanning_unresponsive_hosts": self.stop_scanning_unresponsive_hosts,
            "port_scanner": self.port_scanner,
            "excluded_ports": self.excluded_ports,
            "notes": list(self.notes),
        }

    def text(self) -> str:
        """The values as the Nessus UI names them."""
        d = "default"
        return "\n".join(
            [
                "Nessus policy:",
                f"  Max simultaneous checks per host: {self.max_checks_per_host or d}",
                "  Max simultaneous TCP sessions per host: "
                f"{self.max_simultaneous_tcp_sessions_per_host or d}",
                f"  Max simultaneous hosts per scan: {self.max_hosts_per_scan or d}",
                f"  Network timeout (seconds): {self.network_timeout_s or d}",
                f"  Safe checks: {'on' if self.safe_checks else 'off'}",
                "  Stop scanning hosts that become unresponsive during the scan: "
                f"{'on' if self.stop_scanning_unresponsive_hosts else 'off'}",
                f"  Port scanner: {self.port_scanner}; exclude ports {self.excluded_ports}",
                *(f"  # {n}" for n in self.notes),
            ]
        )


def nessus_policy(x: int | GroupScanSettings | Any) -> NessusPolicy:
    """Nessus policy values for a ceiling, a stored profile or a group's settings."""
    s = _as_settings(x)
    notes = ["'stop scanning hosts that become unresponsive' is off by default in Nessus: turn it on"]
    notes[:0] = _common_notes(s)
    return NessusPolicy(
        max_checks_per_host=s.checks_per_host,
        max_simultaneous_tcp_sessions_per_host=s.sessions_per_host,
        max_hosts_per_scan=s.hosts_in_parallel,
        network_timeout_s=FRAGILE_TIMEOUT_S if s.fragile else None,
        safe_checks=s.safe_checks,
        stop_scanning_unresponsive_hosts=s.stop_unresponsive,
        port_scanner="TCP (full connect), SYN scanner off" if s.fragile else "default",
        excluded_ports=_port_exclusion(s.exclude_ports),
        notes=tuple(notes),
    )


# --- Greenbone / OpenVAS ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenVasSettings:
    """Greenbone/OpenVAS task and scan-config values."""

    max_checks: int | None
    max_hosts: int | None
    safe_checks: bool
    max_vts_timeouts: int | None
    excluded_ports: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "max_checks": self.max_checks,
            "max_hosts": self.max_hosts,
            "safe_checks": self.safe_checks,
            "max_vts_timeouts": self.max_vts_timeouts,
            "excluded_ports": self.excluded_ports,
            "notes": list(self.notes),
        }

    def text(self) -> str:
        """The values as scanner preferences (``name = value``)."""
        lines = ["Greenbone/OpenVAS:"]
        lines.append(f"  max_checks = {self.max_checks if self.max_checks is not None else 'default'}")
        lines.append(f"  max_hosts = {self.max_hosts if self.max_hosts is not None else 'default'}")
        lines.append(f"  safe_checks = {'yes' if self.safe_checks else 'no'}")
        if self.max_vts_timeouts is not None:
            lines.append(f"  max_vts_timeouts = {self.max_vts_timeouts}")
        lines.append(f"  port list: without {self.excluded_ports}")
        lines.extend(f"  # {n}" for n in self.notes)
        return "\n".join(lines)


def openvas_settings(x: int | GroupScanSettings | Any) -> OpenVasSettings:
    """Greenbone/OpenVAS values for a ceiling, a stored profile or a group's settings."""
    s = _as_settings(x)
    notes = ["exclude the printer ports by using a port list without them"]
    if s.fragile:
        notes.append(
            "max_checks is per host (concurrent VTs); each VT may open a session, so it gets the ceiling"
        )
    notes[:0] = _common_notes(s)
    return OpenVasSettings(
        max_checks=s.sessions_per_host,
        max_hosts=s.hosts_in_parallel,
        safe_checks=s.safe_checks,
        max_vts_timeouts=3 if s.fragile else None,
        excluded_ports=_port_exclusion(s.exclude_ports),
        notes=tuple(notes),
    )


# --- Rapid7 InsightVM -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InsightVmTemplate:
    """Rapid7 InsightVM scan-template values."""

    maximum_scan_processes_per_asset: int | None
    maximum_assets_in_parallel: int | None
    tcp_discovery_method: str
    os_fingerprinting: bool
    excluded_ports: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "maximum_scan_processes_per_asset": self.maximum_scan_processes_per_asset,
            "maximum_assets_in_parallel": self.maximum_assets_in_parallel,
            "tcp_discovery_method": self.tcp_discovery_method,
            "os_fingerprinting": self.os_fingerprinting,
            "excluded_ports": self.excluded_ports,
            "notes": list(self.notes),
        }

    def text(self) -> str:
        """The values as the template editor names them."""
        d = "default"
        return "\n".join(
            [
                "Rapid7 InsightVM scan template:",
                f"  Maximum scan processes simultaneously used for each asset: "
                f"{self.maximum_scan_processes_per_asset or d}",
                "  Maximum assets scanned simultaneously per Scan Engine: "
                f"{self.maximum_assets_in_parallel or d}",
                f"  TCP port discovery method: {self.tcp_discovery_method}",
                f"  Fingerprint operating systems: {'yes' if self.os_fingerprinting else 'no'}",
                f"  Excluded ports: {self.excluded_ports}",
                *(f"  # {n}" for n in self.notes),
            ]
        )


def insightvm_template(x: int | GroupScanSettings | Any) -> InsightVmTemplate:
    """InsightVM template values for a ceiling, a stored profile or a group's settings."""
    s = _as_settings(x)
    notes = _common_notes(s)
    return InsightVmTemplate(
        maximum_scan_processes_per_asset=s.sessions_per_host,
        maximum_assets_in_parallel=s.hosts_in_parallel,
        tcp_discovery_method="Full connection" if s.fragile else "default",
        os_fingerprinting=s.os_detection,
        excluded_ports=_port_exclusion(s.exclude_ports),
        notes=tuple(notes),
    )
