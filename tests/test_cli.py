"""The command line through its real entry point (subprocesses) against emulated devices in another process:
characterize, discover, profiles, report; --json, exit codes, bad input, and Ctrl-C with resume."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from conftest import allocate_loopback
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import DeviceState, FleetClient
from fragileprobe.emulator._process import EmulatorProcess, fragileprobe_command

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

# Bound on any one CLI run in these tests (a short characterization takes ~5 s).
RUN_TIMEOUT_S = 90
# Short timings: the emulator answers in milliseconds, so these keep the story and make runs take seconds.
FAST = [
    "--ladder",
    "1,2,5,7,10",
    "--dwell",
    "0.3",
    "--interval",
    "0.1",
    "--heartbeat-timeout",
    "0.3",
    "--healthy-beats",
    "2",
    "--hold",
    "0.1",
]


def run_cli(
    *args: str, timeout_s: float = RUN_TIMEOUT_S, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fragileprobe_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=cwd,
    )


def _power_cycle_if_hung(url: str, host: str) -> None:
    async def check() -> None:
        client = FleetClient(url)
        if await client.state(host) is not DeviceState.UP:
            await client.power_cycle(host, boot_delay_s=0.1)

    anyio.run(check)


@pytest.fixture(scope="module")
def pump() -> Iterator[tuple[str, str]]:
    """``fragileprobe emulate``: one story pump that hangs at exactly 7 concurrent sessions."""
    host = allocate_loopback()
    emu = EmulatorProcess("--host", host, "--threshold", "7", "--jitter", "0", "--boot-delay", "0.1")
    try:
        emu.wait_ready()
        yield host, emu.control_url
    finally:
        emu.stop()


@pytest.fixture(scope="module")
def measured(pump: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One ``characterize --json`` run: the store it wrote and its JSON output."""
    host, url = pump
    store = tmp_path_factory.mktemp("measured") / "fp.db"
    out = run_cli(
        "characterize",
        host,
        "--recovery-url",
        url,
        *FAST,
        "--trials",
        "2",
        "--name",
        "story pump",
        "--store",
        str(store),
        "--json",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return store, json.loads(out.stdout)


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["characterize"], ["--scope", "--crash-budget", "--recovery-url", "heartbeat", "Exit codes"]),
        (
            ["discover"],
            ["--rate-per-host", "--sessions-per-host", "--zones", "never half-open", "Exit codes"],
        ),
        (["profiles"], ["list", "show", "export", "import"]),
        (["report"], ["self-contained", "--store", "Exit codes"]),
        (["demo"], ["wrong network", "power-cycled", "--json"]),
        (["emulate"], ["--fleet"]),
    ],
)
def test_every_command_explains_itself(command: list[str], words: list[str]) -> None:
    out = run_cli(*command, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # help is wrapped to the terminal width
    for word in words:
        assert word in text, word


def test_python_dash_m_is_the_same_command_line() -> None:
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "fragileprobe", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0
    assert "characterize" in out.stdout


def test_characterize_json_measures_the_pump(
    measured: tuple[Path, dict[str, Any]], pump: tuple[str, str]
) -> None:
    """Only JSON on stdout; the ceiling is below the crash at 6-7 (T = 7 counts the heartbeat too); every
    crash was a real hang of the emulated pump, recovered through the fleet's control API."""
    _, data = measured
    char = data["characterization"]
    assert data["status"] == "complete"
    assert char["failed_at"] in (6, 7)
    assert 1 <= char["safe_ceiling"] < char["failed_at"]
    assert len(char["trials"]) == 2
    assert data["settings"]["sessions_per_host"] == char["safe_ceiling"]
    host, url = pump
    stats = anyio.run(FleetClient(url).stats, host)
    assert stats.crashes >= char["crashes"] >= 1


def test_characterize_human_output_shows_levels_device_down_and_settings(
    pump: tuple[str, str], tmp_path: Path
) -> None:
    host, url = pump
    out = run_cli(
        "characterize",
        host,
        "--recovery-url",
        url,
        *FAST,
        "--trials",
        "1",
        "--store",
        str(tmp_path / "fp.db"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trial 1  level   2 sessions: PASSED" in out.stdout  # 1 would be the heartbeat alone
    assert "level 1 dropped" in out.stdout
    assert "DEVICE DOWN" in out.stdout  # the red panel
    assert "stopped answering its heartbeat" in out.stdout
    assert "Safe ceiling:" in out.stdout
    assert "nmap -sT" in out.stdout
    assert "fragileprobe report --store" in out.stdout
    assert "Traceback" not in out.stderr


def _interrupt_when(args: list[str], ready: Callable[[], bool], what: str) -> tuple[int, str, str]:
    """Run the CLI, send SIGINT (by PID) as soon as ``ready()`` holds, and return (exit code, stdout, stderr).

    Fails the test if the run ended before ``ready()`` held (nothing was left to interrupt).
    """
    proc = subprocess.Popen(
        [*fragileprobe_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, f"the {what} ended before it could be interrupted"
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode, stdout, stderr


def _trials_stored(store: Path) -> int:
    if not store.exists():
        return 0
    with ProfileStore(store) as db:
        return max((len(r.trials) for r in db.runs()), default=0)


def test_ctrl_c_stops_cleanly_saves_and_resume_finishes(pump: tuple[str, str], tmp_path: Path) -> None:
    """SIGINT mid-characterization: exit 130, the finished trials are in the store, the message gives the
    exact command with --resume, and that command finishes the run without repeating finished trials."""
    host, url = pump
    store = tmp_path / "fp.db"
    args = [
        "characterize",
        host,
        "--recovery-url",
        url,
        *FAST,
        "--dwell",
        "0.4",
        "--trials",
        "3",
        "--store",
        str(store),
        "--json",
    ]
    code, stdout, stderr = _interrupt_when(args, lambda: _trials_stored(store) >= 1, "run")
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    interrupted = json.loads(stdout)
    assert interrupted["status"] == "interrupted"
    command = interrupted["resume_command"]
    assert command.endswith(" --resume")
    assert command in " ".join(stderr.split()) or "Resume with:" in stderr
    with ProfileStore(store) as db:
        (run,) = db.runs()
        assert run.status == "interrupted"
        saved = [t.to_dict() for t in run.trials if t.complete]
    assert 1 <= len(saved) < 3
    _power_cycle_if_hung(url, host)  # as an operator would, if Ctrl-C landed between a crash and its recovery
    argv = shlex.split(command)
    assert argv[0] == "fragileprobe"
    resumed = run_cli(*argv[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    char = json.loads(resumed.stdout)["characterization"]
    assert len(char["trials"]) == 3
    assert char["trials"][: len(saved)] == saved  # finished trials were kept, not run again
    with ProfileStore(store) as db:
        assert [r.status for r in db.runs()] == ["complete"]


def _fleet_toml(path: Path, devices: list[tuple[str, str]]) -> None:
    lines = ["boot_delay_s = 0.1", ""]
    for host, model in devices:
        lines += ["[[device]]", f'host = "{host}"', f'model = "{model}"', "seed = 1", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _ports_and_aliases(lines: list[str]) -> tuple[str, list[str]]:
    """Bound ports and BOUND=WELLKNOWN aliases from the emulator's 'device ... ports=21:10021,...' lines."""
    bound: set[int] = set()
    aliases: list[str] = []
    for line in lines:
        if not line.startswith("device "):
            continue
        spec = next(w for w in line.split() if w.startswith("ports="))[len("ports=") :]
        for pair in spec.split(","):
            known, real = (int(x) for x in pair.split(":"))
            bound.add(real)
            if known != real:
                aliases += ["--port-alias", f"{real}={known}"]
    return ",".join(map(str, sorted(bound))), aliases


class _WebhookReceiver:
    """A loopback HTTP server that records the JSON bodies POSTed to it (in a thread)."""

    def __init__(self) -> None:
        import http.server
        import threading

        posted: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), 1 << 20)
                posted.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

        self.posted = posted
        self._server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def test_discover_alerts_on_the_misplaced_pump_and_reports(tmp_path: Path) -> None:
    """A pump on the office network: exit 1 (an alert), the alert in JSON, in the JSON-lines file, at the
    webhook and in the HTML report; medical-looking hosts get one session per host in the scan settings."""
    office_pump, icu_pump, workstation = allocate_loopback(), allocate_loopback(), allocate_loopback()
    fleet = tmp_path / "fleet.toml"
    _fleet_toml(
        fleet, [(office_pump, "infusion-pump"), (icu_pump, "infusion-pump"), (workstation, "workstation")]
    )
    zones = tmp_path / "zones.toml"
    zones.write_text(
        f'[[zone]]\nname = "Office LAN"\nkind = "general"\nranges = ["{office_pump}", "{workstation}"]\n\n'
        f'[[zone]]\nname = "ICU devices"\nkind = "medical"\nranges = ["{icu_pump}"]\n',
        encoding="utf-8",
    )
    emu = EmulatorProcess("--fleet", str(fleet))
    receiver = _WebhookReceiver()
    try:
        ports, aliases = _ports_and_aliases(emu.wait_ready())
        store, alerts = tmp_path / "fp.db", tmp_path / "alerts.jsonl"
        out = run_cli(
            "discover",
            office_pump,
            icu_pump,
            workstation,
            "--ports",
            ports,
            *aliases,
            "--zones",
            str(zones),
            "--store",
            str(store),
            "--alerts",
            str(alerts),
            "--webhook",
            receiver.url,
            "--rate-per-host",
            "50",
            "--banner-timeout",
            "0.3",
            "--json",
        )
        human = run_cli(
            "discover",
            office_pump,
            "--ports",
            ports,
            *aliases,
            "--zones",
            str(zones),
            "--store",
            str(tmp_path / "other.db"),
            "--banner-timeout",
            "0.3",
        )
    finally:
        emu.stop()
        receiver.close()
    assert out.returncode == 1, out.stderr[-3000:]
    data = json.loads(out.stdout)
    assert [a["host"] for a in data["alerts"]] == [office_pump]
    assert [a["host"] for a in receiver.posted] == [office_pump]  # the webhook got the alert as JSON
    assert sorted(data["groups"]["Medical Device?"]) == sorted([office_pump, icu_pump])
    assert data["scan_settings"]["Medical Device?"]["sessions_per_host"] == 1
    assert [json.loads(line)["host"] for line in alerts.read_text().splitlines()] == [office_pump]
    assert human.returncode == 1
    assert f"ALERT {office_pump}" in human.stdout
    assert "Medical Device?: at most 1 session(s) per host" in human.stdout

    rep = run_cli("report", "--store", str(store), "--discovery", "--out", str(tmp_path / "disc"), "--json")
    assert rep.returncode == 0, rep.stderr[-3000:]
    files = json.loads(rep.stdout)
    assert files["kind"] == "discovery"
    page = (tmp_path / "disc.html").read_text(encoding="utf-8")
    assert office_pump in page
    assert "WRONG ZONE" in page


def test_profiles_list_show_export_import(measured: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    store, data = measured
    char = data["characterization"]
    listed = run_cli("profiles", "list", "--store", str(store), "--json")
    assert listed.returncode == 0, listed.stderr
    (profile,) = json.loads(listed.stdout)
    assert profile["model_key"] == char["model_key"]
    assert profile["ceiling"] == char["safe_ceiling"]
    human = run_cli("profiles", "list", "--store", str(store))
    assert f"safe ceiling {char['safe_ceiling']} concurrent sessions" in human.stdout
    shown = run_cli("profiles", "show", char["model_key"], "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["settings"]["sessions_per_host"] == char["safe_ceiling"]
    export = tmp_path / "export.json"
    assert run_cli("profiles", "export", "--store", str(store), "--out", str(export)).returncode == 0
    other = tmp_path / "other.db"
    first = run_cli("profiles", "import", str(export), "--store", str(other), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["imported"] == 1
    again = run_cli("profiles", "import", str(export), "--store", str(other), "--json")
    assert json.loads(again.stdout)["imported"] == 0


def test_report_from_the_store_and_from_json(measured: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    store, data = measured
    run_id = data["characterization"]["run_id"]
    out = run_cli("report", "--store", str(store), "--run", run_id, "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "characterization report written" in out.stdout
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"Safe ceiling for story pump: {data['characterization']['safe_ceiling']}" in page
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    source = tmp_path / "char.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    from_json = run_cli("report", str(source), "--out", str(tmp_path / "j"), "--no-plot", "--json")
    assert from_json.returncode == 0, from_json.stderr
    assert json.loads(from_json.stdout)["png"] is None
    assert "Safe ceiling for story pump" in (tmp_path / "j.md").read_text(encoding="utf-8")


def _bad_input_cases(tmp: Path) -> list[tuple[list[str], str]]:
    corrupt = tmp / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    bad_rules = tmp / "rules.toml"
    bad_rules.write_text("[[rule]\nname = ", encoding="utf-8")
    not_json = tmp / "notes.txt"
    not_json.write_text("hello", encoding="utf-8")
    h = "127.0.0.2"  # never contacted: every case fails before anything is sent
    return [
        (["characterize", h, "--scope", "127.0.0.1"], "outside"),
        (["characterize", h, "--ladder", "a,b"], "--ladder"),
        (["characterize", h, "--ladder", "5,2"], "ladder"),
        (["characterize", h, "--recovery", "sometimes"], "--recovery"),
        (["characterize", h, "--recovery", "manual", "--recovery-cmd", "pdu cycle"], "choose one"),
        (["characterize", h, "--store", str(corrupt)], "corrupt"),
        (["characterize", h, "--log-level", "loud"], "--log-level"),
        (["characterize", h, "--margin", "1.5"], "margin"),
        (["characterize", h, "--dwell", "0"], "--dwell"),
        (["characterize", h, "--heartbeat-path", "status"], "path"),
        (["discover", h, "--zones", str(tmp / "missing.toml")], "missing.toml"),
        (["discover", h, "--rules", str(bad_rules)], "rules.toml"),
        (["discover", h, "--port-alias", "x"], "--port-alias"),
        (["discover", "10.0.0.1", "--scope", "127.0.0.0/24"], "10.0.0.1"),
        (["profiles", "list", "--store", str(tmp / "missing.db")], "does not exist"),
        (["report", str(not_json)], "not JSON"),
        (["report", "--store", str(tmp / "missing.db")], "does not exist"),
    ]


def test_bad_input_is_one_line_exit_2_never_a_traceback(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cases = _bad_input_cases(tmp_path)
    # Independent processes that send nothing: run a few at once (each one mostly waits for imports).
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(lambda case: run_cli(*case[0], timeout_s=60, cwd=tmp_path), cases))
    for (argv, needle), out in zip(cases, outs, strict=True):
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2, (argv, out.stderr)
        assert len(lines) == 1, (argv, out.stderr)
        assert lines[0].startswith("error: "), (argv, lines)
        assert needle in lines[0], (argv, lines)
        assert "Traceback" not in out.stderr
    # Input errors are found before anything is created: no default store appeared in the working dir.
    assert not (tmp_path / "fragileprobe.db").exists()


def test_unknown_model_in_profiles_show_is_exit_2(measured: tuple[Path, dict[str, Any]]) -> None:
    store, _ = measured
    out = run_cli("profiles", "show", "no-such-model", "--store", str(store))
    assert out.returncode == 2
    assert out.stderr.startswith("error: model_key:")


def test_a_device_that_does_not_answer_is_device_trouble_exit_1(tmp_path: Path) -> None:
    """Nothing listens at the address: the first heartbeat fails, nothing else is sent, exit 1."""
    out = run_cli(
        "characterize", allocate_loopback(), "--heartbeat-timeout", "0.3", "--store", str(tmp_path / "fp.db")
    )
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("device trouble: ")
    assert "Nothing else was sent" in lines[0]


def _hosts_done(store: Path) -> int:
    if not store.exists():
        return 0
    with ProfileStore(store) as db:
        return sum(len(db.hosts_done(s.scan_id)) for s in db.scans())


def test_discover_ctrl_c_keeps_finished_hosts_and_resume_skips_them(tmp_path: Path) -> None:
    """SIGINT mid-discovery: exit 130 with the resume command; the resumed scan does only the hosts left."""
    hosts = [allocate_loopback() for _ in range(4)]
    fleet = tmp_path / "fleet.toml"
    _fleet_toml(fleet, [(h, "infusion-pump") for h in hosts])
    emu = EmulatorProcess("--fleet", str(fleet))
    try:
        ports, aliases = _ports_and_aliases(emu.wait_ready())
        store = tmp_path / "fp.db"
        # Slow on purpose (one host at a time, 2 connects/s): ~2 s per host, time to interrupt.
        args = [
            "discover",
            *hosts,
            "--ports",
            ports,
            *aliases,
            "--store",
            str(store),
            "--rate-per-host",
            "2",
            "--max-hosts",
            "1",
            "--banner-timeout",
            "0.3",
            "--json",
        ]
        code, stdout, stderr = _interrupt_when(args, lambda: _hosts_done(store) >= 1, "scan")
        assert code == 130, stderr[-3000:]
        command = json.loads(stdout)["resume_command"]
        done = _hosts_done(store)
        assert 1 <= done < len(hosts)
        resumed = run_cli(*shlex.split(command)[1:])
    finally:
        emu.stop()
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # no zones: no alerts
    report = json.loads(resumed.stdout)
    assert report["hosts_resumed"] == done
    assert report["hosts_scanned"] == len(hosts) - done
    assert sorted(a["host"] for a in report["assets"]) == sorted(hosts)


def test_failed_recovery_is_exit_1_and_keeps_the_observations(pump: tuple[str, str], tmp_path: Path) -> None:
    """--recovery manual with nobody power-cycling the pump: the prompt goes to stderr, the recovery times
    out, exit 1 with one 'device trouble' line, and the JSON still carries everything measured."""
    host, url = pump
    try:
        out = subprocess.run(
            [
                *fragileprobe_command(),
                "characterize",
                host,
                *FAST,
                "--trials",
                "1",
                "--recovery",
                "manual",
                "--recovery-timeout",
                "2",
                "--store",
                str(tmp_path / "fp.db"),
                "--json",
            ],
            input="\n" * 4,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    finally:
        _power_cycle_if_hung(url, host)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Power-cycle it, then press Enter" in out.stderr
    assert "device trouble: " in out.stderr
    assert "Traceback" not in out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "recovery_failed"
    levels = data["characterization"]["trials"][0]["levels"]
    assert levels[-1]["outcome"] == "failed"
