"""``fragileprobe characterize`` builds one CharacterizeSettings: a bad value is refused by the settings'
own record, the message names the option first (mapped from ``ConfigError.field`` by a table, not from the
text), and nothing is created or sent. The CLI runs in-process (``fragileprobe.cli._run_app``)."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import TYPE_CHECKING, Any

import pytest

from fragileprobe._charsettings import OPTIONS
from fragileprobe._level_verdict import EarlyWarning
from fragileprobe.cli import _CHARACTERIZE_OPTIONS, _run_app, characterize

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

H = "127.0.0.1"  # never contacted: every row is refused before anything is sent


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory; the CLI's process-wide settings (structlog, sys.excepthook) restored after."""
    import structlog

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    saved = structlog.get_config()
    try:
        yield tmp_path
    finally:
        structlog.configure(**saved)


ROWS = [
    (["--dwell", "0"], "--dwell: dwell_s: must be a positive number, got 0.0"),
    (["--hold", "-1"], "--hold: hold_s: must be a non-negative number, got -1.0"),
    (["--interval", "-2"], "--interval: interval_s: must be a positive number, got -2.0"),
    (["--time-budget", "0"], "--time-budget: time_budget_s: must be a positive number, got 0.0"),
    (["--healthy-beats", "0"], "--healthy-beats: healthy_beats: must be an integer >= 1, got 0"),
    (
        ["--recovery-timeout", "0"],
        "--recovery-timeout: recovery_timeout_s: must be a positive number, got 0.0",
    ),
    (["--trials", "0"], "--trials: trials: must be an integer >= 1, got 0"),
    (["--crash-budget", "0"], "--crash-budget: crash_budget: must be an integer >= 1, got 0"),
    (["--margin", "1"], "--margin: margin_fraction: must be a number in [0, 1), got 1.0"),
    (["--ladder", "5,2"], "--ladder: ladder: must climb strictly, but 2 follows 5"),
    (["--early-warning", "0.5"], "--early-warning: latency_factor: must be a number > 1, got 0.5"),
    (["--linger", "2.5"], "--linger: linger_s: must be longer than the watchdog's detection bound (3 s"),
]


@pytest.mark.parametrize(("argv", "message"), ROWS, ids=[r[0][0] for r in ROWS])
def test_a_bad_setting_names_its_option_and_creates_nothing(
    argv: list[str], message: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code = _run_app(["characterize", H, *argv, "--store", str(work / "fp.db")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message}"), lines
    assert not list(work.iterdir())  # no store, nothing else


def test_every_mapped_field_is_a_setting_and_every_option_exists() -> None:
    fields = set(OPTIONS) | {f.name for f in dataclasses.fields(EarlyWarning)}
    assert set(_CHARACTERIZE_OPTIONS) <= fields
    options: set[str] = set()
    for parameter in inspect.signature(characterize).parameters.values():
        for meta in getattr(parameter.annotation, "__metadata__", ()):
            options.update(getattr(meta, "param_decls", ()) or ())
    declared = {"--" + p.replace("_", "-") for p in inspect.signature(characterize).parameters} | options
    assert set(_CHARACTERIZE_OPTIONS.values()) <= declared


def test_the_settings_reach_characterize_as_one_object(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command hands characterize() a CharacterizeSettings built from its options, no flat keywords."""
    import fragileprobe._characterize as module

    seen: dict[str, Any] = {}

    async def fake(target: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise module.DeviceDownError("stop here: nothing is sent in this test")

    monkeypatch.setattr(module, "characterize", fake)
    code = _run_app(
        [
            "characterize",
            H,
            "--dwell",
            "0.4",
            "--trials",
            "2",
            "--ladder",
            "2,5",
            "--early-warning",
            "3",
            "--hold",
            "0",
            "--store",
            str(work / "fp.db"),
        ]
    )
    assert code == 1  # device trouble, from the fake
    settings = seen["settings"]
    assert settings.timing.dwell_s == 0.4
    assert settings.timing.hold_s == 0.0
    assert settings.timing.heartbeat_timeout_s == 2.0  # the heartbeat's timeout, in the settings
    assert settings.ramp.ladder == (2, 5)
    assert settings.ramp.trials == 2
    assert settings.early_warning == EarlyWarning(latency_factor=3.0)
    assert callable(settings.recovery.hook)
    assert not set(seen) & set(OPTIONS)  # no flat keyword beside the settings
