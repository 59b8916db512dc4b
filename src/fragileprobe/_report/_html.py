"""The HTML reports: one self-contained page each (inline CSS, plots as base64 PNG, no scripts, no external
assets, so it can be mailed or attached to a ticket as it is), and the compact notebook views
(``_repr_html_``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from fragileprobe._report._content import (
    _ASSET_COLUMNS,
    _LEVEL_COLUMNS,
    _asset_rows,
    _discovery_findings,
    _findings,
    _level_rows,
    _scanned_text,
    _unknown_medical,
    _verdict,
)
from fragileprobe._report._data import _discovery_dict, _discovery_groups, _when
from fragileprobe._report._markup import _e, _html_page, _table
from fragileprobe._report._plots import _png_b64, discovery_plot, latency_plot, timeline_plot
from fragileprobe._report._settings import discovery_settings, settings_for_characterization
from fragileprobe._report._shield import shield_section_html

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fragileprobe._profile import Characterization
    from fragileprobe.export import GroupScanSettings

__all__ = ["characterization_html", "characterization_repr_html", "discovery_html", "discovery_repr_html"]

# Assets listed in a notebook summary before "... and N more": a /24 fits in a report, not in a cell.
REPR_MAX_ROWS: Final = 20


def _settings_html(settings: GroupScanSettings | None, *, group: str | None = None) -> str:
    if settings is None:
        return (
            "<p><strong>No safe setting:</strong> do not scan this device with a vulnerability scanner.</p>"
        )
    label = _e(group or settings.group)
    summary = (
        f"at most {settings.sessions_per_host} session(s) per host"
        if settings.sessions_per_host
        else "scanner defaults"
    )
    return f"<h3>{label}: {_e(summary)}</h3><p>{_e(settings.source)}</p><pre>{_e(settings.text())}</pre>"


def characterization_html(char: Characterization, *, plot: bool = True) -> str:
    """The characterization report as one self-contained HTML page.

    Args:
        char: The characterization.
        plot: Embed the plots (needs matplotlib); False gives a text-only report.
    """
    head, advice, cls = _verdict(char)
    cards = [
        (str(char.safe_ceiling) if char.safe_ceiling is not None else "-", "safe ceiling (sessions)", cls),
        (
            str(char.failed_at) if char.failed_at is not None else "none",
            "first crash at",
            "bad" if char.failed_at else "ok",
        ),
        (str(char.crashes), "crashes (power cycles)", "warn" if char.crashes else "ok"),
        (str(len(char.trials)), "trials", ""),
        (f"{char.wall_time_s:.1f} s", "test duration", ""),
    ]
    body = [
        f"<h1>Characterization: {_e(char.name or char.host)}</h1>",
        f'<p class="sub">Device {_e(char.host)} &middot; model <code>{_e(char.model_key or "unknown")}'
        f"</code> &middot; started {_e(_when(char.started_at_epoch_s))}</p>",
        '<div class="verdict">',
        *(
            f'<div class="card {c}"><div class="n">{_e(n)}</div><div class="l">{_e(lbl)}</div></div>'
            for n, lbl, c in cards
        ),
        "</div>",
        f"<p><strong>{_e(head)}.</strong> {_e(advice)}</p>",
        "<h2>Findings</h2>",
        '<ul class="findings">',
        *(f"<li>{_e(f)}</li>" for f in _findings(char)),
        "</ul>",
    ]
    if plot:
        body += [
            "<h2>Heartbeat latency against concurrency</h2>",
            "<p>Median heartbeat latency per level and trial; red crosses: levels at which the device "
            "stopped answering; dashed green line: the recommended ceiling; shaded: from the first crash on, "
            "where scanners must never go.</p>",
            f'<img alt="heartbeat latency against concurrency" '
            f'src="data:image/png;base64,{_png_b64(latency_plot(char))}">',
        ]
    body += ["<h2>Recommended scanner settings</h2>", _settings_html(settings_for_characterization(char))]
    body += [
        "<h2>Evidence</h2>",
        "<p>Every level of every trial in the order tested. A level passes when the "
        "device answers its heartbeat through the whole dwell and fails the moment the watchdog declares "
        "it down (all sessions are cancelled at once).</p>",
        _table(_LEVEL_COLUMNS, _level_rows(char), row_class="outcome"),
    ]
    if plot:
        body += [
            "<h3>Heartbeat timeline</h3>",
            f'<img alt="heartbeat timeline" src="data:image/png;base64,{_png_b64(timeline_plot(char))}">',
        ]
    body.append(
        f'<p class="sub">Run id {_e(char.run_id or "-")}; stop reason {_e(char.stop_reason)}; '
        f"margin {_e(char.margin_text)}.</p>"
    )
    return _html_page(f"fragileprobe characterization: {char.name or char.host}", "".join(body))


def characterization_repr_html(char: Characterization) -> str:
    """A compact HTML summary for notebooks (``Characterization._repr_html_``)."""
    head, advice, cls = _verdict(char)
    color = {"ok": "#1e8449", "bad": "#c0392b", "warn": "#b9770e"}.get(cls, "#1d2430")
    rows = "".join(
        f"<tr><td>{r['trial']}</td><td>{r['level']}</td><td>{_e(r['outcome'])}</td><td>{_e(r['median'])}</td>"
        "</tr>"
        for r in _level_rows(char)[: REPR_MAX_ROWS * 2]
    )
    return (
        f'<div><p style="color:{color};font-weight:bold">{_e(head)}</p><p>{_e(advice)}</p>'
        f"<pre>{_e(char.summary())}</pre><details><summary>levels tested</summary>"
        f"<table><tr><th>trial</th><th>sessions</th><th>outcome</th><th>latency median</th></tr>{rows}"
        "</table></details></div>"
    )


def discovery_html(
    report: Any, *, settings: Mapping[str, GroupScanSettings] | None = None, plot: bool = True
) -> str:
    """The discovery report as one self-contained HTML page."""
    data = _discovery_dict(report)
    settings = discovery_settings(data) if settings is None else settings
    groups = _discovery_groups(data)
    alerts = data.get("alerts") or []
    cards = [
        (str(len(data.get("assets") or [])), "hosts found", ""),
        (
            str(len(_unknown_medical(data))),
            "medical devices of unknown models",
            "warn" if _unknown_medical(data) else "ok",
        ),
        (str(len(alerts)), "alerts (wrong zone)", "bad" if alerts else "ok"),
        (
            str(len(data.get("unresponsive") or [])),
            "stopped answering",
            "bad" if data.get("unresponsive") else "ok",
        ),
    ]
    body = [
        "<h1>Discovery report</h1>",
        f'<p class="sub">{_e(_scanned_text(data))}; scan id {_e(data.get("scan_id"))}</p>',
        '<div class="verdict">',
        *(
            f'<div class="card {c}"><div class="n">{_e(n)}</div><div class="l">{_e(lbl)}</div></div>'
            for n, lbl, c in cards
        ),
        "</div>",
        "<h2>Findings</h2>",
        '<ul class="findings">',
        *(f"<li>{_e(f)}</li>" for f in _discovery_findings(data)),
        "</ul>",
    ]
    if plot and groups:
        body.append(
            f'<img alt="assets per group" src="data:image/png;base64,{_png_b64(discovery_plot(data))}">'
        )
    body.append("<h2>Alerts</h2>")
    if not alerts:
        body.append("<p>None.</p>")
    for al in alerts:
        body.append(
            f'<div class="alert"><strong>{_e(al.get("host"))}</strong> ({_e(al.get("model"))}) in zone '
            f"<strong>{_e(al.get('zone'))}</strong> [{_e(al.get('zone_kind'))}], first seen "
            f"{_e(al.get('first_seen'))}<ul>"
            + "".join(f"<li>{_e(ev)}</li>" for ev in al.get("evidence") or ())
            + "</ul></div>"
        )
    body.append("<h2>Recommended scanner settings per group</h2>")
    body += [_settings_html(s, group=g) for g, s in sorted(settings.items())]
    body += ["<h2>Evidence: every asset</h2>", _table(_ASSET_COLUMNS, _asset_rows(data), row_class="cls")]
    if data.get("shield"):
        body.append(shield_section_html(data["shield"]))
    return _html_page("fragileprobe discovery report", "".join(body))


def discovery_repr_html(report: Any) -> str:
    """A compact HTML summary for notebooks (``DiscoveryReport._repr_html_``)."""
    data = _discovery_dict(report)
    rows = _asset_rows(data)
    shown = rows[:REPR_MAX_ROWS]
    more = f"<p>... and {len(rows) - len(shown)} more</p>" if len(rows) > len(shown) else ""
    cols = (
        ("host", "host"),
        ("zone", "zone"),
        ("groups", "groups"),
        ("services", "services"),
        ("alert", "alert"),
    )
    findings = "".join(f"<li>{_e(f)}</li>" for f in _discovery_findings(data))
    return f"<div><ul>{findings}</ul>{_table(cols, shown)}{more}</div>"
