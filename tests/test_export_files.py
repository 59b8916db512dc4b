"""fragileprobe.export files: what each scanner imports, parsed back and checked against its documented shape.

The inventory and the profiles come from a real ProfileStore; every file is parsed the way its scanner
reads it (XML with ElementTree, JSON with json, CSV with csv, target lists with nmap -sL when nmap is here).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import ConfigError, export
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._store import ProfileStore

if TYPE_CHECKING:
    from pathlib import Path

PUMP = "mis3000-aa388f080437"  # a measured model: fails at 7 -> stored ceiling below 7
MONITOR = "pm8000-0123456789ab"  # a measured model that crashed at one session: ceiling 0
NMAP = shutil.which("nmap")

# Field names of InsightVM API v3 ScanTemplate and its nested resources (rapid7 vm-console-client docs).
IVM_TEMPLATE = {
    "checks",
    "database",
    "description",
    "discovery",
    "discoveryOnly",
    "enableWindowsServices",
    "enhancedLogging",
    "id",
    "links",
    "maxParallelAssets",
    "maxScanProcesses",
    "name",
    "policy",
    "policyEnabled",
    "telnet",
    "vulnerabilityEnabled",
    "web",
    "webEnabled",
}
IVM_DISCOVERY = {"asset", "performance", "service"}
IVM_ASSET = {
    "collectWhoisInformation",
    "fingerprintMinimumCertainty",
    "fingerprintRetries",
    "ipFingerprintingEnabled",
    "sendArpPings",
    "sendIcmpPings",
    "tcpPorts",
    "treatTcpResetAsAsset",
    "udpPorts",
}
IVM_PERFORMANCE = {"packetRate", "parallelism", "retryLimit", "scanDelay", "timeout"}
IVM_TCP = {"additionalPorts", "excludedPorts", "links", "method", "ports"}
IVM_TCP_METHODS = {"SYN", "SYN+RST", "SYN+FIN", "SYN+ECE", "Full"}
IVM_TCP_PORTS = {"all", "well-known", "custom", "none"}
IVM_CHECKS = {"categories", "correlate", "individual", "links", "potential", "types", "unsafe"}
GMP_COMMANDS = {"create_port_list", "create_config", "modify_config", "create_target", "create_task"}


def _char(key: str, fails_at: int) -> Characterization:
    levels = [
        LevelResult(level=n, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0)
        for n in range(1, fails_at)
    ]
    levels.append(LevelResult(level=fails_at, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.5))
    return Characterization.from_trials(
        host="127.0.0.1",
        model_key=key,
        ladder=tuple(range(1, fails_at + 1)),
        trials=[TrialResult(index=0, levels=tuple(levels))],
    )


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    """A store with two measured models and an inventory of pumps, monitors, unknowns and workstations."""
    db = ProfileStore(tmp_path / "fp.db")
    db.save(_char(PUMP, 7))
    db.save(_char(MONITOR, 1))
    scan = db.start_scan(["10.0.0.0/24"])
    rows = [
        # measured pumps: their model group and "Medical Device?" (they look medical too)
        *[(f"10.0.1.{i}", PUMP, ("Medical Device?", PUMP), "medical") for i in range(1, 4)],
        # a measured pump on the office network
        ("10.0.9.7", PUMP, ("Medical Device?", PUMP), "general"),
        # monitors whose model crashed at one session
        *[(f"10.0.2.{i}", MONITOR, ("Medical Device?", MONITOR), "medical") for i in range(1, 3)],
        # unknown medical devices
        *[(f"10.0.3.{i}", "unknown-ffffffffffff", ("Medical Device?",), "medical") for i in range(1, 3)],
        # workstations
        *[(f"10.0.9.{i}", "win10-eeeeeeeeeeee", ("safe to scan (general)",), "general") for i in range(1, 5)],
    ]
    for host, key, groups, zone in rows:
        db.upsert_asset(host, scan_id=scan, seen_at_s=1.0, zone=zone, model_key=key, groups=groups)
    return db


@pytest.fixture
def plan(store: ProfileStore) -> export.ExportPlan:
    return export.plan_exports(store.assets(), store.profiles())


def _prefs(policy: ET.Element) -> dict[str, str]:
    return {p.findtext("name", ""): p.findtext("value", "") for p in policy.iter("preference")}


def _ports(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.removeprefix("T:").split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def test_plan_scans_every_host_once_and_keeps_medical_hosts_out_of_regular_scans(
    plan: export.ExportPlan, store: ProfileStore
) -> None:
    pump_ceiling = store.ceiling_for(PUMP)
    assert pump_ceiling is not None
    scanned = [h for g in plan.groups for h in g.hosts]
    assert sorted(scanned) == sorted(plan.hosts)  # each host exactly once
    regular = [h for g in plan.groups if not g.settings.fragile for h in g.hosts]
    assert regular == [f"10.0.9.{i}" for i in range(1, 5)]
    assert not set(regular) & set(plan.medical_unknown_hosts)
    # measured pumps are scanned within their measurement, unknown ones at the conservative 1
    pumps = plan.group(PUMP)
    assert pumps.settings.sessions_per_host == pump_ceiling
    assert pumps.hosts == ("10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.9.7")
    assert plan.group("Medical Device?").hosts == ("10.0.3.1", "10.0.3.2")
    assert plan.group("Medical Device?").settings.sessions_per_host == 1
    # a measured ceiling of 0 stays "do not scan"
    assert plan.group(MONITOR).settings.do_not_scan
    assert plan.do_not_scan_hosts == ("10.0.2.1", "10.0.2.2")
    with pytest.raises(ConfigError, match="no group"):
        plan.group("nope")


@dataclass(frozen=True)
class _Row:
    host: str
    groups: tuple[str, ...]
    model_key: str | None


@dataclass(frozen=True)
class _Profile:
    model_key: str
    ceiling: int | None


_GROUPS = ("Medical Device?", "m-aaaaaaaaaaaa", "m-bbbbbbbbbbbb", "safe to scan (a)", "Ward")


@given(
    st.lists(
        st.tuples(
            st.sets(st.sampled_from(_GROUPS), max_size=3),
            st.sampled_from(("m-aaaaaaaaaaaa", "m-bbbbbbbbbbbb", None)),
        ),
        max_size=25,
    ),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=0, max_value=12),
)
def test_every_host_is_scanned_once_never_in_a_regular_scan_when_fragile(
    hosts: list[tuple[set[str], str | None]], ceiling_a: int, ceiling_b: int
) -> None:
    rows = [_Row(f"10.1.0.{i}", tuple(sorted(g)), key) for i, (g, key) in enumerate(hosts)]
    profiles = [_Profile("m-aaaaaaaaaaaa", ceiling_a), _Profile("m-bbbbbbbbbbbb", ceiling_b)]
    plan = export.plan_exports(rows, profiles)
    scanned = [h for g in plan.groups for h in g.hosts]
    assert len(scanned) == len(set(scanned))
    assert set(scanned) == {r.host for r in rows if r.groups or r.model_key}
    fragile_members = {h for g in plan.groups if g.settings.fragile for h in g.members}
    for g in plan.groups:
        if not g.settings.fragile:
            assert not set(g.hosts) & fragile_members, g
        for h in g.hosts:
            assert h in g.members
    # no host is scanned above its own model's measurement; a measured 0 keeps it out of every scan
    limits = {"m-aaaaaaaaaaaa": ceiling_a, "m-bbbbbbbbbbbb": ceiling_b}
    for g in plan.groups:
        for h in g.hosts:
            key = next(r.model_key for r in rows if r.host == h)
            if key is None:
                continue
            assert g.settings.fragile
            if limits[key] == 0:
                assert g.settings.do_not_scan
                assert h in plan.do_not_scan_hosts
            else:
                assert not g.settings.do_not_scan
                assert g.settings.sessions_per_host == limits[key]
    files = export.render_exports(plan)
    for name, text in files.items():
        if name.endswith((".nessus", ".xml")):
            ET.fromstring(text)
        elif name.endswith(".json"):
            json.loads(text)


def test_nessus_policy_is_a_nessus_v2_policy_with_the_ceiling(
    plan: export.ExportPlan, store: ProfileStore
) -> None:
    files = export.render_exports(plan, ["nessus"])
    assert set(files) == {f"nessus/{g.slug}.nessus" for g in plan.groups}
    root = ET.fromstring(files[f"nessus/{plan.group(PUMP).slug}.nessus"])
    assert root.tag == "NessusClientData_v2"
    policy = root.find("Policy")
    assert policy is not None
    assert [c.tag for c in policy] == [
        "policyName",
        "policyComments",
        "Preferences",
        "FamilySelection",
        "IndividualPluginSelection",
    ]
    assert policy.find("Preferences/ServerPreferences") is not None
    assert policy.find("Preferences/PluginsPreferences") is not None
    prefs = _prefs(policy.find("Preferences/ServerPreferences"))  # type: ignore[arg-type]
    ceiling = store.ceiling_for(PUMP)
    assert prefs["host.max_simult_tcp_sessions"] == str(ceiling)
    assert int(prefs["max_checks"]) <= int(prefs["host.max_simult_tcp_sessions"])
    assert int(prefs["max_simult_tcp_sessions"]) == int(prefs["max_hosts"]) * int(ceiling or 0)
    assert (prefs["safe_checks"], prefs["stop_scan_on_disconnect"]) == ("yes", "yes")
    ports = _ports(prefs["port_range"])
    assert not ports & set(range(9100, 9108))
    assert ports | set(range(9100, 9108)) == set(range(1, 65536))
    status = {p.findtext("PluginName"): p.findtext("Status") for p in policy.iter("PluginItem")}
    assert status == {"Nessus TCP scanner": "enabled", "Nessus SYN scanner": "disabled"}
    printers = policy.find("Preferences/PluginsPreferences/item")
    assert printers is not None
    assert printers.findtext("preferenceName") == "Scan Network Printers"
    assert printers.findtext("selectedValue") == "no"
    regular = ET.fromstring(files[f"nessus/{plan.group('safe to scan (general)').slug}.nessus"])
    regular_prefs = _prefs(regular)
    assert "host.max_simult_tcp_sessions" not in regular_prefs  # scanner defaults
    assert regular_prefs["stop_scan_on_disconnect"] == "yes"
    assert not _ports(regular_prefs["port_range"]) & set(range(9100, 9108))
    dns = ET.fromstring(files[f"nessus/{plan.group(MONITOR).slug}.nessus"])
    assert (dns.findtext("Policy/policyName") or "").startswith("DO NOT SCAN")
    assert "ceiling of 0" in (dns.findtext("Policy/policyComments") or "")
    assert _prefs(dns)["host.max_simult_tcp_sessions"] == "1"  # the scanner's minimum, never 0


def test_gmp_commands_are_single_gmp_requests_in_a_runnable_order(
    plan: export.ExportPlan, store: ProfileStore
) -> None:
    commands = export.gmp_commands(plan)
    defined: set[str] = set()
    by_root: dict[str, list[ET.Element]] = {}
    for c in commands:
        root = ET.fromstring(c.xml)
        assert root.tag in GMP_COMMANDS
        used = set(re.findall(r"\$\{([A-Z0-9_]+)\}", c.xml))
        assert used <= defined, f"{c.file} uses {used - defined} before it is created"
        if c.defines:
            assert root.tag.startswith("create_")
            defined.add(c.defines)
        by_root.setdefault(root.tag, []).append(root)
    assert [c.file for c in commands] == sorted(c.file for c in commands)
    (port_list,) = by_root["create_port_list"]
    ports = _ports(port_list.findtext("port_range", ""))
    assert not ports & set(range(9100, 9108))
    assert len(ports) == 65535 - 8
    # fragile groups with hosts to scan (pumps, unknown medical devices) get a config copy and a task each;
    # the do-not-scan monitors get nothing
    configs = by_root["create_config"]
    assert {c.findtext("copy") for c in configs} == {export.GMP_FULL_AND_FAST_CONFIG}
    assert all(c.findtext("usage_type") == "scan" for c in configs)
    assert len(configs) == 2
    for modify in by_root["modify_config"]:
        assert modify.findtext("preference/name") == "safe_checks"
        assert base64.b64decode(modify.findtext("preference/value", "")) == b"yes"
    targets = {t.findtext("name"): t for t in by_root["create_target"]}
    assert set(targets) == {f"fragileprobe: {g}" for g in (PUMP, "Medical Device?", "safe to scan (general)")}
    pump_target = targets[f"fragileprobe: {PUMP}"]
    assert pump_target.findtext("hosts", "").split(",") == list(plan.group(PUMP).hosts)
    assert set(pump_target.findtext("exclude_hosts", "").split(",")) == set(plan.hosts) - set(
        plan.group(PUMP).hosts
    )
    regular_target = targets["fragileprobe: safe to scan (general)"]
    assert not set(regular_target.findtext("hosts", "").split(",")) & set(plan.medical_unknown_hosts)
    excluded = set(regular_target.findtext("exclude_hosts", "").split(","))
    assert set(plan.medical_unknown_hosts) <= excluded
    tasks = {t.findtext("name"): t for t in by_root["create_task"]}
    pump_task = tasks[f"fragileprobe: {PUMP}"]
    task_prefs = {p.findtext("scanner_name"): p.findtext("value") for p in pump_task.iter("preference")}
    assert task_prefs["max_checks"] == str(store.ceiling_for(PUMP))
    assert task_prefs["max_hosts"] == str(plan.group(PUMP).settings.hosts_in_parallel)
    scanner = pump_task.find("scanner")
    assert scanner is not None
    assert scanner.get("id") == export.GMP_OPENVAS_SCANNER


def test_gmp_apply_script_fills_each_id_from_the_answers(plan: export.ExportPlan, tmp_path: Path) -> None:
    """apply.sh run with a stand-in gvm-cli that answers like gvmd: every placeholder is filled in."""
    if shutil.which("envsubst") is None:
        pytest.skip("envsubst (gettext-base) is not installed")
    out = tmp_path / "out"
    export.write_exports(out, export.render_exports(plan, ["gmp"]))
    sent_dir = tmp_path / "sent"
    sent_dir.mkdir()
    fake = tmp_path / "gvm-cli"
    fake.write_text(  # answers like gvmd: <..._response status="201" id="..."/>, one new id per request
        "#!/bin/sh\n"
        f'n=$(ls "{sent_dir}" | wc -l); n=$((n + 1))\n'
        f'printf "%s" "$2" > "{sent_dir}/$(printf %03d $n)"\n'
        'echo "<x_response status=\\"201\\" status_text=\\"OK, resource created\\" id=\\"uuid-$n\\"/>"\n'
    )
    fake.chmod(0o755)
    run = subprocess.run(
        ["sh", str(out / "gmp" / "apply.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "GVM_CLI": str(fake)},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    sent = [p.read_text() for p in sorted(sent_dir.iterdir())]
    assert len(sent) == len(export.gmp_commands(plan))
    assert not any("${" in x for x in sent)
    roots = [ET.fromstring(x) for x in sent]
    # every id refers to the answer of the command that created it
    ids = {f"uuid-{i + 1}": r.tag for i, r in enumerate(roots)}
    for r in roots:
        if r.tag == "modify_config":
            assert ids[r.get("config_id", "")] == "create_config"
        if r.tag == "create_target":
            assert ids[r.find("port_list").get("id", "")] == "create_port_list"  # type: ignore[union-attr]
        if r.tag == "create_task":
            assert ids[r.find("target").get("id", "")] == "create_target"  # type: ignore[union-attr]


def test_insightvm_body_uses_the_documented_field_names(plan: export.ExportPlan, store: ProfileStore) -> None:
    files = export.render_exports(plan, ["insightvm"])
    bodies = {name: json.loads(text) for name, text in files.items()}
    assert set(bodies) == {f"insightvm/{g.slug}.json" for g in plan.groups}
    for body in bodies.values():
        assert set(body) <= IVM_TEMPLATE
        assert set(body["discovery"]) <= IVM_DISCOVERY
        assert set(body["checks"]) <= IVM_CHECKS
        tcp = body["discovery"]["service"]["tcp"]
        assert set(tcp) <= IVM_TCP
        assert tcp["ports"] in IVM_TCP_PORTS
        assert tcp["excludedPorts"] == ["9100-9107"]
        assert body["checks"]["unsafe"] is False
        assert len(body["name"]) <= 100
    pump = bodies[f"insightvm/{plan.group(PUMP).slug}.json"]
    assert pump["maxScanProcesses"] == store.ceiling_for(PUMP)
    assert pump["discovery"]["service"]["tcp"]["method"] in IVM_TCP_METHODS
    assert pump["discovery"]["service"]["tcp"]["method"] == "Full"
    assert set(pump["discovery"]["asset"]) <= IVM_ASSET
    assert pump["discovery"]["asset"]["ipFingerprintingEnabled"] is False
    perf = pump["discovery"]["performance"]
    assert set(perf) <= IVM_PERFORMANCE
    assert perf["parallelism"]["maximum"] == store.ceiling_for(PUMP)
    for duration in (*perf["scanDelay"].values(), *perf["timeout"].values()):
        match = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", duration)
        assert match, duration
        assert 0 <= float(match.group(1)) <= 30  # the API's documented range
    assert bodies[f"insightvm/{plan.group(MONITOR).slug}.json"]["name"].startswith("DO NOT SCAN")


def test_target_lists_and_csv(plan: export.ExportPlan, tmp_path: Path) -> None:
    files = export.render_exports(plan, ["targets"])
    assert all(name.startswith("targets/") for name in files)
    regular = plan.group("safe to scan (general)")
    listed = files[f"targets/{regular.slug}.txt"].splitlines()
    assert listed == list(regular.hosts)
    assert not set(listed) & set(plan.medical_unknown_hosts)
    assert not set(listed) & set(plan.fragile_hosts)
    excluded = files[f"targets/{regular.slug}.exclude.txt"].splitlines()
    assert set(plan.fragile_hosts) <= set(excluded)
    assert files["targets/do-not-scan.txt"].splitlines() == list(plan.do_not_scan_hosts)
    rows = list(csv.DictReader(io.StringIO(files["targets/targets.csv"])))
    assert [r["host"] for r in rows] == list(plan.hosts)
    by_host = {r["host"]: r for r in rows}
    assert by_host["10.0.9.7"]["scan_group"] == PUMP
    assert by_host["10.0.9.7"]["zone"] == "general"
    assert by_host["10.0.2.1"]["do_not_scan"] == "yes"
    assert by_host["10.0.3.1"]["medical_unknown"] == "yes"
    assert by_host["10.0.9.1"]["fragile"] == "no"
    assert by_host["10.0.9.1"]["sessions_per_host"] == ""


@pytest.mark.nmap
@pytest.mark.skipif(NMAP is None, reason="needs the nmap binary")
def test_nmap_reads_the_target_and_exclusion_lists(plan: export.ExportPlan, tmp_path: Path) -> None:
    """nmap -sL (list only, -n: no DNS, nothing is sent) over the whole inventory with a group's exclusion
    list leaves exactly the group's targets."""
    assert NMAP is not None
    export.write_exports(tmp_path, export.render_exports(plan, ["targets"]))
    everything = tmp_path / "all.txt"
    everything.write_text("".join(f"{h}\n" for h in plan.hosts))
    for g in plan.groups:
        out = subprocess.run(
            [
                NMAP,
                "-sL",
                "-n",
                "-iL",
                str(everything),
                "--excludefile",
                str(tmp_path / "targets" / f"{g.slug}.exclude.txt"),
                "-oG",
                "-",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        listed = sorted(re.findall(r"^Host: (\S+)", out.stdout, flags=re.MULTILINE))
        assert listed == sorted(g.hosts), g.name


def test_nmap_commands_read_the_lists_and_carry_the_reasoning(plan: export.ExportPlan) -> None:
    script = export.render_exports(plan, ["nmap"])["nmap/commands.sh"]
    pumps = plan.group(PUMP)
    line = next(x for x in script.splitlines() if x.startswith("nmap ") and f"{pumps.slug}.txt" in x)
    args = line.split()
    assert args[args.index("--max-parallelism") + 1] == str(pumps.settings.sessions_per_host)
    assert args[args.index("--min-hostgroup") + 1] == str(len(pumps.hosts))
    assert f"targets/{pumps.slug}.exclude.txt" in line
    assert "# why: nmap 7.93" in script
    assert "# DO NOT SCAN" in script
    assert not any(x.startswith("nmap ") and plan.group(MONITOR).slug in x for x in script.splitlines())


def test_write_exports_writes_inside_the_directory_only(plan: export.ExportPlan, tmp_path: Path) -> None:
    files = export.render_exports(plan)
    written = export.write_exports(tmp_path / "out", files)
    assert len(written) == len(files)
    for path in written:
        rel = path.relative_to((tmp_path / "out").resolve()).as_posix()
        assert path.read_text() == files[rel]
    with pytest.raises(ConfigError, match="leaves"):
        export.write_exports(tmp_path / "out", {"../escape.txt": "x"})
    assert not (tmp_path / "escape.txt").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write"):
        export.write_exports(blocker, files)


@pytest.mark.parametrize("bad", [["nessus", "pdf"], []])
def test_unknown_formats_are_refused(plan: export.ExportPlan, bad: list[str]) -> None:
    with pytest.raises(ConfigError, match="format"):
        export.render_exports(plan, bad)


def test_an_empty_inventory_still_writes_the_shared_files() -> None:
    plan = export.plan_exports([])
    files = export.render_exports(plan)
    assert "gmp/00-create_port_list.xml" in files
    assert files["targets/do-not-scan.txt"] == ""


def test_group_names_become_distinct_file_names_that_never_overwrite_shared_files() -> None:
    rows = [
        _Row("10.2.0.1", ("do-not-scan",), None),
        _Row("10.2.0.2", ("Ward A",), None),
        _Row("10.2.0.3", ("ward-a",), None),
        _Row("10.2.0.4", ("../../etc",), None),
    ]
    plan = export.plan_exports(rows)
    slugs = [g.slug for g in plan.groups]
    assert len({s.lower() for s in slugs}) == len(slugs)
    assert "do-not-scan" not in slugs
    assert all("/" not in s and not s.startswith(".") for s in slugs)
    files = export.render_exports(plan, ["targets"])
    assert files["targets/do-not-scan.txt"] == ""  # the real list, not the group's


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=40))
def test_no_file_carries_a_per_host_number_above_the_ceiling(ceiling: int, hosts: int) -> None:
    """Whatever the measured ceiling, every per-device number in every file is that ceiling or below; a
    ceiling of 0 is DO NOT SCAN with the scanners' minimum of 1 and no GMP target, task or nmap line."""
    key = "m-cccccccccccc"
    rows = [_Row(f"10.3.0.{i}", (key,), key) for i in range(hosts)]
    plan = export.plan_exports(rows, [_Profile(key, ceiling)])
    group = plan.group(key)
    limit = max(ceiling, 1)
    files = export.render_exports(plan)
    prefs = _prefs(ET.fromstring(files[f"nessus/{group.slug}.nessus"]))
    assert int(prefs["host.max_simult_tcp_sessions"]) == limit
    assert int(prefs["max_checks"]) <= limit
    body = json.loads(files[f"insightvm/{group.slug}.json"])
    assert body["maxScanProcesses"] == limit
    assert body["discovery"]["performance"]["parallelism"]["maximum"] == limit
    tasks = [ET.fromstring(c.xml) for c in export.gmp_commands(plan) if c.file.endswith("create_task.xml")]
    fragile_tasks = [t for t in tasks if t.findtext("name") == f"fragileprobe: {key}"]
    lines = [x for x in files["nmap/commands.sh"].splitlines() if x.startswith("nmap ") and group.slug in x]
    if ceiling == 0:
        assert group.settings.do_not_scan
        assert not fragile_tasks
        assert not lines
        assert files["targets/do-not-scan.txt"].split() == sorted(r.host for r in rows)
        return
    (task,) = fragile_tasks
    task_prefs = {p.findtext("scanner_name"): p.findtext("value") for p in task.iter("preference")}
    assert int(task_prefs["max_checks"] or 0) == ceiling
    (line,) = lines
    args = line.split()
    assert int(args[args.index("--max-parallelism") + 1]) == ceiling
    assert int(args[args.index("--max-hostgroup") + 1]) == min(hosts, 256)
