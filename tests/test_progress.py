"""Live progress: the characterization state fed by progress and log events, the log tap, the notebook
view outside a notebook, and the terminal views' plain (non-terminal) output."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from fragileprobe._characterize import ProgressEvent
from fragileprobe._discovery import DiscoveryProgress
from fragileprobe._progress import (
    CharacterizeState,
    LogTap,
    NotebookProgress,
    TerminalCharacterizeView,
    TerminalDiscoveryView,
)


def _ev(kind: str, trial: int = 0, level: int | None = None, outcome: str | None = None) -> ProgressEvent:
    return ProgressEvent(kind, trial, level, outcome, 0.0)


def _level(state: Any, trial: int, level: int, outcome: str, in_flight: int, median_s: float) -> None:
    state.on_progress(_ev("level_start", trial, level))
    state.on_log("watchdog.beat", {"ok": True, "latency_s": median_s})
    state.on_progress(_ev("level_end", trial, level, outcome))
    state.on_log(
        "characterize.level",
        {"trial": trial, "level": level, "in_flight": in_flight, "latency_median_s": median_s},
    )


def test_state_records_levels_with_in_flight_from_the_log_event() -> None:
    state = CharacterizeState(host="127.0.0.9", planned_trials=2, ladder=(1, 2, 5), dwell_s=0.1)
    _level(state, 0, 1, "passed", 1, 0.01)
    _level(state, 0, 2, "failed", 2, 0.03)
    assert state.history == [(0, 1, "passed", 1, 0.01), (0, 2, "failed", 2, 0.03)]
    assert state.confirmed == 2
    state.on_log("watchdog.beat", {"ok": False, "latency_s": 0.3})
    assert state.beats_failed == 1


def test_device_down_is_a_red_panel_even_without_a_terminal() -> None:
    buf = io.StringIO()
    view = TerminalCharacterizeView(
        CharacterizeState(host="127.0.0.9", planned_trials=1, ladder=(1, 7), dwell_s=0.1),
        Console(file=buf, width=100, force_terminal=False),
    )
    with view:
        view.on_progress(_ev("level_start", 0, 7))
        view.on_log("watchdog.device_down", {"in_flight": 7, "reason": "timeout"})
        view.on_progress(_ev("level_end", 0, 7, "failed"))
        view.on_log("characterize.level", {"trial": 0, "level": 7, "in_flight": 7})
        view.on_progress(_ev("recovering", 0, 7))
    text = buf.getvalue()
    assert "DEVICE DOWN" in text
    assert "stopped answering its heartbeat during level 7 (7 sessions in flight)" in text
    assert "level   7 sessions: FAILED" in text
    assert text.index("DEVICE DOWN") < text.index("FAILED")


@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6))
def test_remaining_estimate_is_never_negative_and_zero_when_all_trials_are_done(levels: list[int]) -> None:
    state = CharacterizeState(host="127.0.0.9", planned_trials=len(levels), ladder=(1, 2, 5), dwell_s=0.1)
    for trial, n in enumerate(levels):
        for i in range(n):
            _level(state, trial, i + 1, "passed", i + 1, 0.01)
            remaining = state.remaining_s()
            assert remaining is not None
            assert remaining >= 0.0
        state.on_progress(_ev("trial_end", trial))
    assert state.remaining_s() == 0.0


def test_log_tap_passes_every_event_on_unchanged() -> None:
    tap = LogTap()
    seen: list[str] = []
    tap.sinks.append(lambda event, fields: seen.append(event))
    for name in ("watchdog.beat", "probe.connect", "discovery.alert"):
        event = {"event": name, "x": 1}
        assert tap(None, "debug", event) == {"event": name, "x": 1}
    assert seen == ["watchdog.beat", "discovery.alert"]


def test_discovery_view_prints_alerts_and_progress_lines_without_a_terminal() -> None:
    buf = io.StringIO()
    view = TerminalDiscoveryView(Console(file=buf, width=120, force_terminal=False))
    with view:
        view.on_log(
            "discovery.alert",
            {"host": "127.0.0.7", "zone": "Office LAN", "zone_kind": "general", "model": "pump-abc"},
        )
        view.on_progress(
            DiscoveryProgress(hosts_done=1, hosts_total=1, assets_found=1, alerts=1, host="127.0.0.7")
        )
    text = buf.getvalue()
    assert "ALERT 127.0.0.7: medical device in zone 'Office LAN' (general), model pump-abc" in text
    assert "discovery: 1/1 addresses, 0 live, 1 assets, 1 alerts" in text


def test_discovery_lines_say_addresses_live_hosts_and_the_time_left_for_a_large_block() -> None:
    """A /16 prints at most MAX_LINES lines, each with the live hosts found and the estimate left."""
    buf = io.StringIO()
    view = TerminalDiscoveryView(Console(file=buf, width=160, force_terminal=False))
    total = 65536
    with view:
        for done in range(1, total + 1, 7):
            view.on_progress(
                DiscoveryProgress(
                    hosts_done=done,
                    hosts_total=total,
                    assets_found=done // 1000,
                    alerts=0,
                    host="10.0.0.1",
                    hosts_alive=done // 700,
                    elapsed_s=done / 500,
                    eta_s=(total - done) / 500,
                )
            )
        view.on_progress(
            DiscoveryProgress(
                hosts_done=total,
                hosts_total=total,
                assets_found=65,
                alerts=0,
                host="10.0.0.1",
                hosts_alive=93,
                elapsed_s=131.0,
                eta_s=0.0,
            )
        )
    lines = buf.getvalue().splitlines()
    assert len(lines) <= TerminalDiscoveryView.MAX_LINES + 1
    assert lines[-1].startswith(f"discovery: {total}/{total} addresses, 93 live, 65 assets")
    assert "left" in lines[-1]


def test_notebook_progress_outside_a_notebook_prints_a_line_per_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = NotebookProgress(title="pump")
    progress(_ev("level_start", 0, 5))
    progress(_ev("level_end", 0, 5, "passed"))
    progress(_ev("done", 1))
    assert capsys.readouterr().out == "trial 1 level 5: passed (0.0 s)\n"
    assert progress.rows == [(0, 5, "passed")]
    assert "done" in progress._html()


def test_discovery_view_says_how_loud_the_run_will_be_when_it_starts() -> None:
    buf = io.StringIO()
    view = TerminalDiscoveryView(Console(file=buf, width=200, force_terminal=False))
    tap = LogTap()
    tap.sinks.append(view.on_log)
    with view:
        tap(
            None,
            "info",
            {
                "event": "discovery.start",
                "todo": 4096,
                "global_rate": 1000.0,
                "per_host_sessions": 1,
                "rate_per_host": 10.0,
                "max_hosts_in_parallel": 4096,
            },
        )
    assert (
        "discovery: 4096 address(es); at most 1000 new connections/s in total, 1 session(s) and "
        "10 connects/s per host, 4096 hosts at once"
    ) in buf.getvalue()
