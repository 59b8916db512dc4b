"""The report layer's inputs: a characterization or a discovery run read from a file, the store's inventory
in the shape of a discovery report, and what every output needs to read a discovery dict."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._errors import ConfigError
from fragileprobe._files import MAX_JSON_DOCUMENT_BYTES, read_bounded
from fragileprobe._profile import Characterization

if TYPE_CHECKING:
    from fragileprobe._store import ProfileStore

__all__ = ["MEDICAL_GROUP", "discovery_dict_from_store", "load_report_source"]

MEDICAL_GROUP: Final = "Medical Device?"


def _when(epoch_s: float | None) -> str:
    if not epoch_s:
        return "unknown time"
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _discovery_dict(report: Any) -> dict[str, Any]:
    if isinstance(report, Mapping):
        return dict(report)
    to_dict = getattr(report, "to_dict", None)
    if to_dict is None:
        raise ConfigError(f"report: expected a DiscoveryReport or its dict, got {type(report).__name__}")
    result: dict[str, Any] = to_dict()
    return result


def _discovery_groups(data: Mapping[str, Any]) -> dict[str, list[str]]:
    groups = data.get("groups") or {}
    return {str(g): [str(h) for h in hosts] for g, hosts in groups.items()}


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
