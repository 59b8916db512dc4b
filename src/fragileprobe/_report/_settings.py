"""The recommended scanner settings a report shows: per characterized model, per discovered group (the
``fragileprobe.export`` templates, fed from a record or its JSON dict)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fragileprobe._report._data import MEDICAL_GROUP, _discovery_dict, _discovery_groups

if TYPE_CHECKING:
    from fragileprobe._profile import Characterization
    from fragileprobe._store import ProfileStore
    from fragileprobe.export import GroupScanSettings

__all__ = ["discovery_settings", "settings_for_characterization"]


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
