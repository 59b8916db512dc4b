"""Reports for people: HTML and Markdown for a characterization or a discovery run, plots, notebook views.

Everything here renders data that already exists (a :class:`~fragileprobe.Characterization`, a
:class:`~fragileprobe.DiscoveryReport` or their JSON dicts, a :class:`~fragileprobe._store.ProfileStore`);
nothing touches the network, and the records themselves hold no drawing code: their ``plot()`` and
``_repr_html_`` delegate here. matplotlib (``fragileprobe[report]``) is imported lazily, only when a plot is
drawn, and only through its object API (``matplotlib.figure.Figure``): no pyplot state, no GUI backend, so
rendering works headless (PNG through Agg).

The HTML report is one self-contained file: inline CSS, plots embedded as base64 PNG, no scripts and no
external assets, so it can be mailed to the biomedical team or attached to a ticket as it is.

Sections (both formats): findings in plain language, the plot, the recommended settings per scanner, the
alerts (discovery), and the evidence (characterization: every level of every trial with its heartbeat
latencies, and the heartbeat timeline; discovery: every asset with what it showed).

One module per output; this package re-exports their public names (``fragileprobe._report.write_report``
and the others keep working)::

    _data       inputs: load_report_source, discovery_dict_from_store, the discovery-dict readers
    _content    what the reports say, in any format: verdict, findings, evidence rows and columns
    _plots      matplotlib figures: latency_plot, timeline_plot, discovery_plot, figure_png
    _settings   recommended scanner settings: settings_for_characterization, discovery_settings
    _markup     HTML building blocks: escaping, tables, the page
    _html       the HTML pages and the notebook views (characterization_repr_html, discovery_repr_html)
    _markdown   the Markdown reports
    _shield     the shield's section: sessions and trips per device
    _files      write_report, ReportFiles
"""

from __future__ import annotations

from fragileprobe._report._data import MEDICAL_GROUP, discovery_dict_from_store, load_report_source
from fragileprobe._report._files import ReportFiles, write_report
from fragileprobe._report._html import (
    characterization_html,
    characterization_repr_html,
    discovery_html,
    discovery_repr_html,
)
from fragileprobe._report._markdown import characterization_markdown, discovery_markdown
from fragileprobe._report._plots import discovery_plot, figure_png, latency_plot, timeline_plot
from fragileprobe._report._settings import discovery_settings, settings_for_characterization
from fragileprobe._report._shield import shield_section_html, shield_timeline

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
    "shield_section_html",
    "shield_timeline",
    "timeline_plot",
    "write_report",
]
