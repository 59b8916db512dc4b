"""Files a scanner imports, written from the measured ceilings and the asset groups.

Pure except :func:`write_exports`: the inventory (hosts and their groups) and the stored profiles (model ->
measured ceiling) go in, an :class:`ExportPlan` (one scan group per asset group, every host assigned to
exactly one of them, the strictest that applies) and file texts come out:

* ``nessus/<group>.nessus``: a Nessus policy (``NessusClientData_v2`` / ``Policy``: ``ServerPreferences``,
  ``PluginsPreferences``, ``FamilySelection``, ``IndividualPluginSelection``), imported under Scans >
  Policies > Import;
* ``gmp/*.xml``: Greenbone Management Protocol commands, one per file, in the order they run
  (``create_port_list`` without the printer ports; per group ``create_config`` copying "Full and fast",
  ``modify_config`` for ``safe_checks``, ``create_target`` and ``create_task`` with ``max_checks`` and
  ``max_hosts``); ids the manager hands out are ``${NAME}`` placeholders that ``gmp/apply.sh`` fills in;
* ``insightvm/<group>.json``: the body of InsightVM's ``POST /api/3/scan_templates``;
* ``nmap/commands.sh``: one nmap line per group, with the reasoning as comments;
* ``targets/``: per group a target list and an exclusion list (one address a line: plain text, nmap ``-iL``
  and ``--excludefile``), ``do-not-scan.txt`` and ``targets.csv``.

The regular scans' targets never hold a host of a fragile group (every "Medical Device?" host included):
each host is scanned once, in the fragile group with the lowest ceiling it belongs to.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._errors import ConfigError
from fragileprobe.export._settings import (
    DO_NOT_SCAN_NOTE,
    FRAGILE_RATE_PER_HOST,
    FRAGILE_TIMEOUT_S,
    MEDICAL_UNKNOWN_GROUP,
    GroupScanSettings,
    nessus_policy,
    nmap_args,
    template_for_group,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

__all__ = [
    "EXPORT_FORMATS",
    "GMP_FULL_AND_FAST_CONFIG",
    "GMP_OPENVAS_SCANNER",
    "ExportGroup",
    "ExportPlan",
    "GmpCommand",
    "gmp_commands",
    "insightvm_template_body",
    "nessus_policy_xml",
    "nmap_commands",
    "plan_exports",
    "render_exports",
    "target_files",
    "write_exports",
]

#: The formats ``render_exports`` and ``fragileprobe profiles export --format`` know.
EXPORT_FORMATS: Final = ("nessus", "gmp", "insightvm", "nmap", "targets")
# Greenbone's built-in scan config "Full and fast" and the built-in "OpenVAS Default" scanner: the same
# UUIDs on every Greenbone install (gvmd creates them), so a copy needs no lookup.
GMP_FULL_AND_FAST_CONFIG: Final = "daba56c8-73ec-11df-a475-002264764cea"
GMP_OPENVAS_SCANNER: Final = "08b69003-5fc2-4037-a479-93b440211c73"
# Every TCP port but the printer ports 9100-9107 (what the scanners' port fields accept: explicit ranges).
_PORTS_WITHOUT_PRINTERS: Final = "1-9099,9108-65535"
# Nessus plugins named in the policy (stable Tenable plugin ids).
_NESSUS_TCP_SCANNER: Final = ("10335", "Nessus TCP scanner")
_NESSUS_SYN_SCANNER: Final = ("11219", "Nessus SYN scanner")
_NESSUS_FRAGILE_DEVICES: Final = ("22481", "Do not scan fragile devices")
# A group name becomes a file name: letters, digits, '.', '_' and '-' stay, the rest becomes '-'.
_SLUG_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
# Stems the shared files use: a group called "do-not-scan" must not overwrite targets/do-not-scan.txt.
_RESERVED_SLUGS: Final = frozenset({"do-not-scan", "targets", "commands", "apply"})
# Longest file-name stem from a group name (file systems allow 255 bytes; suffixes need room).
_MAX_SLUG: Final = 80
# Bound on what write_exports writes: a plan of a few thousand hosts is a few MiB; more means a bug.
MAX_EXPORT_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportGroup:
    """One asset group's scan: its settings and the hosts this scan covers.

    Attributes:
        name: The asset group.
        slug: The group name as a file-name stem (unique within a plan).
        settings: The scanner-neutral settings (a fragile group's ceiling is its lowest measured one).
        hosts: The hosts this group's scan covers (each host of the plan is in exactly one group's list).
        members: Every inventory host in the group, including those scanned under a stricter group.
    """

    name: str
    slug: str
    settings: GroupScanSettings
    hosts: tuple[str, ...]
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportPlan:
    """Every group's scan, every host assigned once.

    Attributes:
        groups: The groups, fragile ones first (lowest ceiling first), then regular ones by name.
        hosts: Every host of the inventory, sorted.
        fragile_hosts: Hosts scanned under a fragile group (never in a regular scan's targets).
        medical_unknown_hosts: Hosts in "Medical Device?" (a subset of ``fragile_hosts``).
        do_not_scan_hosts: Hosts of a model with a measured ceiling of 0 (excluded from every scan).
        zones: Host -> zone, where the inventory knows it.
        models: Host -> model key, where the inventory knows it.
    """

    groups: tuple[ExportGroup, ...]
    hosts: tuple[str, ...]
    fragile_hosts: tuple[str, ...]
    medical_unknown_hosts: tuple[str, ...]
    do_not_scan_hosts: tuple[str, ...]
    zones: Mapping[str, str | None]
    models: Mapping[str, str | None]

    def group(self, name: str) -> ExportGroup:
        """The group called ``name``; ConfigError if the plan has none."""
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"group: no group {name!r} in the plan (groups: {[g.name for g in self.groups]})")

    def excluded_from(self, group: ExportGroup) -> tuple[str, ...]:
        """Hosts a scan of ``group``'s network must skip: every host of the plan not in its target list."""
        mine = set(group.hosts)
        return tuple(h for h in self.hosts if h not in mine)


@dataclass(frozen=True, slots=True)
class GmpCommand:
    """One GMP request.

    Attributes:
        file: File name; the numbers give the order they run in.
        xml: The request.
        defines: The placeholder (``PORT_LIST_ID``, ``CONFIG_ID_<GROUP>``, ``TARGET_ID_<GROUP>``) whose value
            is the id in this command's response, or None.
    """

    file: str
    xml: str
    defines: str | None = None


@dataclass(frozen=True, slots=True)
class _Member:
    """What ``template_for_group`` reads of an asset (a view of an inventory row)."""

    host: str
    ceiling: int | None
    medical: bool


def _digest(key: str) -> str:
    from fragileprobe._fingerprint import model_key_digest

    return model_key_digest(key)


class _Ceilings:
    """Measured ceilings by model, matched by the model key's digest (a user-given name does not hide it)."""

    def __init__(self, profiles: Iterable[Any]) -> None:
        self._by_digest: dict[str, int] = {}
        for p in profiles:
            key, ceiling = getattr(p, "model_key", None), getattr(p, "ceiling", None)
            if not isinstance(key, str):
                raise ConfigError(f"profiles: expected DeviceProfile-like objects, got {type(p).__name__}")
            if ceiling is not None:
                digest = _digest(key)
                self._by_digest[digest] = min(int(ceiling), self._by_digest.get(digest, int(ceiling)))

    def ceiling_for(self, model_key: str) -> int | None:
        return self._by_digest.get(_digest(model_key))


def _slugs(names: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set(_RESERVED_SLUGS)
    for name in names:
        base = _SLUG_UNSAFE.sub("-", name).strip("-.")[:_MAX_SLUG] or "group"
        slug, n = base, 2
        while slug.lower() in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug.lower())
        out[name] = slug
    return out


def _strictness(s: GroupScanSettings) -> tuple[int, int]:
    """Sort key: do-not-scan first, then fragile by ceiling, then regular."""
    if s.do_not_scan:
        return (0, 0)
    if s.fragile:
        return (1, s.sessions_per_host or 0)
    return (2, 0)


def plan_exports(assets: Iterable[Any], profiles: Iterable[Any] = ()) -> ExportPlan:
    """Group the inventory for export and give every group its settings.

    A host whose model has a measured ceiling is scanned in its model's group, at that ceiling (the
    group named after the model when the host is in it, else a group of that name is added): its own
    measurement governs, and a measured ceiling of 0 keeps it out of every scan. Any other host is scanned
    in the strictest of its groups (fragile before regular, lowest ceiling first), whose settings come from
    :func:`template_for_group` ("Medical Device?": 1 session per host). So no host is ever in a regular
    scan's targets while it is in a fragile group, and none is scanned above its model's measurement.

    Args:
        assets: Inventory rows (``ProfileStore.assets()``) or discovered ``Asset`` records: anything with
            ``host``, ``groups`` and ``model_key`` (``zone`` is used when present).
        profiles: Stored profiles (``ProfileStore.profiles()``): anything with ``model_key`` and
            ``ceiling``; a profile's measured ceiling applies to every host of its model.

    Returns:
        The plan.

    Raises:
        ConfigError: An asset without a host or with a non-string group, or a profile without a model key.
    """
    ceilings = _Ceilings(profiles)
    members: dict[str, list[_Member]] = {}
    zones: dict[str, str | None] = {}
    models: dict[str, str | None] = {}
    host_groups: dict[str, tuple[str, ...]] = {}
    model_group: dict[str, str] = {}
    for a in assets:
        host = getattr(a, "host", None)
        groups = tuple(getattr(a, "groups", ()) or ())
        if not isinstance(host, str) or not host:
            raise ConfigError(f"assets: every asset needs a host, got {a!r}")
        if not all(isinstance(g, str) and g for g in groups):
            raise ConfigError(f"assets: host {host}: groups must be non-empty strings, got {groups!r}")
        key = getattr(a, "model_key", None)
        key = key if isinstance(key, str) and key else None
        ceiling = ceilings.ceiling_for(key) if key else None
        member = _Member(
            host=host, ceiling=ceiling, medical=ceiling is not None or MEDICAL_UNKNOWN_GROUP in groups
        )
        zones[host], models[host] = getattr(a, "zone", None), key
        if key is not None and ceiling is not None:
            # the model's group: the one named after the model (matched by digest), else the model key
            model_group[host] = next(
                (g for g in groups if ceilings.ceiling_for(g) is not None and _digest(g) == _digest(key)), key
            )
            if model_group[host] not in groups:
                groups = (*groups, model_group[host])
        host_groups[host] = groups
        for g in groups:
            members.setdefault(g, []).append(member)
    settings = {g: template_for_group(g, ceilings, assets=m) for g, m in members.items()}
    order = sorted(settings, key=lambda g: (*_strictness(settings[g]), g))
    assigned: dict[str, str] = {}
    for host, groups in host_groups.items():
        if host in model_group:
            assigned[host] = model_group[host]
        elif groups:
            assigned[host] = min(groups, key=lambda g: (*_strictness(settings[g]), g))
    slugs = _slugs(order)
    export_groups = tuple(
        ExportGroup(
            name=g,
            slug=slugs[g],
            settings=settings[g],
            hosts=tuple(sorted(h for h, a in assigned.items() if a == g)),
            members=tuple(sorted(m.host for m in members[g])),
        )
        for g in order
    )
    return ExportPlan(
        groups=export_groups,
        hosts=tuple(sorted(host_groups)),
        fragile_hosts=tuple(sorted(h for h, g in assigned.items() if settings[g].fragile)),
        medical_unknown_hosts=tuple(sorted(m.host for m in members.get(MEDICAL_UNKNOWN_GROUP, ()))),
        do_not_scan_hosts=tuple(sorted(h for h, g in assigned.items() if settings[g].do_not_scan)),
        zones=zones,
        models=models,
    )


# --- Nessus -----------------------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def _xml(root: ET.Element, *, declaration: bool = True) -> str:
    ET.indent(root)
    head = '<?xml version="1.0" encoding="UTF-8"?>\n' if declaration else ""
    return head + ET.tostring(root, encoding="unicode") + "\n"


def _gmp(root: ET.Element) -> str:
    # A GMP request is a bare element: gvm-cli sends it as it is, and gvmd reads commands, not documents.
    return _xml(root, declaration=False)


def _policy_name(s: GroupScanSettings) -> str:
    limit = f"{s.sessions_per_host} session(s) per host" if s.sessions_per_host else "scanner defaults"
    prefix = "DO NOT SCAN - " if s.do_not_scan else ""
    return f"{prefix}fragileprobe: {s.group} ({limit})"


def _description(s: GroupScanSettings) -> str:
    parts = [s.source]
    if s.do_not_scan:
        parts.append(f"DO NOT SCAN: {DO_NOT_SCAN_NOTE}")
    parts.extend(s.notes)
    return "; ".join(parts)


def nessus_policy_xml(settings: GroupScanSettings) -> str:
    """A Nessus policy file (``.nessus``, NessusClientData_v2) for one group's settings.

    Server preferences: ``max_hosts`` (hosts at once), ``max_checks`` (checks at once per host),
    ``host.max_simult_tcp_sessions`` (the ceiling: TCP sessions at once per host), ``max_simult_tcp_sessions``
    (the scan's total, hosts x ceiling), ``safe_checks``, ``stop_scan_on_disconnect`` ("stop scanning hosts
    that become unresponsive", off by Nessus's default), ``checks_read_timeout``, ``port_range`` without the
    printer ports. Fragile groups: the TCP (full connect) port scanner on, the SYN scanner off, and the
    "Do not scan fragile devices" plugin's printer option set so printers are skipped.

    Args:
        settings: The group's settings.

    Returns:
        The XML text.
    """
    s = settings
    values = nessus_policy(s)
    root = ET.Element("NessusClientData_v2")
    policy = _sub(root, "Policy")
    _sub(policy, "policyName", _policy_name(s))
    _sub(policy, "policyComments", _description(s))
    prefs = _sub(policy, "Preferences")
    server = _sub(prefs, "ServerPreferences")
    pairs: list[tuple[str, str]] = [
        ("safe_checks", "yes" if values.safe_checks else "no"),
        ("stop_scan_on_disconnect", "yes" if values.stop_scanning_unresponsive_hosts else "no"),
    ]
    if s.fragile:
        sessions = values.max_simultaneous_tcp_sessions_per_host or 1
        hosts = values.max_hosts_per_scan or 1
        pairs += [
            ("max_hosts", str(hosts)),
            ("max_checks", str(values.max_checks_per_host or 1)),
            ("host.max_simult_tcp_sessions", str(sessions)),
            ("max_simult_tcp_sessions", str(sessions * hosts)),
            ("reduce_connections_on_congestion", "yes"),
            ("checks_read_timeout", str(values.network_timeout_s or FRAGILE_TIMEOUT_S)),
        ]
    pairs.append(("port_range", _PORTS_WITHOUT_PRINTERS))
    for name, value in pairs:
        pref = _sub(server, "preference")
        _sub(pref, "name", name)
        _sub(pref, "value", value)
    plugin_prefs = _sub(prefs, "PluginsPreferences")
    item = _sub(plugin_prefs, "item")
    pid, pname = _NESSUS_FRAGILE_DEVICES
    for tag, text in (
        ("pluginName", pname),
        ("pluginId", pid),
        ("fullName", f"{pname}[checkbox]:Scan Network Printers"),
        ("preferenceName", "Scan Network Printers"),
        ("preferenceType", "checkbox"),
        ("preferenceValues", "no"),
        ("selectedValue", "no"),
    ):
        _sub(item, tag, text)
    families = _sub(policy, "FamilySelection")
    family = _sub(families, "FamilyItem")
    _sub(family, "FamilyName", "Port scanners")
    _sub(family, "Status", "mixed" if s.fragile else "enabled")
    plugins = _sub(policy, "IndividualPluginSelection")
    scanners = ((_NESSUS_TCP_SCANNER, "enabled"), (_NESSUS_SYN_SCANNER, "disabled")) if s.fragile else ()
    for (plugin_id, plugin_name), status in scanners:
        plugin = _sub(plugins, "PluginItem")
        _sub(plugin, "PluginId", plugin_id)
        _sub(plugin, "PluginName", plugin_name)
        _sub(plugin, "Family", "Port scanners")
        _sub(plugin, "Status", status)
    return _xml(root)


# --- Greenbone GMP ----------------------------------------------------------------------------------------


def _var_name(kind: str, slug: str = "") -> str:
    return kind if not slug else f"{kind}_{re.sub(r'[^A-Za-z0-9]', '_', slug).upper()}"


def _var(kind: str, slug: str = "") -> str:
    return "${" + _var_name(kind, slug) + "}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def gmp_commands(plan: ExportPlan) -> tuple[GmpCommand, ...]:
    """The GMP commands that set up every group's scan, in the order they run.

    One port list for all groups (every TCP port but 9100-9107); per group that has hosts to scan: a copy
    of "Full and fast" (``create_config``), ``safe_checks`` on it (``modify_config``; GMP sends scanner
    preference values base64-encoded), a target with the group's hosts, the plan's other hosts excluded
    and the port list, and a task with ``max_checks`` (VTs at once per host: the ceiling) and
    ``max_hosts``. Ids the manager returns are ``${...}`` placeholders (``gmp/apply.sh`` fills them in).
    A do-not-scan group gets no target and no task.

    Args:
        plan: The export plan.

    Returns:
        The commands, each a single well-formed GMP request.
    """
    out: list[GmpCommand] = []
    port_list = ET.Element("create_port_list")
    _sub(port_list, "name", "fragileprobe: all TCP ports without the printer ports 9100-9107")
    _sub(port_list, "comment", "raw print ports print whatever a scanner sends them")
    _sub(port_list, "port_range", "T:" + _PORTS_WITHOUT_PRINTERS)
    out.append(GmpCommand("00-create_port_list.xml", _gmp(port_list), "PORT_LIST_ID"))
    n = 0
    for g in plan.groups:
        s = g.settings
        if s.do_not_scan or not g.hosts:
            continue
        n += 1
        stem = f"{n:02d}-{g.slug}"
        if s.fragile:
            config = ET.Element("create_config")
            _sub(config, "copy", GMP_FULL_AND_FAST_CONFIG)
            _sub(config, "name", _policy_name(s))
            _sub(config, "comment", _description(s))
            _sub(config, "usage_type", "scan")
            config_var = _var_name("CONFIG_ID", g.slug)
            out.append(GmpCommand(f"{stem}-1-create_config.xml", _gmp(config), config_var))
            modify = ET.Element("modify_config", {"config_id": _var("CONFIG_ID", g.slug)})
            pref = _sub(modify, "preference")
            _sub(pref, "name", "safe_checks")
            _sub(pref, "value", _b64("yes" if s.safe_checks else "no"))
            out.append(GmpCommand(f"{stem}-2-modify_config.xml", _gmp(modify)))
        target = ET.Element("create_target")
        _sub(target, "name", f"fragileprobe: {g.name}")
        _sub(target, "comment", _description(s))
        _sub(target, "hosts", ",".join(g.hosts))
        excluded = plan.excluded_from(g)
        if excluded:
            _sub(target, "exclude_hosts", ",".join(excluded))
        _sub(target, "alive_tests", "Consider Alive")
        ET.SubElement(target, "port_list", {"id": _var("PORT_LIST_ID")})
        out.append(GmpCommand(f"{stem}-3-create_target.xml", _gmp(target), _var_name("TARGET_ID", g.slug)))
        task = ET.Element("create_task")
        _sub(task, "name", f"fragileprobe: {g.name}")
        _sub(task, "comment", _description(s))
        config_id = _var("CONFIG_ID", g.slug) if s.fragile else GMP_FULL_AND_FAST_CONFIG
        ET.SubElement(task, "config", {"id": config_id})
        ET.SubElement(task, "target", {"id": _var("TARGET_ID", g.slug)})
        ET.SubElement(task, "scanner", {"id": GMP_OPENVAS_SCANNER})
        if s.fragile:
            prefs = _sub(task, "preferences")
            for name, value in (("max_checks", s.sessions_per_host), ("max_hosts", s.hosts_in_parallel)):
                pref = _sub(prefs, "preference")
                _sub(pref, "scanner_name", name)
                _sub(pref, "value", str(value))
        out.append(GmpCommand(f"{stem}-4-create_task.xml", _gmp(task)))
    return tuple(out)


def _gmp_apply_script(commands: tuple[GmpCommand, ...]) -> str:
    """A shell script that sends the commands with gvm-cli in order, filling each ``${...}`` id."""
    lines = [
        "#!/bin/sh",
        "# Send fragileprobe's GMP commands to a Greenbone manager, in order, with gvm-cli (gvm-tools)",
        "# and envsubst (gettext). Usage:",
        "#   GVM_CLI='gvm-cli --gmp-username admin --gmp-password ... socket' sh apply.sh",
        "# Each create_* answers with the id of what it made; later commands refer to it as ${NAME}.",
        "set -eu",
        'cd "$(dirname "$0")"',
        ': "${GVM_CLI:=gvm-cli socket}"',
        'send() { xml=$(envsubst < "$1"); $GVM_CLI --xml "$xml"; }',
        'new_id() { sed -n \'s/.*[ ]id="\\([^"]*\\)".*/\\1/p\' | head -n 1; }',
    ]
    for c in commands:
        if c.defines is None:
            lines.append(f"send {c.file}")
        else:
            lines.append(f"{c.defines}=$(send {c.file} | new_id)")
            lines.append(f'[ -n "${c.defines}" ] || {{ echo "{c.file}: no id in the answer" >&2; exit 1; }}')
            lines.append(f"export {c.defines}")
    return "\n".join(lines) + "\n"


# --- Rapid7 InsightVM -------------------------------------------------------------------------------------


def _iso_seconds(seconds: float) -> str:
    return f"PT{seconds:g}S"


def insightvm_template_body(settings: GroupScanSettings) -> dict[str, Any]:
    """The JSON body of InsightVM's ``POST /api/3/scan_templates`` for one group's settings.

    ``maxScanProcesses`` (scan processes at once per asset: the ceiling), ``maxParallelAssets``,
    ``checks.unsafe`` false, ``discovery.service.tcp``: ``method`` "Full" (full connects, not SYN) and
    ``excludedPorts`` the printer ports; ``discovery.asset.ipFingerprintingEnabled`` false (no TCP/IP stack
    fingerprinting); ``discovery.performance``: ``scanDelay`` (the per-host spacing), ``parallelism``
    maximum the ceiling, ``retryLimit`` 1.

    Args:
        settings: The group's settings.

    Returns:
        A JSON-ready dict.
    """
    s = settings
    excluded = [f"{lo}-{hi}" if lo != hi else lo for lo, hi in s.exclude_ports]
    tcp: dict[str, Any] = {"ports": "well-known", "excludedPorts": excluded}
    body: dict[str, Any] = {
        "name": _policy_name(s)[:100],
        "description": _description(s),
        "checks": {"unsafe": not s.safe_checks},
        "discovery": {"service": {"tcp": tcp}},
    }
    if s.fragile:
        sessions = s.sessions_per_host or 1
        tcp["method"] = "Full"
        body["maxScanProcesses"] = sessions
        body["maxParallelAssets"] = s.hosts_in_parallel or 1
        body["checks"]["potential"] = False
        body["enableWindowsServices"] = False
        body["discovery"]["asset"] = {
            "ipFingerprintingEnabled": s.os_detection,
            "sendArpPings": True,
            "sendIcmpPings": True,
            "tcpPorts": [],
        }
        body["discovery"]["performance"] = {
            "parallelism": {"minimum": 1, "maximum": sessions},
            "scanDelay": {
                "minimum": _iso_seconds(1 / (s.rate_per_host or FRAGILE_RATE_PER_HOST)),
                "maximum": _iso_seconds(1 / (s.rate_per_host or FRAGILE_RATE_PER_HOST)),
            },
            "retryLimit": 1,
            "timeout": {"initial": "PT0.5S", "minimum": "PT0.5S", "maximum": _iso_seconds(FRAGILE_TIMEOUT_S)},
        }
    return body


# --- nmap and target lists --------------------------------------------------------------------------------


def nmap_commands(plan: ExportPlan, *, targets_dir: str = "../targets") -> str:
    """A shell script: per group its nmap line (reasoning and notes as comments), reading the target list.

    Args:
        plan: The export plan.
        targets_dir: Where the target lists are, relative to the script.

    Returns:
        The script text.
    """
    lines = [
        "#!/bin/sh",
        "# fragileprobe: one nmap connect scan per asset group (see docs/scanners/nmap.md).",
        'cd "$(dirname "$0")"',
    ]
    for g in plan.groups:
        lines.append("")
        lines.append(f"# --- {g.name}: {g.settings.source} ({len(g.hosts)} host(s))")
        if g.settings.do_not_scan:
            lines.append(f"# DO NOT SCAN: {DO_NOT_SCAN_NOTE}")
            continue
        if not g.hosts:
            lines.append("# no hosts to scan in this group (its hosts are scanned under a stricter group)")
            continue
        args = nmap_args(g.settings, hosts=len(g.hosts)) if g.settings.fragile else nmap_args(g.settings)
        body = args.text().splitlines()
        lines.extend(f"# {line.lstrip('# ')}" if line.startswith("#") else line for line in body[1:])
        lines.append(
            args.command(
                f"-iL {targets_dir}/{g.slug}.txt --excludefile "
                f"{targets_dir}/{g.slug}.exclude.txt -oA {g.slug}"
            )
        )
    return "\n".join(lines) + "\n"


def target_files(plan: ExportPlan) -> dict[str, str]:
    """Target and exclusion lists per group, the do-not-scan list and a CSV of every host.

    ``<group>.txt`` holds the hosts the group's scan covers, ``<group>.exclude.txt`` every other host of
    the plan (for a scan of the group's network range: nmap ``--excludefile``, a scanner's exclusion field),
    one address a line, nothing else (so every scanner and nmap ``-iL`` read them as they are).

    Args:
        plan: The export plan.

    Returns:
        File name -> text.
    """
    files: dict[str, str] = {}
    for g in plan.groups:
        files[f"{g.slug}.txt"] = "".join(f"{h}\n" for h in g.hosts)
        files[f"{g.slug}.exclude.txt"] = "".join(f"{h}\n" for h in plan.excluded_from(g))
    files["do-not-scan.txt"] = "".join(f"{h}\n" for h in plan.do_not_scan_hosts)
    assigned = {h: g for g in plan.groups for h in g.hosts}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "host",
            "scan_group",
            "groups",
            "fragile",
            "sessions_per_host",
            "do_not_scan",
            "medical_unknown",
            "zone",
            "model_key",
        ]
    )
    medical = set(plan.medical_unknown_hosts)
    for h in plan.hosts:
        scan = assigned.get(h)
        s = scan.settings if scan else None
        writer.writerow(
            [
                h,
                scan.name if scan else "",
                ";".join(x.name for x in plan.groups if h in x.members),
                "yes" if s and s.fragile else "no",
                s.sessions_per_host if s and s.sessions_per_host else "",
                "yes" if s and s.do_not_scan else "no",
                "yes" if h in medical else "no",
                plan.zones.get(h) or "",
                plan.models.get(h) or "",
            ]
        )
    files["targets.csv"] = buf.getvalue()
    return files


# --- all of it --------------------------------------------------------------------------------------------


def render_exports(plan: ExportPlan, formats: Iterable[str] = EXPORT_FORMATS) -> dict[str, str]:
    """Every file of the chosen formats: relative path -> text.

    Args:
        plan: The export plan.
        formats: A subset of :data:`EXPORT_FORMATS`.

    Returns:
        Paths like ``nessus/<group>.nessus``, ``gmp/00-create_port_list.xml``, ``insightvm/<group>.json``,
        ``nmap/commands.sh``, ``targets/<group>.txt``.

    Raises:
        ConfigError: An unknown format.
    """
    chosen = list(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in EXPORT_FORMATS]
    if unknown or not chosen:
        raise ConfigError(f"format: unknown {unknown or 'empty choice'}; known: {', '.join(EXPORT_FORMATS)}")
    files: dict[str, str] = {}
    if "nessus" in chosen:
        for g in plan.groups:
            files[f"nessus/{g.slug}.nessus"] = nessus_policy_xml(g.settings)
    if "gmp" in chosen:
        commands = gmp_commands(plan)
        files.update({f"gmp/{c.file}": c.xml for c in commands})
        files["gmp/apply.sh"] = _gmp_apply_script(commands)
    if "insightvm" in chosen:
        for g in plan.groups:
            body = insightvm_template_body(g.settings)
            files[f"insightvm/{g.slug}.json"] = json.dumps(body, indent=2) + "\n"
    if "nmap" in chosen:
        files["nmap/commands.sh"] = nmap_commands(plan)
    if "targets" in chosen or "nmap" in chosen:
        files.update({f"targets/{name}": text for name, text in target_files(plan).items()})
    return files


def write_exports(directory: str | Path, files: Mapping[str, str]) -> tuple[Path, ...]:
    """Write ``render_exports`` output under ``directory`` (created if missing); the only I/O here.

    Args:
        directory: The output directory.
        files: Relative path -> text.

    Returns:
        The paths written, in order.

    Raises:
        ConfigError: A path that would leave ``directory``, output over :data:`MAX_EXPORT_BYTES`, or a
            directory that cannot be written (the message names it).
    """
    from pathlib import Path

    root = Path(directory)
    total = sum(len(t.encode()) for t in files.values())
    if total > MAX_EXPORT_BYTES:
        raise ConfigError(f"out: {total} bytes of exports exceed the {MAX_EXPORT_BYTES}-byte bound")
    written: list[Path] = []
    try:
        root.mkdir(parents=True, exist_ok=True)
        base = root.resolve()
        for rel, text in files.items():
            path = (root / rel).resolve()
            if base not in path.parents:
                raise ConfigError(f"out: export path {rel!r} leaves {root}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            if rel.endswith(".sh"):
                path.chmod(0o755)
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"out: cannot write exports to {root}: {exc.strerror or exc}") from exc
    return tuple(written)
