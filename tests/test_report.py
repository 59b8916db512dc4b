"""Reports: HTML and Markdown for real characterization and discovery runs, plots, notebook views, and the
HTML rendered by a real browser (headless Chromium) with its plot."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import fragileprobe as fp
from conftest import allocate_loopback
from fragileprobe import _report
from fragileprobe._characterize import characterize
from fragileprobe._discovery_run import discover
from fragileprobe._groups import Zone, Zones
from fragileprobe._recovery import emulator_recovery
from fragileprobe.emulator import EmulatedPump, Fleet

if TYPE_CHECKING:
    from pathlib import Path

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def _characterize_pump(host: str) -> fp.Characterization:
    async with EmulatedPump(
        host, seed=2026, threshold=7, jitter=0, boot_delay_s=0.1, syn_watch=False
    ) as pump:
        target = fp.Target(
            host,
            ports=tuple(pump.ports.values()),
            heartbeat=fp.HttpHeartbeat(port=pump.web_port, timeout_s=0.3),
            name="ward 3 <pump>",
        )
        return await characterize(
            target,
            scope=fp.Scope([host]),
            ladder=(1, 2, 5, 7, 10),
            dwell_s=0.3,
            trials=2,
            interval_s=0.1,
            hold_s=0.1,
            healthy_beats=2,
            baseline_beats=3,
            recovery=emulator_recovery(pump),
            name="ward 3 <pump>",
        )


async def _discover_ward(pump_host: str, medical_host: str, office_host: str) -> fp.DiscoveryReport:
    config = {
        "device": [
            {"host": pump_host, "model": "infusion-pump", "seed": 1},
            {"host": medical_host, "model": "infusion-pump", "seed": 2},
            {"host": office_host, "model": "workstation", "seed": 3},
        ]
    }
    async with Fleet(config, control_port=None) as fleet:
        devices = list(fleet.devices.values())
        ports = sorted({b for d in devices for b in d.ports.values()})
        aliases = {b: p for d in devices for p, b in d.ports.items() if b != p}
        zones = Zones(
            [
                Zone(name="Office LAN", kind="general", ranges=(pump_host, office_host)),
                Zone(name="ICU devices", kind="medical", ranges=(medical_host,)),
            ]
        )
        hosts = [pump_host, medical_host, office_host]
        return await discover(
            hosts,
            scope=fp.Scope(hosts),
            ports=ports,
            zones=zones,
            port_aliases=aliases,
            rate_per_host=50.0,
            banner_timeout_s=0.3,
        )


@pytest.fixture(scope="module")
def char() -> fp.Characterization:
    """One real characterization of an emulated pump that crashes at exactly 7 sessions."""
    host = allocate_loopback()
    return anyio.run(_characterize_pump, host)


@pytest.fixture(scope="module")
def ward() -> tuple[fp.DiscoveryReport, str]:
    """One real discovery of a pump on the office network, its twin on the ICU network, a workstation."""
    pump, medical, office = allocate_loopback(), allocate_loopback(), allocate_loopback()
    return anyio.run(_discover_ward, pump, medical, office), pump


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_characterization_html_is_self_contained_with_findings_plot_settings_evidence(
    char: fp.Characterization,
) -> None:
    """The HTML report states the ceiling in plain words, embeds its plots, names every scanner's
    settings and lists every level tested; it loads nothing from outside."""
    # T = 7 counts the heartbeat too: 6 probe sessions + 1 heartbeat can already hang it.
    assert char.failed_at in (6, 7)
    assert char.safe_ceiling is not None
    assert 1 <= char.safe_ceiling < char.failed_at
    page = _report.characterization_html(char)
    assert f"Safe ceiling for ward 3 &lt;pump&gt;: {char.safe_ceiling} simultaneous sessions" in page
    assert f"it stopped answering at {char.failed_at} simultaneous sessions" in page
    pngs = _embedded_pngs(page)
    assert len(pngs) == 2  # latency against concurrency, and the heartbeat timeline
    assert all(p.startswith(PNG_SIGNATURE) and len(p) > 5000 for p in pngs)
    for scanner in ("nmap -sT", "Nessus policy", "Greenbone/OpenVAS", "Rapid7 InsightVM"):
        assert scanner in page
    assert f"--max-parallelism {char.safe_ceiling}" in page
    assert page.count('<tr class="failed">') == char.crashes
    assert page.count("<tr class=") == char.levels_tested
    # Self-contained: no scripts, no stylesheets or images from elsewhere, nothing to fetch.
    assert "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # The user-given name is escaped, never markup.
    assert "<pump>" not in page


def test_characterization_markdown_has_the_same_story(char: fp.Characterization) -> None:
    md = _report.characterization_markdown(char, plot_file="pump.png")
    assert md.startswith("# fragileprobe characterization: ward 3 <pump>")
    assert f"**Safe ceiling for ward 3 <pump>: {char.safe_ceiling} simultaneous sessions.**" in md
    assert "![heartbeat latency against concurrency](pump.png)" in md
    assert "## Recommended scanner settings" in md
    assert "Nessus policy:" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_rows) == 1 + char.levels_tested  # header + one row per level test
    # The heartbeats leading up to each crash, as evidence.
    assert md.count("then silence") + md.count("no heartbeat answered at this level") == char.crashes


def test_write_report_writes_html_markdown_and_png(char: fp.Characterization, tmp_path: Path) -> None:
    files = fp.write_report(char, tmp_path / "pump")
    assert files.kind == "characterization"
    assert files.html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "(pump.png)" in files.markdown.read_text(encoding="utf-8")
    assert files.png is not None
    assert files.png.read_bytes().startswith(PNG_SIGNATURE)


def test_report_source_round_trips_characterization_json(char: fp.Characterization, tmp_path: Path) -> None:
    path = tmp_path / "char.json"
    path.write_text(json.dumps({"characterization": char.to_dict()}), encoding="utf-8")
    loaded = _report.load_report_source(str(path))
    assert isinstance(loaded, fp.Characterization)
    assert loaded.safe_ceiling == char.safe_ceiling
    assert loaded.trials == char.trials


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"something": 1}', "neither a characterization"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_report_source_rejects_other_files_naming_them(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(content)
    with pytest.raises(fp.ConfigError, match=rf"^report input {re.escape(str(path))}: {message}"):
        _report.load_report_source(str(path))


def test_report_source_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(fp.ConfigError, match="cannot read"):
        _report.load_report_source(str(tmp_path / "missing.json"))


def test_discovery_report_shows_the_alert_groups_and_settings(ward: tuple[fp.DiscoveryReport, str]) -> None:
    """The pump on the office network is an alert; medical-looking hosts get the most conservative scan
    settings and a note to characterize them first; the workstation's group keeps scanner defaults."""
    report, pump = ward
    assert [a.host for a in report.alerts] == [pump]
    page = _report.discovery_html(report)
    assert f"<strong>{pump}</strong>" in page
    assert "WRONG ZONE" in page
    assert "Medical Device?: at most 1 session(s) per host" in page
    assert "characterize one device of each model" in page
    assert "safe to scan (Office LAN): scanner defaults" in page
    assert len(_embedded_pngs(page)) == 1
    md = _report.discovery_markdown(report)
    assert f"- **{pump}**" in md
    assert "## Recommended scanner settings per group" in md
    # From the JSON form (discover --json) the same report comes out.
    assert _report.discovery_html(json.loads(report.to_json()), plot=False).count("WRONG ZONE") == 1


def test_notebook_views_render_summaries(
    char: fp.Characterization, ward: tuple[fp.DiscoveryReport, str]
) -> None:
    html_char = char._repr_html_()
    assert "Safe ceiling for ward 3 &lt;pump&gt;" in html_char
    assert "<table>" in html_char
    report, pump = ward
    html_disc = report._repr_html_()
    assert pump in html_disc
    assert "WRONG ZONE" in html_disc


def test_dataframes_have_one_row_per_level_and_per_asset(
    char: fp.Characterization, ward: tuple[fp.DiscoveryReport, str]
) -> None:
    df = char.to_dataframe()
    assert len(df) == char.levels_tested
    assert set(df["outcome"]) >= {"passed", "failed"}
    report, _ = ward
    assets = report.to_dataframe()
    assert len(assets) == len(report.assets)
    assert int(assets["alert"].sum()) == 1


def test_plots_draw_crashes_and_the_ceiling(char: fp.Characterization) -> None:
    fig = char.plot()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"safe ceiling {char.safe_ceiling}" in labels
    assert f"first crash {char.failed_at}" in labels
    timeline = _report.timeline_plot(char)
    assert timeline.axes[0].get_ylabel() == "heartbeat latency (ms)"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _decode_png(path: Path) -> Any:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian package 'chromium')")
def test_html_report_renders_with_its_plot_in_headless_chromium(
    char: fp.Characterization, tmp_path: Path
) -> None:
    """A real browser renders the report: the screenshot has many colours, and the plot (where the page
    puts it) is not blank."""
    import numpy as np

    files = fp.write_report(char, tmp_path / "report")
    shot = tmp_path / "shot.png"
    chromium = _chromium()
    assert chromium is not None
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            files.html.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert shot.exists(), proc.stderr[-2000:]
    pixels = _decode_png(shot)
    assert pixels.shape[0] >= 1900
    assert pixels.shape[1] >= 1100
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = np.unique(rgb, axis=0)
    assert len(colours) > 200  # text, cards, a plot with lines and markers: far from a blank page
    # The latency plot sits below the findings, in the left part of the page (see the layout in
    # characterization_html): that region is mostly drawn, not white.
    plot_region = pixels[700:1200, 40:700, :3]
    non_white = (plot_region < 0.95).any(axis=2).mean()
    assert non_white > 0.05


# --- the report layer's shape: split by output, the records without views ----------------------------------

# Every name another module or test imports from ``fragileprobe._report`` (grep "_report import\|_report\.").
REPORT_NAMES = (
    "MEDICAL_GROUP",
    "ReportFiles",
    "characterization_html",
    "characterization_markdown",
    "characterization_repr_html",
    "discovery_dict_from_store",
    "discovery_html",
    "discovery_markdown",
    "discovery_plot",
    "discovery_repr_html",
    "discovery_settings",
    "figure_png",
    "latency_plot",
    "load_report_source",
    "settings_for_characterization",
    "shield_section_html",
    "shield_timeline",
    "timeline_plot",
    "write_report",
)


def test_the_report_package_still_offers_every_name_others_import() -> None:
    assert sorted(_report.__all__) == sorted(REPORT_NAMES)
    for name in REPORT_NAMES:
        assert getattr(_report, name) is not None
    assert fp.write_report is _report.write_report
    assert fp.ReportFiles is _report.ReportFiles


def test_records_views_are_thin_delegations_to_the_report_layer(
    char: fp.Characterization, ward: tuple[fp.DiscoveryReport, str]
) -> None:
    """``_repr_html_`` (Jupyter's hook) and ``plot()`` (the README tour) draw nothing themselves."""
    assert char._repr_html_() == _report.characterization_repr_html(char)
    report, _ = ward
    assert report._repr_html_() == _report.discovery_repr_html(report)
    labels = [t.get_text() for t in char.plot().axes[0].get_legend().get_texts()]
    assert labels == [t.get_text() for t in _report.latency_plot(char).axes[0].get_legend().get_texts()]


def _report_imports(path: Path) -> list[str]:
    """The functions of ``path`` that import the report layer (or a drawing library)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for inner in ast.walk(node):
            names = [inner.module or ""] if isinstance(inner, ast.ImportFrom) else []
            names += [a.name for a in inner.names] if isinstance(inner, ast.Import) else []
            if any(n.startswith(("fragileprobe._report", "matplotlib")) for n in names):
                found.append(node.name)
    return sorted(found)


def test_record_modules_hold_no_views_but_the_allowed_delegations() -> None:
    """The records' only ties to the report layer are the allow-listed delegations (docs/CONTRACTS.md)."""
    import pathlib

    src = pathlib.Path(fp.__file__).parent
    assert _report_imports(src / "_profile.py") == ["_repr_html_", "plot"]
    assert _report_imports(src / "_discovery.py") == ["_repr_html_"]
    for module in ("_profile.py", "_discovery.py"):
        text = (src / module).read_text(encoding="utf-8")
        assert "<table" not in text
        assert "<div" not in text
