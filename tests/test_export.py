"""fragileprobe.export: safe scan settings per group, as data and as text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import ConfigError, export
from fragileprobe._discovery import Asset, DiscoveryReport
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._store import ProfileStore

if TYPE_CHECKING:
    from pathlib import Path


def stored(tmp_path: Path, key: str, fails_at: int) -> ProfileStore:
    store = ProfileStore(tmp_path / "fp.db")
    levels = [
        LevelResult(level=n, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0)
        for n in range(1, fails_at)
    ]
    levels.append(LevelResult(level=fails_at, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.5))
    store.save(
        Characterization.from_trials(
            host="127.0.0.1",
            model_key=key,
            ladder=tuple(range(1, fails_at + 1)),
            trials=[TrialResult(index=0, levels=tuple(levels))],
        )
    )
    return store


def test_fragile_group_gets_its_models_stored_ceiling(tmp_path: Path) -> None:
    store = stored(tmp_path, "goahead-webs-aa388f080437", fails_at=7)
    ceiling = store.ceiling_for("goahead-webs-aa388f080437")
    assert ceiling is not None
    s = export.template_for_group("goahead-webs-aa388f080437", store)
    assert s.fragile
    assert s.sessions_per_host == ceiling
    assert not s.characterize_first
    assert not s.os_detection
    assert not s.service_detection
    assert s.exclude_ports == ((9100, 9107),)
    profile = store.profile("goahead-webs-aa388f080437")
    assert export.nmap_args(profile) == export.nmap_args(ceiling)


def test_unknown_medical_devices_get_the_most_conservative_setting_and_a_note() -> None:
    s = export.template_for_group("Medical Device?")
    assert s.sessions_per_host == export.CONSERVATIVE_CEILING == 1
    assert s.checks_per_host == 1
    assert s.characterize_first
    assert any("characterize" in n for n in s.notes)
    text = s.text()
    assert "Max simultaneous TCP sessions per host: 1" in text
    assert "max_checks = 1" in text
    assert "characterize" in export.nmap_args(s).text()


def test_safe_to_scan_group_keeps_defaults_but_excludes_printer_ports() -> None:
    s = export.template_for_group("safe to scan (office)")
    assert not s.fragile
    assert s.sessions_per_host is None
    assert "--exclude-ports" in export.nmap_args(s).args
    assert "9100-9107" in export.nmap_args(s).args
    assert "-O" not in export.nmap_args(s).args
    assert export.nessus_policy(s).stop_scanning_unresponsive_hosts


def test_nmap_args_follow_nmap_793_global_parallelism_per_host_delay_one_group() -> None:
    """--max-parallelism k (global for a connect scan, so it caps every device), --scan-delay per host,
    one host group for the asset group, --host-timeout, printer ports excluded; no -O, no -sV."""
    nmap = export.nmap_args(5, hosts=33)
    args = nmap.args
    assert args[0] == "-sT"
    assert args[args.index("--max-parallelism") + 1] == "5"
    assert args[args.index("--scan-delay") + 1] == "100ms"  # 10 connects/s per host
    assert args[args.index("--min-hostgroup") + 1] == args[args.index("--max-hostgroup") + 1] == "33"
    assert "--host-timeout" in args
    assert "--max-retries" in args
    assert "--max-rate" not in args  # global: it would throttle the group, not each host
    assert args[args.index("--exclude-ports") + 1] == "9100-9107"
    for forbidden in ("-O", "-sV", "-A", "-sS"):
        assert forbidden not in args
    assert "caps every device at 5" in nmap.reasoning
    assert "misleading" in nmap.reasoning
    text = nmap.text().splitlines()
    assert text[0] == nmap.command()
    assert text[1].startswith("# why: nmap 7.93")


@pytest.mark.parametrize(("hosts", "group"), [(None, 64), (1, 1), (33, 33), (256, 256), (1000, 256)])
def test_nmap_host_group_holds_the_asset_group_up_to_a_bound(hosts: int | None, group: int) -> None:
    assert export.nmap_host_group(hosts) == group
    args = export.nmap_args(3, hosts=hosts).args
    assert args[args.index("--max-hostgroup") + 1] == str(group)


@pytest.mark.parametrize("bad", [0, -1, True, "3"])
def test_bad_host_counts_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="hosts"):
        export.nmap_args(3, hosts=bad)  # type: ignore[arg-type]


@given(st.floats(min_value=0.01, max_value=1000.0))
def test_the_scan_delay_is_never_faster_than_the_rate(rate: float) -> None:
    s = export.template_for_group("Medical Device?")
    import dataclasses

    args = export.nmap_args(dataclasses.replace(s, rate_per_host=rate)).args
    delay_ms = int(args[args.index("--scan-delay") + 1].removesuffix("ms"))
    assert delay_ms / 1000 >= 1 / rate


def test_nessus_openvas_insightvm_values_for_a_ceiling() -> None:
    nessus = export.nessus_policy(4)
    assert nessus.max_simultaneous_tcp_sessions_per_host == 4
    assert nessus.max_checks_per_host == 2  # Tenable's OT setting, below the ceiling
    assert nessus.safe_checks
    assert nessus.stop_scanning_unresponsive_hosts
    assert "full connect" in nessus.port_scanner.lower()
    ov = export.openvas_settings(4)
    assert (ov.max_checks, ov.safe_checks, ov.excluded_ports) == (4, True, "9100-9107")
    assert ov.max_hosts is not None
    ivm = export.insightvm_template(4)
    assert ivm.maximum_scan_processes_per_asset == 4
    assert ivm.tcp_discovery_method == "Full connection"
    assert not ivm.os_fingerprinting
    for record in (nessus, ov, ivm):
        assert record.to_dict()
        assert record.text()


def test_user_group_takes_the_lowest_ceiling_of_its_assets_or_conservative() -> None:
    def asset(host: str, ceiling: int | None, groups: tuple[str, ...]) -> Asset:
        return Asset(
            host=host,
            open_ports=(22,),
            services=(),
            os_family="unknown",
            os_evidence=(),
            zone="z",
            zone_kind="general",
            model_key="m-0",
            known_model="m" if ceiling else None,
            ceiling=ceiling,
            groups=groups,
            medical=ceiling is not None or "Medical Device?" in groups,
        )

    mixed = [asset("a", 6, ("Ward",)), asset("b", 3, ("Ward",))]
    assert export.template_for_group("Ward", assets=mixed).sessions_per_host == 3
    unknown_medical = [asset("c", None, ("Ward", "Medical Device?"))]
    s = export.template_for_group("Ward", assets=unknown_medical)
    assert s.sessions_per_host == 1
    assert s.characterize_first
    assert not export.template_for_group("Office", assets=[asset("d", None, ("Office",))]).fragile


def test_settings_for_groups_covers_every_group_of_a_report() -> None:
    report = DiscoveryReport(
        assets=(),
        groups={"Medical Device?": [], "safe to scan (office)": []},
        alerts=(),
        unresponsive=(),
        new=(),
        gone=(),
        moved=(),
        hosts_scanned=0,
        hosts_resumed=0,
        wall_time_s=0.0,
    )
    out = export.settings_for_groups(report)
    assert set(out) == {"Medical Device?", "safe to scan (office)"}
    assert out["Medical Device?"].fragile


@pytest.mark.parametrize("bad", [-1, True, "5", 2.5, None])
def test_bad_ceilings_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError):
        export.nmap_args(bad)


def test_a_ceiling_of_zero_says_do_not_scan_in_every_scanner() -> None:
    """A measured ceiling of 0 is not "scanner default": every rendering says keep the hosts out, and the
    numbers are the scanner's minimum (1), never 0."""
    nmap = export.nmap_args(0)
    assert nmap.args[nmap.args.index("--max-parallelism") + 1] == "1"
    renderings = (nmap, export.nessus_policy(0), export.openvas_settings(0), export.insightvm_template(0))
    for rendering in renderings:
        assert any("ceiling of 0" in n for n in rendering.notes), rendering
    assert export.nessus_policy(0).max_simultaneous_tcp_sessions_per_host == 1


@given(st.integers(min_value=1, max_value=10_000))
def test_every_scanner_stays_within_the_ceiling(ceiling: int) -> None:
    """No exported per-host number is ever above the ceiling it was made from."""
    args = export.nmap_args(ceiling).args
    assert int(args[args.index("--max-parallelism") + 1]) == ceiling
    nessus = export.nessus_policy(ceiling)
    assert nessus.max_checks_per_host is not None
    assert nessus.max_checks_per_host <= ceiling
    assert nessus.max_simultaneous_tcp_sessions_per_host == ceiling
    assert export.openvas_settings(ceiling).max_checks == ceiling
    assert export.insightvm_template(ceiling).maximum_scan_processes_per_asset == ceiling
