"""Safe scan-template export: the settings each asset group's regular vulnerability scans should use.

Everything here is pure (no I/O): give a measured ceiling, a stored ``DeviceProfile``, or a group name plus
the ``ProfileStore``, and get frozen records (``.to_dict()``) and text (``.text()``) for nmap, Nessus,
Greenbone/OpenVAS and Rapid7 InsightVM::

    from fragileprobe import export
    export.nmap_args(5).text()                           # a model whose stored ceiling is 5
    export.template_for_group("Medical Device?", store)  # unknown medical devices: ceiling 1, characterize
    for group, s in export.settings_for_groups(report, store).items():
        print(s.text())
"""

from __future__ import annotations

from fragileprobe.export._settings import (
    CONSERVATIVE_CEILING,
    MEDICAL_UNKNOWN_GROUP,
    PRINTER_PORT_RANGE,
    GroupScanSettings,
    InsightVmTemplate,
    NessusPolicy,
    NmapArgs,
    OpenVasSettings,
    insightvm_template,
    nessus_policy,
    nmap_args,
    openvas_settings,
    settings_for_groups,
    template_for_group,
)

__all__ = [
    "CONSERVATIVE_CEILING",
    "MEDICAL_UNKNOWN_GROUP",
    "PRINTER_PORT_RANGE",
    "GroupScanSettings",
    "InsightVmTemplate",
    "NessusPolicy",
    "NmapArgs",
    "OpenVasSettings",
    "insightvm_template",
    "nessus_policy",
    "nmap_args",
    "openvas_settings",
    "settings_for_groups",
    "template_for_group",
]
