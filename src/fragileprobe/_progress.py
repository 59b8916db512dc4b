"""Live progress for long work: a terminal view (Rich) for the CLI and an in-place view for notebooks.

The library reports progress two ways, and both are used here without changing the library:

* the ``progress=`` callbacks of ``characterize()`` (:class:`~fragileprobe._characterize.ProgressEvent`:
  level started/ended, recovering, trial done) and ``discover()`` (``DiscoveryProgress`` per host);
* its structlog events (stable names): ``watchdog.beat`` (each heartbeat's latency), ``watchdog.device_down``
  and ``characterize.level`` (sessions in flight at the end of a level). The CLI, which configures logging
  as an application may, puts a :class:`LogTap` first in the processor chain to feed those to the view.

Rich is imported only when a terminal view is built (the CLI), never at import time; the notebook view
uses IPython's display machinery when it is present and plain ``print`` otherwise.
"""

from __future__ import annotations

import html
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console
    from rich.live import Live
    from rich.panel import Panel
    from rich.progress import Progress, TaskID
    from structlog.typing import EventDict, WrappedLogger

    from fragileprobe._characterize import ProgressEvent
    from fragileprobe._discovery import DiscoveryProgress

__all__ = [
    "CharacterizeState",
    "LogTap",
    "NotebookDiscoveryProgress",
    "NotebookProgress",
    "TerminalCharacterizeView",
    "TerminalDiscoveryView",
    "discovery_line",
]

# Heartbeat latencies kept for the live view's "recent" figure: a few seconds of beats at the usual
# 0.1-1 s interval; older ones no longer say anything about the current level.
RECENT_BEATS: Final = 10
# Refreshes per second of the terminal view: smooth enough for a human, cheap for a 2-core machine.
REFRESH_PER_S: Final = 4


@dataclass(slots=True)
class CharacterizeState:
    """What the live characterization view shows; updated from progress events and log events.

    Attributes:
        host: The device.
        planned_trials: Trials asked for.
        ladder: The ladder climbed.
        dwell_s: Seconds per level.
        started: ``time.monotonic()`` at the start.
        trial: Current 0-based trial.
        level: The level being held now (None between levels).
        phase: "starting", "measuring baseline", "holding", "recovering", "done".
        recent_latencies_s: The last heartbeat latencies (ok beats).
        beats_failed: Failed heartbeats seen.
        history: ``(trial, level, outcome, in_flight, median latency)`` per finished level.
        downs: Human-readable watchdog declarations, newest last.
        level_seconds: Wall time of each finished level (for the remaining-time estimate).
        trial_levels: Levels tested per finished trial (for the remaining-time estimate).
    """

    host: str
    planned_trials: int
    ladder: tuple[int, ...]
    dwell_s: float
    # time.monotonic, not the event loop's clock: the state is built before the loop runs, and Rich redraws
    # it (elapsed_s) from its own refresh thread, outside the loop.
    started: float = field(default_factory=time.monotonic)
    trial: int = 0
    level: int | None = None
    level_started: float | None = None
    phase: str = "starting"
    recent_latencies_s: list[float] = field(default_factory=list)
    beats_failed: int = 0
    history: list[tuple[int, int, str, int | None, float | None]] = field(default_factory=list)
    downs: list[str] = field(default_factory=list)
    level_seconds: list[float] = field(default_factory=list)
    trial_levels: list[int] = field(default_factory=list)
    confirmed: int = 0  # history rows complete (their characterize.level event arrived)
    _levels_this_trial: int = 0

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started  # also called from Rich's refresh thread (see ``started``)

    def remaining_s(self) -> float | None:
        """A rough estimate: levels still expected times the mean level time (recoveries included)."""
        if not self.level_seconds:
            return None
        per_trial = statistics.mean(self.trial_levels) if self.trial_levels else float(len(self.ladder))
        expected = per_trial * self.planned_trials
        done = sum(self.trial_levels) + self._levels_this_trial
        left = max(0.0, expected - done)
        return left * statistics.mean(self.level_seconds)

    def latency_now_s(self) -> float | None:
        return self.recent_latencies_s[-1] if self.recent_latencies_s else None

    # --- inputs --------------------------------------------------------------------------------------
    def on_progress(self, event: ProgressEvent) -> None:
        """Feed a characterize() ProgressEvent."""
        self.trial = event.trial
        if event.kind == "baseline":
            self.phase = "climbing"
        elif event.kind == "level_start":
            self.level = event.level
            self.level_started = time.monotonic()  # the clock of ``started`` (compared with it)
            self.phase = "holding"
            self.recent_latencies_s.clear()
        elif event.kind == "level_end":
            if self.level_started is not None:
                self.level_seconds.append(time.monotonic() - self.level_started)  # as level_started
            self._levels_this_trial += 1
            median = statistics.median(self.recent_latencies_s) if self.recent_latencies_s else None
            # In flight and the level's own median arrive right after, in the characterize.level log event.
            self.history.append((event.trial, event.level or 0, event.outcome or "?", None, median))
            self.level = None
            self.phase = "between levels"
        elif event.kind == "recovering":
            self.phase = "recovering"
        elif event.kind == "recovered":
            self.phase = "recovered"
        elif event.kind == "trial_end":
            self.trial_levels.append(self._levels_this_trial)
            self._levels_this_trial = 0
        elif event.kind == "done":
            self.phase = "done"

    def on_log(self, event: str, fields: EventDict) -> None:
        """Feed one structlog event (called by :class:`LogTap`)."""
        if event == "watchdog.beat":
            if fields.get("ok"):
                latency = fields.get("latency_s")
                if isinstance(latency, int | float):
                    self.recent_latencies_s.append(float(latency))
                    del self.recent_latencies_s[:-RECENT_BEATS]
            else:
                self.beats_failed += 1
        elif event == "watchdog.device_down" and self.level is not None:
            # Before the first level (already down, heartbeat port closed) there is no level to blame and no
            # recovery follows: the run's own error says what happened.
            self.downs.append(
                f"{self.host} stopped answering its heartbeat during level {self.level} "
                f"({fields.get('in_flight')} sessions in flight): {fields.get('reason')}"
            )
        elif event == "characterize.level" and self.history:
            trial, level, outcome, _, median = self.history[-1]
            if fields.get("level") == level and fields.get("trial") == trial:
                in_flight = fields.get("in_flight")
                reported = fields.get("latency_median_s")
                self.history[-1] = (
                    trial,
                    level,
                    outcome,
                    int(in_flight) if isinstance(in_flight, int) else None,
                    float(reported) if isinstance(reported, int | float) else median,
                )
                self.confirmed = len(self.history)


class LogTap:
    """A structlog processor that shows selected library events to a progress view, then passes them on.

    Put it first in the processor chain (the CLI does); it never drops or changes an event.
    """

    EVENTS: Final = frozenset(
        {"watchdog.beat", "watchdog.device_down", "characterize.level", "discovery.alert", "discovery.start"}
    )

    def __init__(self) -> None:
        self.sinks: list[Callable[[str, EventDict], None]] = []

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event = event_dict.get("event")
        if event in self.EVENTS:
            for sink in list(self.sinks):
                sink(str(event), event_dict)
        return event_dict


# --- terminal (Rich) ----------------------------------------------------------------------------------------


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


class TerminalCharacterizeView:
    """Rich view of a characterization: a live status panel on a terminal, one line per level otherwise.

    A device going down is printed as a red panel in both modes (it is the one thing nobody may miss).

    Args:
        state: The state to show (updated by the caller's callbacks).
        console: A ``rich.console.Console`` (stdout for people, stderr when stdout carries JSON).
    """

    def __init__(self, state: CharacterizeState, console: Console) -> None:
        self.state = state
        self.console = console
        self._live: Live | None = None
        self._printed_history = 0
        self._printed_downs = 0

    def __enter__(self) -> TerminalCharacterizeView:
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(
                self._render(),
                console=self.console,
                refresh_per_second=REFRESH_PER_S,
                transient=True,
                get_renderable=self._render,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        self.flush()

    def on_progress(self, event: ProgressEvent) -> None:
        """Feed a ProgressEvent and print what became final."""
        self.state.on_progress(event)
        if event.kind in ("level_start", "recovering", "recovered", "trial_end", "done"):
            self.flush(everything=True)
            if event.kind == "recovering":
                self.console.print(
                    f"   [yellow]power-cycling / waiting for {self.state.host} to come back ...[/]"
                )
            elif event.kind == "recovered":
                self.console.print(f"   [green]{self.state.host} answers its heartbeat again; going on[/]")
            elif event.kind == "trial_end":
                self.console.print(
                    f"[bold]trial {event.trial + 1} done[/] ({_fmt_s(event.elapsed_s)} elapsed)"
                )

    def on_log(self, event: str, fields: EventDict) -> None:
        """Feed a structlog event (from :class:`LogTap`)."""
        self.state.on_log(event, fields)
        if event in ("characterize.level", "watchdog.device_down"):
            self.flush()

    def flush(self, *, everything: bool = False) -> None:
        """Print device-down panels and finished levels not printed yet.

        Args:
            everything: Also levels whose ``characterize.level`` event has not arrived (no log tap).
        """
        from rich.panel import Panel

        st = self.state
        for text in st.downs[self._printed_downs :]:
            panel = Panel(
                text + "\nEvery session was cancelled at once; recovery runs next.",
                title="DEVICE DOWN",
                border_style="bold red",
                style="red",
            )
            self.console.print(panel, soft_wrap=False)
        self._printed_downs = len(st.downs)
        upto = len(st.history) if everything else st.confirmed
        for trial, level, outcome, in_flight, median in st.history[self._printed_history : upto]:
            style = {"passed": "green", "failed": "bold red", "warned": "yellow"}.get(outcome, "")
            plural = "" if in_flight == 1 else "s"
            flight = "" if in_flight is None else f", {in_flight} session{plural} in flight"
            if in_flight is not None and outcome == "failed":
                flight += " when it went down"
            self.console.print(
                f"trial {trial + 1}  level {level:>3} sessions: [{style}]{outcome.upper():7}[/]"
                f"  heartbeat median {_fmt_ms(median)}{flight}"
            )
        self._printed_history = max(self._printed_history, upto)

    def _render(self) -> Panel:
        from rich.panel import Panel
        from rich.table import Table

        st = self.state
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("device", st.host)
        table.add_row("trial", f"{st.trial + 1} of {st.planned_trials}")
        held = f"{st.level} sessions in flight" if st.level is not None else "-"
        table.add_row("level", held + (f" (dwell {st.dwell_s:g} s)" if st.level is not None else ""))
        table.add_row("phase", st.phase)
        table.add_row("heartbeat latency", f"{_fmt_ms(st.latency_now_s())} (failed beats: {st.beats_failed})")
        table.add_row("elapsed", _fmt_s(st.elapsed_s()))
        table.add_row("remaining", "~" + _fmt_s(st.remaining_s()))
        return Panel(table, title="fragileprobe characterize", border_style="cyan")


def start_line(fields: EventDict) -> str:
    """The line a discovery prints before its first packet: how wide and how loud it will be."""
    return (
        f"discovery: {fields.get('todo')} address(es); at most {fields.get('global_rate'):g} new "
        f"connections/s in total, {fields.get('per_host_sessions')} session(s) and "
        f"{fields.get('rate_per_host'):g} connects/s per host, {fields.get('max_hosts_in_parallel')} "
        "hosts at once"
    )


def discovery_line(p: DiscoveryProgress) -> str:
    """One line of discovery progress: addresses done, live hosts found, assets, alerts, elapsed, ETA."""
    eta = "?" if p.eta_s is None else "~" + _fmt_s(p.eta_s)
    return (
        f"discovery: {p.hosts_done}/{p.hosts_total} addresses, {p.hosts_alive} live, "
        f"{p.assets_found} assets, {p.alerts} alerts, {_fmt_s(p.elapsed_s)} elapsed, {eta} left"
    )


class TerminalDiscoveryView:
    """Rich view of a discovery scan: a progress bar on a terminal, a line every few hosts otherwise.

    The remaining time is the library's estimate (``DiscoveryProgress.eta_s``), which counts silent
    addresses at the cost of their liveness probes; Rich's own (from the bar's speed) would not.
    """

    # Without a terminal, one line per this many addresses at least (and at the end): a /24 gives ~10 lines.
    LINE_EVERY_HOSTS: Final = 25
    # ...and at most this many lines for a large block (a /16 would otherwise print 2,600).
    MAX_LINES: Final = 40

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()  # built before the event loop runs (the CLI), so not its clock
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._alerts = 0

    def __enter__(self) -> TerminalDiscoveryView:
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("discovery"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "addresses  {task.fields[alive]} live  {task.fields[assets]} assets  "
                    "{task.fields[alerts]} alerts  {task.fields[eta]} left"
                ),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("scan", total=None, assets=0, alerts=0, alive=0, eta="?")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def on_log(self, event: str, fields: EventDict) -> None:
        """Feed a structlog event (from :class:`LogTap`): the run's limits when it starts (every input is
        valid by then, and no packet has been sent yet); alerts the moment they are raised."""
        if event == "discovery.start":
            self.console.print(start_line(fields))
            return
        if event != "discovery.alert":
            return
        from rich.markup import escape

        self._alerts += 1
        self.console.print(
            f"[bold red]ALERT[/] {escape(str(fields.get('host')))}: medical device in zone "
            f"{escape(repr(fields.get('zone')))} ({escape(str(fields.get('zone_kind')))}), "
            f"model {escape(str(fields.get('model')))}"
        )

    def on_progress(self, p: DiscoveryProgress) -> None:
        """Feed a DiscoveryProgress."""
        if self._progress is not None and self._task is not None:  # both set together, in __enter__
            self._progress.update(
                self._task,
                total=p.hosts_total,
                completed=p.hosts_done,
                assets=p.assets_found,
                alerts=p.alerts,
                alive=p.hosts_alive,
                eta="?" if p.eta_s is None else "~" + _fmt_s(p.eta_s),
            )
            return
        every = max(self.LINE_EVERY_HOSTS, -(-p.hosts_total // self.MAX_LINES))
        if p.hosts_done % every == 0 or p.hosts_done == p.hosts_total:
            self.console.print(discovery_line(p))


# --- notebooks ---


def _notebook_handle(initial_html: str) -> tuple[Any, Any]:  # IPython's objects (optional, partly untyped)
    """In a running IPython kernel: (a display handle showing ``initial_html``, the ``HTML`` class) for
    updating one cell output in place; elsewhere (None, None), and the views print lines instead."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return None, None
    if get_ipython() is None:
        return None, None
    page = HTML(initial_html)  # type: ignore[no-untyped-call, unused-ignore]
    return display(page, display_id=True), HTML  # type: ignore[no-untyped-call, unused-ignore]


class NotebookDiscoveryProgress:
    """Progress of a discovery, updated in place in a Jupyter cell (a few text lines outside a notebook).

    Pass it as ``progress=``:
    ``report = await fp.discover(block, scope=scope, progress=NotebookDiscoveryProgress())``. It shows
    addresses done, live hosts found and the estimate of the time left (silent space counted at its real
    cost, see :func:`fragileprobe._discovery_policy.estimate_remaining_s`).
    """

    # Outside a notebook: at most this many printed lines.
    MAX_LINES: Final = 20

    def __init__(self) -> None:
        self.last: DiscoveryProgress | None = None
        self._handle, self._display = _notebook_handle("<div>discovery: starting</div>")

    def __call__(self, p: DiscoveryProgress) -> None:
        self.last = p
        if self._handle is not None:
            self._handle.update(self._display(f"<div>{html.escape(discovery_line(p))}</div>"))
            return
        every = max(1, -(-p.hosts_total // self.MAX_LINES))
        if p.hosts_done % every == 0 or p.hosts_done == p.hosts_total:
            print(discovery_line(p), flush=True)


class NotebookProgress:
    """Progress of a characterization, updated in place in a Jupyter cell (text outside a notebook).

    Pass it as ``progress=``::

        char = await fp.characterize(target, scope=scope, progress=NotebookProgress())

    It uses IPython's ``display(..., display_id=True)`` handle (no widgets needed); without IPython it
    prints one line per finished level.
    """

    def __init__(self, *, title: str = "characterization") -> None:
        self.title = title
        self.rows: list[tuple[int, int | None, str]] = []
        self.current = "starting"
        self.elapsed_s = 0.0
        self._handle, self._display = _notebook_handle(self._html())

    def __call__(self, event: ProgressEvent) -> None:
        self.elapsed_s = event.elapsed_s
        if event.kind == "level_start":
            self.current = f"trial {event.trial + 1}: holding {event.level} sessions"
        elif event.kind == "level_end":
            self.rows.append((event.trial, event.level, event.outcome or "?"))
            self.current = f"trial {event.trial + 1}: level {event.level} {event.outcome}"
            if self._handle is None:
                print(
                    f"trial {event.trial + 1} level {event.level}: {event.outcome} ({event.elapsed_s:.1f} s)",
                    flush=True,
                )
        elif event.kind == "recovering":
            self.current = f"trial {event.trial + 1}: device down at {event.level}; recovering"
        elif event.kind == "done":
            self.current = "done"
        if self._handle is not None:
            self._handle.update(self._display(self._html()))

    def _html(self) -> str:
        colors = {"passed": "#1e8449", "failed": "#c0392b", "warned": "#b9770e"}
        cells = "".join(
            f'<span style="display:inline-block;margin:1px;padding:1px 6px;border-radius:3px;color:white;'
            f'background:{colors.get(o, "#777")}" title="trial {t + 1}: {o}">{lv}</span>'
            for t, lv, o in self.rows
        )
        return (
            f"<div><b>{html.escape(self.title)}</b> &middot; {html.escape(self.current)} &middot; "
            f"{self.elapsed_s:.1f} s<br>{cells}</div>"
        )
