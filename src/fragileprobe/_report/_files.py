"""Report files: ``OUT.html``, ``OUT.md`` and ``OUT.png`` for a characterization or a discovery run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fragileprobe._errors import ConfigError
from fragileprobe._profile import Characterization
from fragileprobe._report._data import _discovery_dict
from fragileprobe._report._html import characterization_html, discovery_html
from fragileprobe._report._markdown import characterization_markdown, discovery_markdown
from fragileprobe._report._plots import discovery_plot, figure_png, latency_plot
from fragileprobe._report._settings import discovery_settings
from fragileprobe._report._shield import shield_timeline

if TYPE_CHECKING:
    import os

    from fragileprobe._store import ProfileStore

__all__ = ["ReportFiles", "write_report"]


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
        fig = latency_plot(subject) if plot else None
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
            md = discovery_markdown(
                data, settings=settings, plot_file=png_path.name if fig is not None else None
            )
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
