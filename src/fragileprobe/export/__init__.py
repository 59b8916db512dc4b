"""Safe scan-template export: the settings each asset group's regular vulnerability scans should use.

Two layers, both pure except :func:`write_exports`:

* settings: give a measured ceiling, a stored ``DeviceProfile``, or a group name plus the ``ProfileStore``,
  and get frozen records (``.to_dict()``) and text (``.text()``) for nmap, Nessus, Greenbone/OpenVAS and
  Rapid7 InsightVM;
* files a scanner imports: :func:`plan_exports` turns the inventory and the stored profiles into one scan
  per asset group (every host scanned once, in the strictest group that applies to it),
  :func:`render_exports` writes the Nessus policies, GMP commands, InsightVM template bodies, nmap lines and
  target/exclusion lists as text, and :func:`write_exports` puts them in a directory::

    from fragileprobe import export
    export.nmap_args(5, hosts=33).text()                 # a model whose stored ceiling is 5, 33 devices
    export.template_for_group("Medical Device?", store)  # unknown medical devices: ceiling 1, characterize
    plan = export.plan_exports(store.assets(), store.profiles())
    export.write_exports("scanner-settings", export.render_exports(plan, ["nessus", "targets"]))
"""

from __future__ import annotations

from fragileprobe.export._files import (
    EXPORT_FORMATS,
    GMP_FULL_AND_FAST_CONFIG,
    GMP_OPENVAS_SCANNER,
    ExportGroup,
    ExportPlan,
    GmpCommand,
    gmp_commands,
    insightvm_template_body,
    nessus_policy_xml,
    nmap_commands,
    plan_exports,
    render_exports,
    target_files,
    write_exports,
)
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
    nmap_host_group,
    openvas_settings,
    settings_for_groups,
    template_for_group,
)

__all__ = [
    "CONSERVATIVE_CEILING",
    "EXPORT_FORMATS",
    "GMP_FULL_AND_FAST_CONFIG",
    "GMP_OPENVAS_SCANNER",
    "MEDICAL_UNKNOWN_GROUP",
    "PRINTER_PORT_RANGE",
    "ExportGroup",
    "ExportPlan",
    "GmpCommand",
    "GroupScanSettings",
    "InsightVmTemplate",
    "NessusPolicy",
    "NmapArgs",
    "OpenVasSettings",
    "gmp_commands",
    "insightvm_template",
    "insightvm_template_body",
    "nessus_policy",
    "nessus_policy_xml",
    "nmap_args",
    "nmap_commands",
    "nmap_host_group",
    "openvas_settings",
    "plan_exports",
    "render_exports",
    "settings_for_groups",
    "target_files",
    "template_for_group",
    "write_exports",
]
