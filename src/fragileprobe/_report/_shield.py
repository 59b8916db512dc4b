"""The shield's section of a report: per device, a timeline (inline SVG) of its sessions and trips."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from fragileprobe._report._data import _when
from fragileprobe._report._markup import _e, _table

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from fragileprobe._store import ProfileStore

__all__ = ["shield_section_html", "shield_timeline"]

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
    times += [float(t["tripped_at_s"]) for t in trips] + [
        float(t["released_at_s"]) for t in trips if t.get("released_at_s")
    ]
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
        parts.append(
            f'<rect x="{x(start)}" y="{lane * _SHIELD_LANE_H + 2}" width="{width}" '
            f'height="{_SHIELD_LANE_H - 2}" fill="{color}"><title>{_e(s.get("port"))} '
            f"{_e(s.get('outcome'))}</title></rect>"
        )
    height = max(len(lanes), 1) * _SHIELD_LANE_H + 4
    for t in trips:
        start = float(t["tripped_at_s"])
        end = float(t.get("released_at_s") or t1)
        parts.insert(
            0,
            f'<rect x="{x(start)}" y="0" width="{max(x(end) - x(start), 1)}" height="{height}" '
            'fill="#fdecea"/>',
        )
        parts.append(
            f'<line x1="{x(start)}" x2="{x(start)}" y1="0" y2="{height}" stroke="#c0392b" '
            'stroke-width="2"><title>trip</title></line>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SHIELD_W}" height="{height}" '
        f'role="img" aria-label="sessions and trips over time">{"".join(parts)}</svg>'
    )


def shield_section_html(data: Mapping[str, Any]) -> str:
    """The HTML section "Through the shield": per device, a timeline of its sessions and trips."""
    sessions: list[Mapping[str, Any]] = list(data.get("sessions") or [])
    trips: list[Mapping[str, Any]] = list(data.get("trips") or [])
    hosts = sorted({str(s["host"]) for s in sessions} | {str(t["host"]) for t in trips})
    out = [
        "<h2>Through the shield</h2>",
        f"<p>{len(sessions)} session(s) to {len(hosts)} device(s); {len(trips)} trip(s). Blue: relayed "
        "sessions; grey: refused; red: a trip (shaded while the device was blocked).</p>",
    ]
    cols = (
        ("start", "start"),
        ("port", "port"),
        ("outcome", "outcome"),
        ("reply", "reply"),
        ("up", "bytes up"),
        ("down", "bytes down"),
        ("limit", "ceiling (source)"),
    )
    for host in hosts:
        mine = [s for s in sessions if s["host"] == host]
        tripped = [t for t in trips if t["host"] == host]
        relayed = sum(1 for s in mine if s.get("reply") == 0)
        out.append(
            f"<h3>{_e(host)}</h3><p>{len(mine)} session(s), {relayed} relayed, "
            f"{len(mine) - relayed} refused, {len(tripped)} trip(s)</p>"
        )
        for t in tripped:
            released = (
                f"released {_when(t['released_at_s'])} ({_e(t.get('released_by'))})"
                if t.get("released_at_s")
                else "still blocked"
            )
            out.append(
                f'<div class="alert"><strong>TRIP</strong> {_e(_when(t["tripped_at_s"]))}: '
                f"{_e(t.get('reason'))}; {_e(t.get('sessions_closed'))} session(s) closed; "
                f"{_e(released)}</div>"
            )
        if mine or tripped:
            out.append(_shield_svg(mine, tripped))
        rows = [
            {
                "start": _when(s["started_at_s"]),
                "port": s["port"],
                "outcome": s["outcome"],
                "reply": s.get("reply"),
                "up": s["bytes_up"],
                "down": s["bytes_down"],
                "limit": f"{s.get('ceiling')} ({s.get('limit_source')})",
            }
            for s in mine[-SHIELD_MAX_ROWS_PER_DEVICE:]
        ]
        if len(mine) > SHIELD_MAX_ROWS_PER_DEVICE:
            out.append(f"<p>the latest {SHIELD_MAX_ROWS_PER_DEVICE} of {len(mine)} sessions:</p>")
        out.append(_table(cols, rows))
    return "".join(out)
