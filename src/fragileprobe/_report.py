"""Reports for people: HTML and Markdown for a characterization or a discovery run, plots, notebook views.

Everything here renders data that already exists (a :class:`~fragileprobe.Characterization`, a
:class:`~fragileprobe.DiscoveryReport` or their JSON dicts, a :class:`~fragileprobe._store.ProfileStore`);
nothing touches the network. matplotlib (``fragileprobe[report]``) is imported lazily, only when a plot is
drawn, and only through its object API (``matplotlib.figure.Figure``): no pyplot state, no GUI backend, so
rendering works headless (PNG through Agg).

The HTML report is one self-contained file: inline CSS, plots embedded as base64 PNG, no scripts and no
external assets, so it can be mailed to the biomedical team or attached to a ticket as it is.

Sections (both formats): findings in plain language, the plot, the recommended settings per scanner, the
alerts (discovery), and the evidence (characterization: every level of every trial with its heartbeat
latencies, and the heartbeat timeline; discovery: every asset with what it showed).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._errors import ConfigError
from fragileprobe._files import MAX_JSON_DOCUMENT_BYTES, read_bounded
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Sequence

    from fragileprobe._store import ProfileStore
    from fragileprobe.export import GroupScanSettings

__all__ = [
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
    "timeline_plot",
    "write_report",
]

MEDICAL_GROUP: Final = "Medical Device?"
# Heartbeat latencies shown per failed level in the evidence table: the last few before the device went
# quiet are the ones that tell the story (a rising tail, or none at all).
EVIDENCE_LAST_BEATS: Final = 8
# Plot resolution: 100 dpi at 7x4 in gives a 700x400 px PNG, readable in a mail client, ~40 KB.
PLOT_DPI: Final = 100
# Assets listed in a notebook summary before "... and N more": a /24 fits in a report, not in a cell.
REPR_MAX_ROWS: Final = 20

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1100px;
color:#1d2430;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#5a6472;margin-top:0}
.verdict{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{border-radius:8px;padding:.8em 1.2em;min-width:150px;background:#f3f6f9;border:1px solid #dde3ea}
.card .n{font-size:2em;font-weight:700}.card .l{color:#5a6472;font-size:.9em}
.ok{background:#e8f6ec;border-color:#9fd5ae}.bad{background:#fdecea;border-color:#f2a39b}
.warn{background:#fff6e0;border-color:#f0cf7a}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #dde3ea;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f6f9}tr.failed td{background:#fdecea}tr.warned td{background:#fff6e0}
pre{background:#f3f6f9;border:1px solid #dde3ea;padding:.8em;overflow-x:auto;font-size:.85em}
img{max-width:100%;border:1px solid #dde3ea}
ul.findings li{margin:.3em 0}
.alert{border-left:5px solid #c0392b;background:#fdecea;padding:.5em 1em;margin:.6em 0}
footer{color:#5a6472;font-size:.8em;margin-top:3em}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _when(epoch_s: float | None) -> str:
    if not epoch_s:
        return "unknown time"
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- plots ------------------------------------------------------------------------------------------------


def figure_png(fig: Any) -> bytes:
    """Render a matplotlib Figure to PNG bytes (Agg, no display needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return buf.getvalue()


def _png_b64(fig: Any) -> str:
    return base64.b64encode(figure_png(fig)).decode("ascii")


def latency_plot(char: Characterization, ax: Any = None) -> Any:
    """Heartbeat latency against concurrency, one line per trial, crashes and the ceiling marked.

    Each trial's line joins the median heartbeat latency of the levels it passed (the p95 as a thin
    whisker). A red cross marks a level at which the device stopped answering, drawn at the last latency
    seen before the silence (or above the lines when no beat came back at all); an orange triangle marks an
    early-warning stop. A hollow grey circle marks a level the device did not hold (fewer sessions on the
    device than the level asked for), at the count it did hold. The dashed green line is the recommended
    ceiling; the band from the first crash on is shaded: scanners must stay left of it.

    Returns:
        The matplotlib Figure (``Characterization.plot()`` returns this).
    """
    from matplotlib.figure import Figure  # lazily: optional extra

    if ax is None:
        fig = Figure(figsize=(7.0, 4.0))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    medians = [lv.latency_median_s for t in char.trials for lv in t.levels if lv.latency_median_s is not None]
    top_ms = max(medians, default=0.0) * 1000.0 * 1.15 or 1.0
    for t in char.trials:
        passed = sorted(
            (lv.level, lv.latency_median_s * 1000.0, (lv.latency_p95_s or lv.latency_median_s) * 1000.0)
            for lv in t.levels
            if lv.latency_median_s is not None and lv.outcome is LevelOutcome.PASSED
        )
        if passed:
            (line,) = ax.plot([p[0] for p in passed], [p[1] for p in passed], marker="o",
                              label=f"trial {t.index + 1}")  # fmt: skip
            ax.vlines([p[0] for p in passed], [p[1] for p in passed], [p[2] for p in passed],
                      color=line.get_color(), linewidth=0.8, alpha=0.6)  # fmt: skip
        for lv in t.levels:
            if lv.not_held and lv.held is not None:
                y = (lv.latency_median_s or 0.0) * 1000.0
                ax.plot([lv.held], [y], marker="o", markerfacecolor="none", color="grey", markersize=11,
                        linestyle="none")  # fmt: skip
            if lv.outcome not in (LevelOutcome.FAILED, LevelOutcome.WARNED):
                continue
            y = lv.latencies_s[-1] * 1000.0 if lv.latencies_s else top_ms
            crash = lv.outcome is LevelOutcome.FAILED
            ax.plot([lv.level], [y], marker="X" if crash else "^", color="#c0392b" if crash else "#e67e22",
                    markersize=11, linestyle="none")  # fmt: skip
    if char.failed_at is not None:
        ax.axvspan(char.failed_at, max(char.ladder[-1], char.failed_at) + 0.5, color="#c0392b", alpha=0.08)
        ax.axvline(char.failed_at, color="#c0392b", linestyle=":", label=f"first crash {char.failed_at}")
    if char.safe_ceiling:
        ax.axvline(char.safe_ceiling, color="#1e8449", linestyle="--", linewidth=2,
                   label=f"safe ceiling {char.safe_ceiling}")  # fmt: skip
    if char.baseline_latency_s:
        ax.axhline(char.baseline_latency_s * 1000.0, color="grey", linewidth=0.8, label="idle baseline")
    ax.plot([], [], marker="X", color="#c0392b", linestyle="none", label="stopped answering")
    if any(lv.not_held for t in char.trials for lv in t.levels):
        ax.plot([], [], marker="o", markerfacecolor="none", color="grey", linestyle="none",
                label="not held: sessions the device really held")  # fmt: skip
    tested = [lv.level for t in char.trials for lv in t.levels]
    if tested:
        ax.set_xlim(0, max(tested) + 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("heartbeat latency (ms): median, p95 whisker")
    ax.set_title(f"{char.name or char.host}: heartbeat latency against concurrency")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def timeline_plot(char: Characterization, ax: Any = None) -> Any:
    """The evidence plot: every heartbeat of the run in order, its latency, the level it ran under.

    The x axis counts beats (the characterization keeps beat latencies per level, not their wall times);
    shaded bands are levels, labelled with their session count; a red cross marks where the watchdog
    declared the device down.

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure  # lazily: optional extra

    if ax is None:
        fig = Figure(figsize=(9.0, 3.6))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    x = 0
    for t_index, trial in enumerate(char.trials):
        for lv in trial.levels:
            start = x
            ys = [v * 1000.0 for v in lv.latencies_s]
            xs = list(range(x, x + len(ys)))
            color = {"failed": "#c0392b", "warned": "#e67e22"}.get(lv.outcome.value, "#2c7fb8")
            if ys:
                ax.plot(xs, ys, marker=".", linestyle="-", color=color, linewidth=0.8, markersize=3)
            x += max(len(ys), 1)
            shade = "#f7f7f7" if (t_index + len(ys)) % 2 else "#eceff3"
            ax.axvspan(start - 0.5, x - 0.5, color=shade, zorder=0)
            ax.text(
                (start + x - 1) / 2,
                1.0,
                str(lv.level),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color=color,
            )
            if lv.outcome is LevelOutcome.FAILED:
                ax.plot(
                    [x - 0.5],
                    [ys[-1] if ys else 0.0],
                    marker="X",
                    color="#c0392b",
                    markersize=10,
                    linestyle="none",
                )
        ax.axvline(x - 0.5, color="#555555", linewidth=1.2)
    ax.set_xlabel(
        "heartbeats, in order (bands: levels, labelled with concurrent sessions; dark lines: end of a trial)"
    )
    ax.set_ylabel("heartbeat latency (ms)")
    ax.set_title(f"{char.name or char.host}: heartbeat timeline", pad=14)
    return fig


def _discovery_groups(data: Mapping[str, Any]) -> dict[str, list[str]]:
    groups = data.get("groups") or {}
    return {str(g): [str(h) for h in hosts] for g, hosts in groups.items()}


def discovery_plot(report: Any, ax: Any = None) -> Any:
    """Assets per group as horizontal bars, the hosts that raised an alert in red.

    Args:
        report: A DiscoveryReport or its ``to_dict()``.
        ax: An Axes to draw on (a new Figure if None).

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure  # lazily: optional extra

    data = _discovery_dict(report)
    groups = _discovery_groups(data)
    alerted = {str(a.get("host")) for a in data.get("alerts", ())}
    if ax is None:
        fig = Figure(figsize=(7.0, max(2.0, 0.5 * len(groups) + 1.2)))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    names = sorted(groups, key=lambda g: (g != MEDICAL_GROUP, g))
    ok = [sum(1 for h in groups[g] if h not in alerted) for g in names]
    bad = [sum(1 for h in groups[g] if h in alerted) for g in names]
    ax.barh(names, ok, color="#2c7fb8", label="assets")
    ax.barh(names, bad, left=ok, color="#c0392b", label="assets with an alert (wrong zone)")
    ax.invert_yaxis()
    ax.set_xlabel("hosts")
    ax.set_title("discovery: assets per group")
    if any(bad):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize="small")
    return fig


# --- scan settings ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Ceilings:
    """A store stand-in for ``export.template_for_group``: one model key with one ceiling."""

    model_key: str
    ceiling: int

    def ceiling_for(self, model_key: str) -> int | None:
        return self.ceiling if model_key == self.model_key else None


@dataclasses.dataclass(frozen=True, slots=True)
class _AssetView:
    """What ``export.template_for_group`` reads from a group's assets, rebuilt from a JSON dict."""

    host: str
    ceiling: int | None
    medical: bool


def settings_for_characterization(char: Characterization) -> GroupScanSettings | None:
    """The scan settings a characterization recommends for its model (None: nothing is safe / no data)."""
    from fragileprobe import export

    if not char.safe_ceiling:
        return None
    group = char.model_key or char.name or char.host
    return export.template_for_group(group, _Ceilings(group, int(char.safe_ceiling)))


def discovery_settings(report: Any, store: ProfileStore | None = None) -> dict[str, GroupScanSettings]:
    """Scan settings for every group of a discovery run (a DiscoveryReport or its dict)."""
    from fragileprobe import export

    data = _discovery_dict(report)
    by_host = {str(a.get("host")): a for a in data.get("assets", ())}
    out: dict[str, GroupScanSettings] = {}
    for group, hosts in _discovery_groups(data).items():
        members = []
        for h in hosts:
            a = by_host.get(h, {})
            groups = a.get("groups") or ()
            ceiling = a.get("ceiling")
            members.append(
                _AssetView(
                    host=h,
                    ceiling=int(ceiling) if ceiling is not None else None,
                    medical=a.get("known_model") is not None or MEDICAL_GROUP in groups,
                )
            )
        out[group] = export.template_for_group(group, store, assets=members)
    return out


# --- input normalisation ----------------------------------------------------------------------------------


def _discovery_dict(report: Any) -> dict[str, Any]:
    if isinstance(report, Mapping):
        return dict(report)
    to_dict = getattr(report, "to_dict", None)
    if to_dict is None:
        raise ConfigError(f"report: expected a DiscoveryReport or its dict, got {type(report).__name__}")
    result: dict[str, Any] = to_dict()
    return result


def discovery_dict_from_store(store: ProfileStore) -> dict[str, Any]:
    """The store's discovery inventory (every asset, every alert) in ``DiscoveryReport.to_dict()`` shape."""
    from fragileprobe._fingerprint import model_key_digest

    # Matched by digest, as discovery does: a user-given model name changes the key's slug, not its hash.
    profiles = {model_key_digest(p.model_key): (p.model_key, p.ceiling) for p in store.profiles()}
    assets = []
    groups: dict[str, list[str]] = {}
    for row in store.assets():
        match = profiles.get(model_key_digest(row.model_key)) if row.model_key else None
        known = match[0] if match else None
        assets.append(
            {
                "host": row.host,
                "open_ports": list(row.open_ports),
                "services": row.services if isinstance(row.services, list) else [],
                "os_family": row.os_family,
                "os_evidence": [],
                "zone": row.zone,
                "zone_kind": None,
                "model_key": row.model_key,
                "known_model": known,
                "ceiling": match[1] if match else None,
                "groups": list(row.groups),
                "first_seen": _when(row.first_seen_s),
                "last_seen": _when(row.last_seen_s),
                "notes": [],
            }
        )
        for g in row.groups:
            groups.setdefault(g, []).append(row.host)
    alerts: dict[str, dict[str, Any]] = {}
    for alert in store.alerts():
        if alert.get("kind") == "shield_trip":
            continue  # the shield's trips have their own section (shield_section_html)
        alerts[str(alert.get("host"))] = alert  # the latest alert per host
    scans = store.scans()
    return {
        "assets": assets,
        "groups": groups,
        "alerts": list(alerts.values()),
        "unresponsive": [],
        "new": [],
        "gone": [],
        "moved": [],
        "hosts_scanned": None,
        "hosts_resumed": 0,
        "wall_time_s": 0.0,
        "scan_id": scans[-1].scan_id if scans else None,
        "notes": [f"from the store's inventory ({len(scans)} scan(s))"],
        "params": {},
    }


def load_report_source(path: str) -> Characterization | dict[str, Any]:
    """Read a JSON file: a characterization (``Characterization.to_json``), a discovery report
    (``DiscoveryReport.to_json`` / ``fragileprobe discover --json``) or a store export (its latest
    characterization).

    Raises:
        ConfigError: The file cannot be read or is none of those (the message names the file).
    """
    import json

    raw = read_bounded(path, max_bytes=MAX_JSON_DOCUMENT_BYTES, label=f"report input {path}")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"report input {path}: not JSON ({exc})") from exc
    if isinstance(data, dict) and "characterization" in data and isinstance(data["characterization"], dict):
        data = data["characterization"]  # `fragileprobe characterize --json` wraps it
    if isinstance(data, dict) and "trials" in data and "ladder" in data:
        return Characterization.from_dict(data)
    if isinstance(data, dict) and "assets" in data and "groups" in data:
        return data
    if isinstance(data, dict) and isinstance(data.get("characterizations"), list):
        chars = data["characterizations"]
        if not chars:
            raise ConfigError(f"report input {path}: the store export holds no characterization")
        return Characterization.from_dict(chars[-1])
    raise ConfigError(
        f"report input {path}: neither a characterization, a discovery report nor a store export"
    )


# --- characterization -------------------------------------------------------------------------------------


def _verdict(char: Characterization) -> tuple[str, str, str]:
    """(headline, advice, css class) in plain language."""
    who = char.name or char.host
    if char.safe_ceiling is None:
        return (
            f"No recommendation for {who}",
            "No level was tested to the end; run the characterization again with a larger time budget.",
            "warn",
        )
    if char.safe_ceiling == 0:
        return (
            f"{who} is not safe to scan",
            "It failed at the lowest level tested. Do not point a "
            "vulnerability scanner at it; inspect it by hand.",
            "bad",
        )
    if not char.ceiling_found:
        return (
            f"{who} never failed up to {char.max_level_tested} sessions",
            f"Scanners may hold up to {char.safe_ceiling} sessions at once on it; that level was never "
            "exceeded in the test, so it is not a measured limit of the device.",
            "ok",
        )
    first = (
        f"it stopped answering at {char.failed_at} simultaneous sessions"
        if char.failed_at
        else (f"its responses slowed past {char.early_warning_factor:g}x normal at {char.warned_at} sessions")
    )
    return (
        f"Safe ceiling for {who}: {char.safe_ceiling} simultaneous sessions",
        f"Set every scanner to at most {char.safe_ceiling} simultaneous sessions per host for this model: "
        f"{first}.",
        "ok",
    )


def _findings(char: Characterization) -> list[str]:
    out = []
    n = len(char.trials)
    out.append(
        f"{n} trial{'s' if n != 1 else ''} up the ladder {', '.join(map(str, char.ladder))} "
        f"({char.levels_tested} level tests, {char.wall_time_s:.1f} s)."
    )
    if char.crashes:
        levels = ", ".join(map(str, char.crash_levels))
        out.append(
            f"The device crashed {char.crashes} time{'s' if char.crashes != 1 else ''} (at {levels} "
            "sessions) and was power-cycled each time before the test went on."
        )
    else:
        out.append("The device never crashed during the test.")
    if char.failed_at is not None:
        out.append(f"The lowest load that crashed it: {char.failed_at} simultaneous sessions.")
    if char.highest_passed is not None and char.ceiling_found:
        out.append(f"The highest load it survived in every trial below that: {char.highest_passed}.")
    if char.safe_ceiling:
        out.append(
            f"Recommended maximum: {char.safe_ceiling} sessions (a safety margin of {char.margin_text} "
            "below the first failure, never above a level that passed every time)."
        )
    if char.baseline_latency_s is not None:
        out.append(f"Idle heartbeat latency: {_ms(char.baseline_latency_s)}.")
    if char.latency_knee is not None:
        out.append(
            f"Its responses slowed markedly (median heartbeat latency doubled) from "
            f"{char.latency_knee} session{'s' if char.latency_knee != 1 else ''} on: a scanner working near "
            "that load slows the device."
        )
    if char.stop_reason != "complete":
        out.append(f"The run stopped early: {char.stop_reason.replace('_', ' ')}.")
    return out


def _level_rows(char: Characterization) -> list[dict[str, Any]]:
    rows = []
    for t in char.trials:
        for order, lv in enumerate(t.levels, 1):
            tail = lv.latencies_s[-EVIDENCE_LAST_BEATS:] if lv.outcome is LevelOutcome.FAILED else ()
            rows.append(
                {
                    "trial": t.index + 1,
                    "order": order,
                    "level": lv.level,
                    "held": _held_text(lv),
                    "outcome": lv.outcome.value,
                    "elapsed": f"{lv.elapsed_s:.2f} s"
                    + (" into the dwell" if lv.outcome is LevelOutcome.FAILED else ""),
                    "started": lv.sessions_started,
                    "failed": lv.sessions_failed,
                    "in_flight": lv.in_flight_at_end,
                    "beats": f"{len(lv.latencies_s)} ok / {lv.beats_failed} failed",
                    "median": _ms(lv.latency_median_s),
                    "p95": _ms(lv.latency_p95_s),
                    "tail": _tail_text(lv.outcome, tail),
                }
            )
    return rows


def _held_text(lv: LevelResult) -> str:
    """What the device really held at the level's heartbeats (its own count, the heartbeat's included)."""
    if lv.held is None:
        return "not measured"
    if lv.not_held:
        return f"{lv.held}: NOT HELD (the device closed or refused sessions faster than they were reopened)"
    return str(lv.held)


def _tail_text(outcome: LevelOutcome, tail: Sequence[float]) -> str:
    """The heartbeats that led up to a failure, in words."""
    if outcome is not LevelOutcome.FAILED:
        return ""
    if not tail:
        return "no heartbeat answered at this level"
    return ", ".join(f"{v * 1000:.0f}" for v in tail) + " ms, then silence"


_LEVEL_COLUMNS = (
    ("trial", "trial"),
    ("order", "#"),
    ("level", "sessions"),
    ("held", "held on the device"),
    ("outcome", "outcome"),
    ("elapsed", "time"),
    ("started", "sessions started"),
    ("failed", "sessions failed"),
    ("in_flight", "in flight at end / failure"),
    ("beats", "heartbeats"),
    ("median", "latency median"),
    ("p95", "latency p95"),
    ("tail", "last heartbeats before the failure"),
)


def characterization_markdown(char: Characterization, *, plot_file: str | None = None) -> str:
    """The characterization report as Markdown (the plot referenced as ``plot_file`` when given)."""
    head, advice, _ = _verdict(char)
    lines = [
        f"# fragileprobe characterization: {char.name or char.host}",
        "",
        f"Device {char.host}, model `{char.model_key or 'unknown'}`, "
        f"started {_when(char.started_at_epoch_s)}.",
        "",
        f"**{head}.** {advice}",
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {f}" for f in _findings(char)]
    if plot_file:
        lines += ["", "## Plot", "", f"![heartbeat latency against concurrency]({plot_file})"]
    lines += ["", "## Recommended scanner settings", ""]
    settings = settings_for_characterization(char)
    if settings is None:
        lines.append("No safe setting: do not scan this device with a vulnerability scanner.")
    else:
        lines += ["```", settings.text(), "```"]
    lines += [
        "",
        "## Evidence: every level of every trial",
        "",
        "| " + " | ".join(h for _, h in _LEVEL_COLUMNS) + " |",
        "|" + "---|" * len(_LEVEL_COLUMNS),
    ]
    for row in _level_rows(char):
        lines.append("| " + " | ".join(str(row[k]) for k, _ in _LEVEL_COLUMNS) + " |")
    lines += ["", f"_Generated by fragileprobe; run id {char.run_id or '-'}._", ""]
    return "\n".join(lines)


def _table(
    columns: Sequence[tuple[str, str]], rows: Iterable[Mapping[str, Any]], row_class: str | None = None
) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for _, h in columns), "</tr></thead><tbody>"]
    for row in rows:
        cls = f' class="{_e(row.get(row_class))}"' if row_class else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(row.get(k))}</td>" for k, _ in columns) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _html_page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}"
        f"<footer>Generated by fragileprobe on {_e(_when(dt.datetime.now(tz=dt.UTC).timestamp()))}. "
        "Self-contained: no external assets.</footer></body></html>\n"
    )


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
            f'src="data:image/png;base64,{_png_b64(char.plot())}">',
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


# --- discovery --------------------------------------------------------------------------------------------


def _asset_services(a: Mapping[str, Any]) -> str:
    parts = []
    for s in a.get("services") or ():
        if not isinstance(s, Mapping):
            continue
        text = f"{s.get('port')}/{s.get('service')}"
        prod = " ".join(str(x) for x in (s.get("product"), s.get("version")) if x)
        parts.append(text + (f" {prod}" if prod else ""))
    return ", ".join(parts)


def _unknown_medical(data: Mapping[str, Any]) -> list[str]:
    """Hosts in "Medical Device?" whose model has no stored profile."""
    known = {str(a.get("host")) for a in data.get("assets") or () if a.get("known_model")}
    return [h for h in _discovery_groups(data).get(MEDICAL_GROUP, []) if h not in known]


def _discovery_findings(data: Mapping[str, Any]) -> list[str]:
    assets = data.get("assets") or []
    alerts = data.get("alerts") or []
    if data.get("hosts_scanned") is None:  # the store's inventory, not one scan
        out = [f"{len(assets)} hosts in the inventory."]
    else:
        scanned = int(data.get("hosts_scanned") or 0) + int(data.get("hosts_resumed") or 0)
        out = [
            f"{len(assets)} hosts answered on {scanned} addresses scanned "
            f"({float(data.get('wall_time_s') or 0.0):.1f} s)."
        ]
    unknown = _unknown_medical(data)
    if unknown:
        out.append(
            f"{len(unknown)} host(s) look like medical devices of a model not characterized yet (such as "
            "FTP, SSH, Telnet and a web server on 8080 on an embedded unix): characterize one of each model "
            "before scanning them."
        )
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for a in assets:
        if a.get("known_model"):
            by_model.setdefault(str(a.get("known_model")), []).append(a)
    for model, members in sorted(by_model.items()):
        out.append(
            f"{len(members)} host(s) are of the characterized model {model}: scan them with at most "
            f"{members[0].get('ceiling')} simultaneous session(s) per host."
        )
    if alerts:
        out.append(
            f"{len(alerts)} medical device(s) sit on a network segment that is not a medical one: "
            + "; ".join(f"{al.get('host')} in {al.get('zone')} ({al.get('zone_kind')})" for al in alerts)
            + ". Check whether they were plugged into the wrong network drop."
        )
    else:
        out.append("No medical device was found outside a medical zone.")
    for u in data.get("unresponsive") or ():
        out.append(
            f"{u.get('host')} stopped answering during the scan and was left alone ({u.get('reason')})."
        )
    if data.get("new") or data.get("gone") or data.get("moved"):
        out.append(
            f"Since the last scan: {len(data.get('new') or [])} new, {len(data.get('gone') or [])} gone, "
            f"{len(data.get('moved') or [])} moved."
        )
    out.extend(str(n) for n in data.get("notes") or ())
    return out


_ASSET_COLUMNS = (
    ("host", "host"),
    ("zone", "zone"),
    ("groups", "groups"),
    ("open_ports", "open ports"),
    ("services", "services"),
    ("os_family", "OS family"),
    ("model_key", "model key"),
    ("sessions_limit", "sessions used"),
    ("first_seen", "first seen"),
    ("alert", "alert"),
)


def _asset_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    alerted = {str(a.get("host")) for a in data.get("alerts") or ()}
    return [
        {
            "host": a.get("host"),
            "zone": a.get("zone"),
            "groups": "; ".join(a.get("groups") or ()),
            "open_ports": ",".join(str(p) for p in a.get("open_ports") or ()),
            "services": _asset_services(a),
            "os_family": a.get("os_family"),
            "model_key": a.get("known_model") or a.get("model_key"),
            "sessions_limit": a.get("sessions_limit", "-"),
            "first_seen": a.get("first_seen"),
            "alert": "WRONG ZONE" if a.get("host") in alerted else "",
            "cls": "failed" if a.get("host") in alerted else "",
        }
        for a in data.get("assets") or ()
    ]


def discovery_markdown(
    report: Any, *, settings: Mapping[str, GroupScanSettings] | None = None, plot_file: str | None = None
) -> str:
    """The discovery report as Markdown."""
    data = _discovery_dict(report)
    settings = discovery_settings(data) if settings is None else settings
    lines = ["# fragileprobe discovery report", "", "## Findings", ""]
    lines += [f"- {f}" for f in _discovery_findings(data)]
    if plot_file:
        lines += ["", f"![assets per group]({plot_file})"]
    lines += ["", "## Alerts", ""]
    alerts = data.get("alerts") or []
    if not alerts:
        lines.append("None.")
    for al in alerts:
        lines.append(
            f"- **{al.get('host')}** ({al.get('model')}) in zone {al.get('zone')} "
            f"[{al.get('zone_kind')}], first seen {al.get('first_seen')}"
        )
        lines += [f"  - {ev}" for ev in al.get("evidence") or ()]
    lines += ["", "## Recommended scanner settings per group", ""]
    for group, s in sorted(settings.items()):
        lines += [f"### {group}", "", "```", s.text(), "```", ""]
    lines += [
        "## Evidence: assets",
        "",
        "| " + " | ".join(h for _, h in _ASSET_COLUMNS) + " |",
        "|" + "---|" * len(_ASSET_COLUMNS),
    ]
    for row in _asset_rows(data):
        lines.append("| " + " | ".join(str(row[k]) for k, _ in _ASSET_COLUMNS) + " |")
    lines.append("")
    return "\n".join(lines)


def _scanned_text(data: Mapping[str, Any]) -> str:
    if data.get("hosts_scanned") is None:
        return "the store's inventory"
    return f"{int(data.get('hosts_scanned') or 0) + int(data.get('hosts_resumed') or 0)} addresses scanned"


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


# --- files ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ReportFiles:
    """What :func:`write_report` wrote.

    Attributes:
        kind: "characterization" or "discovery".
        html: The self-contained HTML report.
        markdown: The Markdown report (it references ``png`` by file name).
        png: The main plot as PNG (None with ``plot=False``).
    """

    kind: str
    html: Path
    markdown: Path
    png: Path | None


def write_report(
    subject: Characterization | Any,
    out: str | os.PathLike[str],
    *,
    plot: bool = True,
    store: ProfileStore | None = None,
) -> ReportFiles:
    """Write ``OUT.html``, ``OUT.md`` (and ``OUT.png``) for a characterization or a discovery run.

    Args:
        subject: A Characterization, a DiscoveryReport, or a discovery dict (``to_dict()`` / JSON).
        out: Output path without suffix.
        plot: Include the plots (needs matplotlib).
        store: For a discovery run, the store whose profiles set the fragile groups' ceilings.

    Raises:
        ConfigError: A file cannot be written, or a discovery dict is malformed (nothing is written then).
    """
    base = Path(out)
    html_path, md_path, png_path = (base.with_name(base.name + s) for s in (".html", ".md", ".png"))
    fig: Any = None
    if isinstance(subject, Characterization):
        kind = "characterization"
        page = characterization_html(subject, plot=plot)
        fig = subject.plot() if plot else None
        md = characterization_markdown(subject, plot_file=png_path.name if plot else None)
    else:
        kind = "discovery"
        data = _discovery_dict(subject)
        if store is not None:
            data = {**data, "shield": shield_timeline(store)}
        try:
            settings = discovery_settings(data, store)
            page = discovery_html(data, settings=settings, plot=plot)
            fig = discovery_plot(data) if plot and data.get("groups") else None
            md = discovery_markdown(data, settings=settings,
                                    plot_file=png_path.name if fig is not None else None)  # fmt: skip
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # A discovery dict read from a file is whatever the file held: a field of the wrong type
            # ("hosts_scanned": "²", an asset that is a number) is that file's fault, reported as such,
            # and nothing is written.
            raise ConfigError(f"discovery report is malformed: {type(exc).__name__}: {exc}"[:300]) from exc
    try:
        html_path.write_text(page, encoding="utf-8")
        md_path.write_text(md, encoding="utf-8")
        if fig is not None:
            png_path.write_bytes(figure_png(fig))
    except OSError as exc:
        raise ConfigError(f"out: cannot write {base}.*: {exc.strerror or exc}") from exc
    return ReportFiles(kind=kind, html=html_path, markdown=md_path, png=png_path if fig is not None else None)


# --- the shield: a timeline per device of sessions and trips -----------------------------------------------

# Sessions listed per device under its timeline (the latest ones); the store keeps every one of them.
SHIELD_MAX_ROWS_PER_DEVICE: Final = 50
# Lanes of the timeline drawing: sessions that overlap take separate lanes; beyond this they share the last.
SHIELD_TIMELINE_LANES: Final = 12
_SHIELD_W, _SHIELD_LANE_H = 640, 8


def shield_timeline(store: ProfileStore) -> dict[str, Any]:
    """The shield's audit from the store: ``{"sessions": [...], "trips": [...]}`` (row dicts)."""
    return {"sessions": store.shield_sessions(), "trips": store.shield_trips()}


def _shield_svg(sessions: Sequence[Mapping[str, Any]], trips: Sequence[Mapping[str, Any]]) -> str:
    times = [float(s["started_at_s"]) for s in sessions] + [float(s["ended_at_s"]) for s in sessions]
    times += [float(t["tripped_at_s"]) for t in trips] + [float(t["released_at_s"]) for t in trips
                                                          if t.get("released_at_s")]  # fmt: skip
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-3)

    def x(t: float) -> float:
        return round((t - t0) / span * (_SHIELD_W - 2) + 1, 1)

    lanes: list[float] = []
    parts = []
    for s in sorted(sessions, key=lambda r: float(r["started_at_s"])):
        start, end = float(s["started_at_s"]), float(s["ended_at_s"])
        lane = next((i for i, free in enumerate(lanes) if free <= start), None)
        if lane is None:
            lane = min(len(lanes), SHIELD_TIMELINE_LANES - 1)
            if lane == len(lanes):
                lanes.append(end)
        lanes[lane] = max(lanes[lane], end)
        color = "#2e86c1" if s.get("reply") == 0 else "#b0b8c1"
        width = max(x(end) - x(start), 1)
        parts.append(f'<rect x="{x(start)}" y="{lane * _SHIELD_LANE_H + 2}" width="{width}" '
                     f'height="{_SHIELD_LANE_H - 2}" fill="{color}"><title>{_e(s.get("port"))} '
                     f'{_e(s.get("outcome"))}</title></rect>')  # fmt: skip
    height = max(len(lanes), 1) * _SHIELD_LANE_H + 4
    for t in trips:
        start = float(t["tripped_at_s"])
        end = float(t.get("released_at_s") or t1)
        parts.insert(0, f'<rect x="{x(start)}" y="0" width="{max(x(end) - x(start), 1)}" height="{height}" '
                        'fill="#fdecea"/>')  # fmt: skip
        parts.append(f'<line x1="{x(start)}" x2="{x(start)}" y1="0" y2="{height}" stroke="#c0392b" '
                     'stroke-width="2"><title>trip</title></line>')  # fmt: skip
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SHIELD_W}" height="{height}" '
            f'role="img" aria-label="sessions and trips over time">{"".join(parts)}</svg>')  # fmt: skip


def shield_section_html(data: Mapping[str, Any]) -> str:
    """The HTML section "Through the shield": per device, a timeline of its sessions and trips."""
    sessions: list[Mapping[str, Any]] = list(data.get("sessions") or [])
    trips: list[Mapping[str, Any]] = list(data.get("trips") or [])
    hosts = sorted({str(s["host"]) for s in sessions} | {str(t["host"]) for t in trips})
    out = ["<h2>Through the shield</h2>",
           f"<p>{len(sessions)} session(s) to {len(hosts)} device(s); {len(trips)} trip(s). Blue: relayed "
           "sessions; grey: refused; red: a trip (shaded while the device was blocked).</p>"]  # fmt: skip
    cols = (("start", "start"), ("port", "port"), ("outcome", "outcome"), ("reply", "reply"),
            ("up", "bytes up"), ("down", "bytes down"), ("limit", "ceiling (source)"))  # fmt: skip
    for host in hosts:
        mine = [s for s in sessions if s["host"] == host]
        tripped = [t for t in trips if t["host"] == host]
        relayed = sum(1 for s in mine if s.get("reply") == 0)
        out.append(f"<h3>{_e(host)}</h3><p>{len(mine)} session(s), {relayed} relayed, "
                   f"{len(mine) - relayed} refused, {len(tripped)} trip(s)</p>")  # fmt: skip
        for t in tripped:
            released = (f"released {_when(t['released_at_s'])} ({_e(t.get('released_by'))})"
                        if t.get("released_at_s") else "still blocked")  # fmt: skip
            out.append(f'<div class="alert"><strong>TRIP</strong> {_e(_when(t["tripped_at_s"]))}: '
                       f"{_e(t.get('reason'))}; {_e(t.get('sessions_closed'))} session(s) closed; "
                       f"{_e(released)}</div>")  # fmt: skip
        if mine or tripped:
            out.append(_shield_svg(mine, tripped))
        rows = [{"start": _when(s["started_at_s"]), "port": s["port"], "outcome": s["outcome"],
                 "reply": s.get("reply"), "up": s["bytes_up"], "down": s["bytes_down"],
                 "limit": f"{s.get('ceiling')} ({s.get('limit_source')})"}
                for s in mine[-SHIELD_MAX_ROWS_PER_DEVICE:]]  # fmt: skip
        if len(mine) > SHIELD_MAX_ROWS_PER_DEVICE:
            out.append(f"<p>the latest {SHIELD_MAX_ROWS_PER_DEVICE} of {len(mine)} sessions:</p>")
        out.append(_table(cols, rows))
    return "".join(out)
