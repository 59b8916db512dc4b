"""Inventory and alerts: what a store knows about the network (scans, assets, alerts, the shield's audit).

Raw rows only; the decisions (which host moved, which alert fires) live in discovery and the shield.

Tables: ``scans`` and ``scan_hosts`` (discovery runs and the hosts each finished, for resume), ``assets``
(one row per host, upserted), ``alerts``, and the shield's audit trail ``shield_sessions`` and
``shield_trips`` (schema version 3). The shield's audit lives here, not with the runs and profiles: like
alerts it is a log of what happened to hosts of the inventory while the network was in use (a trip is
stored as an alert too), written by the running system and keyed by host, while the runs and profiles
are the measured evidence that ceilings are derived from. The shield reads the inventory and writes its
audit through the same repository.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._db import RecordColumns, canonical_json

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from fragileprobe._db import Database

__all__ = ["AssetRow", "InventoryRepository", "ScanRow", "asset_dict"]


@dataclass(frozen=True, slots=True)
class ScanRow:
    """One discovery scan as stored."""

    scan_id: int
    targets: Any
    params: Any
    started_at_s: float
    finished_at_s: float | None


@dataclass(frozen=True, slots=True)
class AssetRow:
    """One host of the discovery inventory.

    ``previous_zone`` and ``previous_scan_id`` are the values before the latest upsert (None for a host
    seen once), so "moved" is ``previous_zone is not None and previous_zone != zone``.
    """

    host: str
    first_seen_s: float
    last_seen_s: float
    zone: str | None
    previous_zone: str | None
    model_key: str | None
    open_ports: tuple[int, ...]
    services: Any
    os_family: str | None
    groups: tuple[str, ...]
    scan_id: int | None
    previous_scan_id: int | None


_SCAN = RecordColumns(ScanRow, json={"targets": None, "params": None})
_SCAN_SELECT = f"SELECT {_SCAN.sql} FROM scans"
_ASSET = RecordColumns(AssetRow, json={"open_ports": tuple, "services": None, "groups": tuple})
_ASSET_SELECT = f"SELECT {_ASSET.sql} FROM assets"
_ASSET_INSERT = f"INSERT INTO assets({_ASSET.sql}) VALUES ({', '.join('?' for _ in _ASSET.columns)})"
_ASSET_UPDATE = (
    f"UPDATE assets SET {', '.join(f'{c} = ?' for c in _ASSET.columns if c != 'host')} WHERE host = ?"
)
# Export documents carry the inventory without the scan ids, which only mean something in their own store.
_EXPORT_SKIPS: Final = frozenset({"scan_id", "previous_scan_id"})

# The shield's records (fragileprobe._shield.ShieldSession / ShieldTrip, one layer up) come as their
# to_dict(); these are the keys stored, in column order.
_SHIELD_SESSION_COLUMNS: Final = (
    "host",
    "port",
    "client",
    "username",
    "started_at_s",
    "ended_at_s",
    "bytes_up",
    "bytes_down",
    "outcome",
    "reply",
    "ceiling",
    "limit_source",
    "waited_s",
)
_SHIELD_SESSION_INSERT: Final = (
    f"INSERT INTO shield_sessions({', '.join(_SHIELD_SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _SHIELD_SESSION_COLUMNS)})"
)
_SHIELD_TRIP_COLUMNS: Final = (
    "host",
    "tripped_at_s",
    "reason",
    "sessions_closed",
    "ceiling",
    "limit_source",
    "released_at_s",
    "released_by",
)
_SHIELD_TRIP_INSERT: Final = (
    f"INSERT INTO shield_trips({', '.join(_SHIELD_TRIP_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _SHIELD_TRIP_COLUMNS)})"
)


def asset_dict(asset: AssetRow) -> dict[str, Any]:
    """One inventory row as a JSON-able dict of an export document (lists, no scan ids)."""
    out: dict[str, Any] = {}
    for name in _ASSET.fields:
        if name not in _EXPORT_SKIPS:
            value = getattr(asset, name)
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


class InventoryRepository:
    """Discovery scans, the asset inventory, alerts, and the shield's audit trail.

    Args:
        db: The store's open database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- scans ----------------------------------------------------------------------------------------
    def start_scan(self, targets: Any, params: Mapping[str, Any] | None = None) -> int:
        """Record the start of a discovery scan; return its scan id."""
        with self._db.write() as conn:
            scan_id = conn.execute(
                "INSERT INTO scans(targets_json, params_json, started_at_s) VALUES (?, ?, ?) "
                "RETURNING scan_id",
                (canonical_json(targets), canonical_json(dict(params or {})), time.time()),
            ).fetchone()[0]
        return int(scan_id)

    def unfinished_scan(self, targets: Any, params: Mapping[str, Any] | None = None) -> ScanRow | None:
        """The latest unfinished scan with exactly these targets and params (for resume), or None."""
        rows = self._db.query(
            _SCAN_SELECT + " WHERE finished_at_s IS NULL AND targets_json = ? AND params_json = ? "
            "ORDER BY scan_id DESC LIMIT 1",
            (canonical_json(targets), canonical_json(dict(params or {}))),
        )
        return _SCAN.decode(rows[0]) if rows else None

    def scans(self) -> list[ScanRow]:
        """Every scan, oldest first."""
        return [_SCAN.decode(r) for r in self._db.query(_SCAN_SELECT + " ORDER BY scan_id")]

    def mark_host_done(self, scan_id: int, host: str) -> None:
        """Record that a scan has finished with one host (its own transaction)."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO scan_hosts(scan_id, host, done_at_s) VALUES (?, ?, ?) "
                "ON CONFLICT (scan_id, host) DO UPDATE SET done_at_s = excluded.done_at_s",
                (scan_id, host, time.time()),
            )

    def hosts_done(self, scan_id: int) -> set[str]:
        """The hosts a scan has finished."""
        rows = self._db.query("SELECT host FROM scan_hosts WHERE scan_id = ?", (scan_id,))
        return {r[0] for r in rows}

    def finish_scan(self, scan_id: int) -> None:
        """Mark a scan finished."""
        with self._db.write() as conn:
            conn.execute("UPDATE scans SET finished_at_s = ? WHERE scan_id = ?", (time.time(), scan_id))

    # --- assets ---------------------------------------------------------------------------------------
    def upsert_asset(
        self,
        host: str,
        *,
        scan_id: int | None,
        seen_at_s: float,
        zone: str | None = None,
        model_key: str | None = None,
        open_ports: Iterable[int] = (),
        services: Any = (),
        os_family: str | None = None,
        groups: Iterable[str] = (),
    ) -> AssetRow:
        """Insert or update one host of the inventory; return the stored row.

        ``first_seen_s`` is kept from the first sighting; ``last_seen_s``, zone and the rest are replaced,
        and the zone and scan id before this call move to ``previous_zone`` / ``previous_scan_id``.
        ``services`` must be JSON-able.
        """
        described = {
            "zone": zone,
            "model_key": model_key,
            "open_ports_json": canonical_json(sorted({int(p) for p in open_ports})),
            "services_json": canonical_json(services),
            "os_family": os_family,
            "groups_json": canonical_json(list(groups)),
            "scan_id": scan_id,
        }
        with self._db.write() as conn:
            old = conn.execute(
                "SELECT first_seen_s, zone, scan_id FROM assets WHERE host = ?", (host,)
            ).fetchone()
            first_seen, old_zone, old_scan = old if old is not None else (seen_at_s, None, None)
            values = {
                **described,
                "host": host,
                "first_seen_s": min(first_seen, seen_at_s),
                "last_seen_s": seen_at_s,
                "previous_zone": old_zone,
                "previous_scan_id": old_scan,
            }
            if old is None:
                conn.execute(_ASSET_INSERT, tuple(values[c] for c in _ASSET.columns))
            else:
                updated = [c for c in _ASSET.columns if c != "host"]
                conn.execute(_ASSET_UPDATE, (*(values[c] for c in updated), host))
            row = conn.execute(_ASSET_SELECT + " WHERE host = ?", (host,)).fetchone()
        return _ASSET.decode(row)

    def assets(self) -> list[AssetRow]:
        """Every host of the inventory, sorted by address text."""
        return [_ASSET.decode(r) for r in self._db.query(_ASSET_SELECT + " ORDER BY host")]

    def asset(self, host: str) -> AssetRow | None:
        """One host of the inventory, or None."""
        rows = self._db.query(_ASSET_SELECT + " WHERE host = ?", (host,))
        return _ASSET.decode(rows[0]) if rows else None

    # --- alerts ---------------------------------------------------------------------------------------
    def record_alert(self, alert: Mapping[str, Any]) -> int:
        """Store one alert (a JSON-able dict); return its id."""
        with self._db.write() as conn:
            alert_id = conn.execute(
                "INSERT INTO alerts(recorded_at_s, alert_json) VALUES (?, ?) RETURNING alert_id",
                (time.time(), canonical_json(dict(alert))),
            ).fetchone()[0]
        return int(alert_id)

    def alerts(self) -> list[dict[str, Any]]:
        """Every stored alert, oldest first (the dicts given to :meth:`record_alert`)."""
        rows = self._db.query("SELECT alert_json FROM alerts ORDER BY alert_id")
        return [json.loads(r[0]) for r in rows]

    # --- the shield's audit trail (schema version 3) --------------------------------------------------
    def record_shield_sessions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store shield session records (``ShieldSession.to_dict()``) in one transaction; return how many."""
        values = [tuple(r.get(c) for c in _SHIELD_SESSION_COLUMNS) for r in rows]
        if values:
            with self._db.write() as conn:  # one transaction; the backend seam has no executemany
                for value in values:
                    conn.execute(_SHIELD_SESSION_INSERT, value)
        return len(values)

    def shield_sessions(self, host: str | None = None) -> list[dict[str, Any]]:
        """Stored shield sessions (all, or one destination host's), in start order."""
        return self._audit("shield_sessions", _SHIELD_SESSION_COLUMNS, host, "started_at_s, session_id")

    def record_shield_trip(self, trip: Mapping[str, Any]) -> int:
        """Store one shield trip (``ShieldTrip.to_dict()``); return its id."""
        with self._db.write() as conn:
            trip_id = conn.execute(
                _SHIELD_TRIP_INSERT + " RETURNING trip_id", tuple(trip.get(c) for c in _SHIELD_TRIP_COLUMNS)
            ).fetchone()[0]
        return int(trip_id)

    def finish_shield_trip(
        self, host: str, tripped_at_s: float, released_at_s: float, released_by: str
    ) -> None:
        """Record when and how a shield trip of ``host`` (tripped at ``tripped_at_s``) ended."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE shield_trips SET released_at_s = ?, released_by = ? "
                "WHERE host = ? AND tripped_at_s = ?",
                (released_at_s, released_by, host, tripped_at_s),
            )

    def shield_trips(self, host: str | None = None) -> list[dict[str, Any]]:
        """Stored shield trips (all, or one host's), oldest first."""
        return self._audit("shield_trips", _SHIELD_TRIP_COLUMNS, host, "tripped_at_s, trip_id")

    def _audit(
        self, table: str, columns: tuple[str, ...], host: str | None, order: str
    ) -> list[dict[str, Any]]:
        where, args = (" WHERE host = ?", (host,)) if host is not None else ("", ())
        rows = self._db.query(f"SELECT {', '.join(columns)} FROM {table}{where} ORDER BY {order}", args)
        return [dict(zip(columns, r, strict=True)) for r in rows]
