"""What the reports say, whatever the format: the verdict and findings in plain language, and the evidence
tables' rows and columns (HTML and Markdown both draw these)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._profile import Characterization, LevelOutcome, LevelResult
from fragileprobe._report._data import MEDICAL_GROUP, _discovery_groups

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__: list[str] = []

# Heartbeat latencies shown per failed level in the evidence table: the last few before the device went
# quiet are the ones that tell the story (a rising tail, or none at all).
EVIDENCE_LAST_BEATS: Final = 8


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


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


def _scanned_text(data: Mapping[str, Any]) -> str:
    if data.get("hosts_scanned") is None:
        return "the store's inventory"
    return f"{int(data.get('hosts_scanned') or 0) + int(data.get('hosts_resumed') or 0)} addresses scanned"
