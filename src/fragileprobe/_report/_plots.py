"""Plots, with matplotlib (the optional extra ``fragileprobe[report]``).

matplotlib is imported lazily, only when a plot is drawn, and only through its object API
(``matplotlib.figure.Figure``): no pyplot state, no GUI backend, so rendering works headless (PNG
through Agg).
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._profile import LevelOutcome
from fragileprobe._report._data import MEDICAL_GROUP, _discovery_dict, _discovery_groups

if TYPE_CHECKING:
    from fragileprobe._profile import Characterization, TrialResult

__all__ = ["discovery_plot", "figure_png", "latency_plot", "timeline_plot"]

# Plot resolution: 100 dpi at 7x4 in gives a 700x400 px PNG, readable in a mail client, ~40 KB.
PLOT_DPI: Final = 100


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
        _plot_trial(ax, t, top_ms)
    if char.failed_at is not None:
        ax.axvspan(char.failed_at, max(char.ladder[-1], char.failed_at) + 0.5, color="#c0392b", alpha=0.08)
        ax.axvline(char.failed_at, color="#c0392b", linestyle=":", label=f"first crash {char.failed_at}")
    if char.safe_ceiling:
        ax.axvline(
            char.safe_ceiling,
            color="#1e8449",
            linestyle="--",
            linewidth=2,
            label=f"safe ceiling {char.safe_ceiling}",
        )
    if char.baseline_latency_s:
        ax.axhline(char.baseline_latency_s * 1000.0, color="grey", linewidth=0.8, label="idle baseline")
    ax.plot([], [], marker="X", color="#c0392b", linestyle="none", label="stopped answering")
    if any(lv.not_held for t in char.trials for lv in t.levels):
        ax.plot(
            [],
            [],
            marker="o",
            markerfacecolor="none",
            color="grey",
            linestyle="none",
            label="not held: sessions the device really held",
        )
    tested = [lv.level for t in char.trials for lv in t.levels]
    if tested:
        ax.set_xlim(0, max(tested) + 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("heartbeat latency (ms): median, p95 whisker")
    ax.set_title(f"{char.name or char.host}: heartbeat latency against concurrency")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def _plot_trial(ax: Any, trial: TrialResult, top_ms: float) -> None:
    """One trial's line of passed levels (p95 whiskers), its crosses, triangles and not-held circles."""
    passed = sorted(
        (lv.level, lv.latency_median_s * 1000.0, (lv.latency_p95_s or lv.latency_median_s) * 1000.0)
        for lv in trial.levels
        if lv.latency_median_s is not None and lv.outcome is LevelOutcome.PASSED
    )
    if passed:
        (line,) = ax.plot(
            [p[0] for p in passed], [p[1] for p in passed], marker="o", label=f"trial {trial.index + 1}"
        )
        ax.vlines(
            [p[0] for p in passed],
            [p[1] for p in passed],
            [p[2] for p in passed],
            color=line.get_color(),
            linewidth=0.8,
            alpha=0.6,
        )
    for lv in trial.levels:
        if lv.not_held and lv.held is not None:
            y = (lv.latency_median_s or 0.0) * 1000.0
            ax.plot(
                [lv.held],
                [y],
                marker="o",
                markerfacecolor="none",
                color="grey",
                markersize=11,
                linestyle="none",
            )
        if lv.outcome not in (LevelOutcome.FAILED, LevelOutcome.WARNED):
            continue
        y = lv.latencies_s[-1] * 1000.0 if lv.latencies_s else top_ms
        crash = lv.outcome is LevelOutcome.FAILED
        ax.plot(
            [lv.level],
            [y],
            marker="X" if crash else "^",
            color="#c0392b" if crash else "#e67e22",
            markersize=11,
            linestyle="none",
        )


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
