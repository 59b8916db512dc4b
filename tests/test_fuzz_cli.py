"""(H) Fuzzing every command-line argument and every file format the CLI reads.

Property, for any value the library's own parser refuses: exit code 2, exactly one line on stderr that
starts with ``error: ``, no traceback, and no file created or changed (no store, no alert file; the input
file keeps its bytes). Values the parser accepts are discarded (``assume``): the command would then run,
and that is not what these tests are about. The CLI runs in-process (``fragileprobe.cli._run_app``, the
console script's own entry point), so a few hundred examples take seconds; the subprocess path is covered
by ``test_hostile_input.py``.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fragileprobe import FragileProbeError
from fragileprobe._groups import Rules, Zones
from fragileprobe._scope import Scope, parse_ports, parse_targets
from fragileprobe.cli import _run_app
from fragileprobe.emulator._fleet import FleetConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

# Digits that are not ASCII, signs, separators and junk: what a mistyped or pasted argument holds.
_PIECES = [
    "²",
    "³",
    "¹",
    "٢",
    "\uff12",
    "\u200b",
    "0",
    "1",
    "9",
    "-",
    ",",
    "/",
    ".",
    ":",
    "=",
    "%",
    " ",
    "+",
    "_",
    "e",
    "x",
    "nan",
    "inf",
    "\x00",
    "\n",
    "65536",
    "99999",
    "127.0.0.1",
    "::ffff:",
    "hospital",
]
hostile_text = st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8).map("".join),
    st.text(max_size=20),
)
CLI_FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _accepted(check: Callable[[], Any]) -> bool:
    try:
        check()
    except FragileProbeError:
        return False
    return True


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _assert_refused(argv: list[str], work: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = _snapshot(work)
    capsys.readouterr()
    code = _run_app(argv)
    _out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, err[-1500:])
    assert "Traceback" not in err
    assert len(lines) == 1, (argv, lines)
    assert lines[0].startswith("error: "), (argv, lines)
    assert _snapshot(work) == before, argv
    return lines[0]


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


H = "127.0.0.1"  # never contacted: every example is refused before anything is sent


def _no_control(text: str) -> bool:
    return "\x00" not in text and "\n" not in text and not text.startswith("-")


# --- arguments ---------------------------------------------------------------------------------------------


@CLI_FUZZ
@given(value=hostile_text)
def test_any_refused_port_spec_is_one_error_line(value: str, work: Path, capsys: Any) -> None:
    assume(_no_control(value) and not _accepted(lambda: parse_ports(value)))
    for command in (["discover", H], ["characterize", H]):
        _assert_refused([*command, "--ports", value, "--store", str(work / "fp.db")], work, capsys)


@CLI_FUZZ
@given(value=hostile_text)
def test_any_refused_target_is_one_error_line(value: str, work: Path, capsys: Any) -> None:
    assume(_no_control(value) and not _accepted(lambda: parse_targets(value)))
    _assert_refused(["discover", value, "--store", str(work / "fp.db")], work, capsys)


@CLI_FUZZ
@given(value=hostile_text)
def test_any_refused_scope_is_one_error_line(value: str, work: Path, capsys: Any) -> None:
    assume(_no_control(value) and not _accepted(lambda: Scope(value)))
    _assert_refused(["characterize", H, "--scope", value, "--store", str(work / "fp.db")], work, capsys)


@CLI_FUZZ
@given(bound=hostile_text, known=hostile_text)
def test_any_refused_port_alias_is_one_error_line(bound: str, known: str, work: Path, capsys: Any) -> None:
    def ok(text: str) -> bool:
        return text.strip().isascii() and text.strip().isdigit() and 1 <= int(text) <= 65535

    assume(_no_control(bound) and _no_control(known) and not (ok(bound) and ok(known)))
    _assert_refused(
        ["discover", H, "--port-alias", f"{bound}={known}", "--store", str(work / "fp.db")], work, capsys
    )


INT_OPTIONS = [
    ("discover", "--sessions-per-host"),
    ("discover", "--max-hosts"),
    ("characterize", "--trials"),
    ("characterize", "--crash-budget"),
    ("characterize", "--healthy-beats"),
]
FLOAT_OPTIONS = [
    ("discover", "--rate-per-host"),
    ("discover", "--connect-timeout"),
    ("discover", "--banner-timeout"),
    ("characterize", "--dwell"),
    ("characterize", "--interval"),
    ("characterize", "--heartbeat-timeout"),
    ("characterize", "--recovery-timeout"),
]


@CLI_FUZZ
@given(option=st.sampled_from(INT_OPTIONS), value=hostile_text)
def test_any_refused_count_is_one_error_line(
    option: tuple[str, str], value: str, work: Path, capsys: Any
) -> None:
    stripped = value.strip()
    assume(_no_control(value) and not (stripped.isascii() and stripped.isdigit() and int(stripped) >= 1))
    command, flag = option
    _assert_refused([command, H, flag, value, "--store", str(work / "fp.db")], work, capsys)


def _positive_float(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


@CLI_FUZZ
@given(option=st.sampled_from(FLOAT_OPTIONS), value=hostile_text)
def test_any_refused_duration_is_one_error_line(
    option: tuple[str, str], value: str, work: Path, capsys: Any
) -> None:
    assume(_no_control(value) and not _positive_float(value))
    command, flag = option
    _assert_refused([command, H, flag, value, "--store", str(work / "fp.db")], work, capsys)


@CLI_FUZZ
@given(value=hostile_text)
def test_any_refused_ladder_is_one_error_line(value: str, work: Path, capsys: Any) -> None:
    from fragileprobe._ramp import RampConfig

    pieces = [p for p in value.replace(" ", "").split(",") if p]

    def valid() -> None:
        if not pieces or not all(p.isascii() and p.isdigit() for p in pieces):
            raise FragileProbeError("no")
        RampConfig(ladder=tuple(int(p) for p in pieces))

    assume(_no_control(value) and not _accepted(valid))
    _assert_refused(["characterize", H, "--ladder", value, "--store", str(work / "fp.db")], work, capsys)


@CLI_FUZZ
@given(value=hostile_text, scheme=st.sampled_from(["http://", "https://", "", "ftp://"]))
def test_any_refused_webhook_is_one_error_line(value: str, scheme: str, work: Path, capsys: Any) -> None:
    from fragileprobe._groups import WebhookAlertSink

    url = f"{scheme}127.0.0.1:{value}/x" if scheme else value
    assume(_no_control(url) and not _accepted(lambda: WebhookAlertSink(url)))
    _assert_refused(["discover", H, "--webhook", url, "--store", str(work / "fp.db")], work, capsys)


def test_unknown_options_and_commands_are_one_error_line(work: Path, capsys: Any) -> None:
    for argv in (
        ["discover", H, "--bogus"],
        ["nonsense"],
        ["discover"],
        ["characterize", H, "--dwell"],
        ["profiles", "show"],
        ["report", "--run"],
    ):
        _assert_refused(argv, work, capsys)


# --- files -------------------------------------------------------------------------------------------------

toml_pieces = st.sampled_from(
    [
        "[[rule]]\n",
        "[[zone]]\n",
        "[[device]]\n",
        "name = 'x'\n",
        "ranges = ['",
        "']\n",
        "127.0.0.0/24",
        "127.0.0.5/24",
        "::ffff:127.0.0.0/120",
        "ports_any = [²]\n",
        "ports_all = [21, 99999]\n",
        "kind = 'medical'\n",
        "host = '127.0.0.300'\n",
        "model = 'infusion-pump'\n",
        "threshold = ٢\n",
        "seed = 1e400\n",
        "= 1\n",
        "\x00",
        "\xb2",
        "[",
        "]",
        "'",
        '"""',
        "\n",
    ]
)
toml_text = st.one_of(st.lists(toml_pieces, max_size=12).map("".join), st.text(max_size=200))


def _write(path: Path, text: str, raw: bytes | None) -> Path:
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@CLI_FUZZ
@given(text=toml_text, raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_any_refused_rules_or_zones_file_is_one_error_line(
    text: str, raw: bytes | None, work: Path, capsys: Any
) -> None:
    path = _write(work / "input.toml", text, raw)
    for option, loader in (("--rules", Rules.from_toml), ("--zones", Zones.from_toml)):
        if _accepted(lambda loader=loader: loader(path)):  # type: ignore[misc]
            continue
        argv = ["discover", H, option, str(path), "--store", str(work / "fp.db")]
        line = _assert_refused(argv, work, capsys)
        assert "input.toml" in line


@CLI_FUZZ
@given(text=toml_text, raw=st.one_of(st.none(), st.binary(max_size=100)))
def test_any_refused_fleet_config_is_one_error_line(
    text: str, raw: bytes | None, work: Path, capsys: Any
) -> None:
    path = _write(work / "fleet.toml", text, raw)
    assume(not _accepted(lambda: FleetConfig.from_toml(path)))
    line = _assert_refused(["emulate", "--fleet", str(path)], work, capsys)
    assert "fleet.toml" in line


json_pieces = st.sampled_from(
    [
        '{"characterizations": [',
        "]",
        "}",
        "null",
        "5",
        '"x"',
        "{",
        '"format": 99',
        '"host": "127.0.0.300"',
        '"ladder": [1, "²"]',
        '"trials": [7]',
        ",",
        ":",
        "1e400",
        "NaN",
        "\x00",
        "\xb2",
        '"safe_ceiling": "٢"',
    ]
)
json_text = st.one_of(st.lists(json_pieces, max_size=12).map("".join), st.text(max_size=200))


@CLI_FUZZ
@given(text=json_text)
def test_any_refused_profile_import_is_one_error_line_and_adds_nothing(
    text: str, work: Path, capsys: Any
) -> None:
    from fragileprobe._store import ProfileStore

    source = _write(work / "import.json", text, None)
    store_path = work / "fp.db"
    if not store_path.exists():
        ProfileStore(store_path).close()  # an existing store, as a user's would be: it must stay unchanged
    scratch = work.parent / f"{work.name}-scratch.db"
    with ProfileStore(scratch) as probe_store:
        accepted = _accepted(lambda: probe_store.import_json(source.read_text(encoding="utf-8")))
    for leftover in work.parent.glob(f"{work.name}-scratch.db*"):
        os.remove(leftover)
    assume(not accepted)
    _assert_refused(["profiles", "import", str(source), "--store", str(store_path)], work, capsys)


report_pieces = st.sampled_from(
    [
        '{"assets": [',
        '], "groups": {',
        "}",
        "}",
        '"hosts_scanned": "²"',
        "null",
        "5",
        '{"host": 5}',
        '{"host": "127.0.0.1", "open_ports": ["٢"]}',
        ",",
        '"x": [1]',
        '"alerts": [7]',
        '"unresponsive": "u"',
        '"characterizations": []',
        "\xb2",
    ]
)
report_text = st.one_of(st.lists(report_pieces, max_size=12).map("".join), st.text(max_size=100))


@CLI_FUZZ
@given(text=report_text)
def test_any_refused_report_input_is_one_error_line(text: str, work: Path, capsys: Any) -> None:
    from fragileprobe import _report

    source = _write(work / "input.json", text, None)
    scratch = work.parent / f"{work.name}-scratch"
    scratch.mkdir(exist_ok=True)

    def render() -> None:
        _report.write_report(_report.load_report_source(str(source)), scratch / "r", plot=False)

    accepted = _accepted(render)
    for leftover in scratch.iterdir():
        os.remove(leftover)
    assume(not accepted)
    _assert_refused(["report", str(source), "--no-plot", "--out", str(work / "r")], work, capsys)


def test_a_discovery_report_with_a_superscript_count_is_one_error_line(work: Path, capsys: Any) -> None:
    """``report`` of a discovery JSON with ``"hosts_scanned": "²"`` ended in a ValueError traceback."""
    source = work / "d.json"
    source.write_text('{"assets": [], "hosts_scanned": "²", "groups": {}, "alerts": [], "unresponsive": []}')
    line = _assert_refused(["report", str(source), "--no-plot", "--out", str(work / "r")], work, capsys)
    assert "discovery report is malformed" in line


def test_characterize_a_host_name_without_scope_never_resolves_it(
    work: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``characterize <hostname>`` without --scope: the message is about the host name, and the resolver is
    never asked (any lookup here fails the test)."""
    import socket

    def no_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"resolver called with {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(socket, "gethostbyname", no_lookup)
    line = _assert_refused(
        ["characterize", "infusion-pump-7.ward.invalid", "--store", str(work / "fp.db")], work, capsys
    )
    assert "'infusion-pump-7.ward.invalid' is a host name: a name needs --scope" in line
