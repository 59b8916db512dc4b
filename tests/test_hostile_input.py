"""Issue 11: hostile bytes, odd addresses and foreign files. Every example of the issue, as a test.

Each test here failed on the code before the fix (the docstring says how) and checks the behaviour on the
device's side or on the file's bytes, not only on ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import sqlite3
import subprocess
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from conftest import allocate_loopback
from fragileprobe import ConfigError, ScopeError, StoreError
from fragileprobe._discovery_run import discover
from fragileprobe._groups import Alert, WebhookAlertSink, Zone, Zones
from fragileprobe._heartbeat import HttpHeartbeat
from fragileprobe._probes import Outcome, http_get
from fragileprobe._scope import Scope, Target, canonical_host, parse_ports, parse_targets
from fragileprobe._store import APPLICATION_ID, ProfileStore
from fragileprobe.emulator import EmulatedDevice
from fragileprobe.emulator._process import EmulatorProcess, fragileprobe_command

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

FAST: dict[str, Any] = {"connect_timeout_s": 1.0, "banner_timeout_s": 0.3, "rate_per_host": 100.0}
PUMP_PORTS = (21, 22, 23, 8080)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.asynccontextmanager
async def http_peers(answers: dict[str, bytes]) -> AsyncIterator[int]:
    """One loopback web server per host, all on the same port, each sending its fixed answer to every GET."""
    async with contextlib.AsyncExitStack() as stack:
        port = 0
        for host, answer in answers.items():
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            await stack.enter_async_context(listener)

            async def serve(stream: anyio.abc.SocketStream, answer: bytes = answer) -> None:
                async with stream:
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        with anyio.fail_after(5):
                            data = b""
                            while b"\r\n\r\n" not in data:
                                data += await stream.receive()
                            await stream.send(answer)

            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(listener.serve, serve)
            stack.callback(tg.cancel_scope.cancel)
        yield port


SUPERSCRIPT_LENGTH = b"HTTP/1.1 200 OK\r\nServer: odd\r\nContent-Length: \xb2\r\n\r\nab"
HEALTHY = b"HTTP/1.1 200 OK\r\nServer: fine\r\nContent-Length: 2\r\n\r\nok"


# --- one parser for every number from outside ------------------------------------------------------------


async def test_content_length_superscript_digit_is_a_protocol_error_not_a_value_error(
    loopback_host: str,
) -> None:
    """``Content-Length: \\xb2`` passed str.isdigit() and made int() raise a bare ValueError out of
    http_get and out of HttpHeartbeat.beat. Now: a PROTOCOL_ERROR result naming the header, and a failed
    beat."""
    async with http_peers({loopback_host: SUPERSCRIPT_LENGTH}) as port:
        with anyio.fail_after(10):
            result = await http_get(loopback_host, port, timeout_s=1, read_timeout_s=1)
            beat = await HttpHeartbeat(port=port, timeout_s=1).beat(loopback_host)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert result.error is not None
    assert "Content-Length" in result.error
    assert not beat.ok
    assert beat.error is not None
    assert "Content-Length" in beat.error


async def test_one_hostile_web_host_does_not_end_a_discovery(loopback_hosts: Callable[[], str]) -> None:
    """One host answering ``Content-Length: \\xb2`` made discover() raise an ExceptionGroup and lose the
    healthy hosts' results. Now every host is in the report and the scan ends normally."""
    bad, good1, good2 = loopback_hosts(), loopback_hosts(), loopback_hosts()
    async with http_peers({bad: SUPERSCRIPT_LENGTH, good1: HEALTHY, good2: HEALTHY}) as port:
        with anyio.fail_after(30):
            report = await discover(
                [bad, good1, good2],
                scope=Scope([bad, good1, good2]),
                ports=[port],
                port_aliases={port: 8080},
                **FAST,
            )
    assert sorted(a.host for a in report.assets) == sorted([bad, good1, good2])
    servers = {a.host: a.service(port) for a in report.assets}
    assert servers[good1] is not None
    assert servers[good1].product == "fine"  # type: ignore[union-attr]


async def test_a_crash_in_our_code_on_one_host_is_a_result_about_that_host(
    loopback_hosts: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection at the isolation boundary: whatever our own code raises on one host's bytes (here a
    RuntimeError from the fingerprinting of one host's banner), the other hosts' results stand, and that
    host is reported as given up on, never grouped "safe to scan"."""
    import fragileprobe._discovery_policy as discovery_module

    bad, good = loopback_hosts(), loopback_hosts()
    real = discovery_module.build_asset

    def build(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == bad:
            raise RuntimeError("parser bug triggered by this host's bytes")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(discovery_module, "build_asset", build)
    async with http_peers({bad: HEALTHY, good: HEALTHY}) as port:
        with capture_logs() as logs, anyio.fail_after(30):
            report = await discover(
                [bad, good], scope=Scope([bad, good]), ports=[port], port_aliases={port: 8080}, **FAST
            )
    assert [a.host for a in report.assets] == [good]
    assert [u.host for u in report.unresponsive] == [bad]
    assert "RuntimeError" in report.unresponsive[0].reason
    assert any(e["event"] == "discovery.host_failed" and e["host"] == bad for e in logs)


@pytest.mark.parametrize("spec", ["٢٢", "²", "21-³", "²-23", "٢١-٢٣", "2\u200b1", "+22", "2_2", " 22 0"])
def test_port_spec_takes_ascii_digits_only(spec: str) -> None:
    """``parse_ports('٢٢')`` was port 22 and ``'²'`` / ``'21-³'`` raised a bare ValueError (a traceback in
    the CLI). Only ASCII digits make a port: everything else is a ConfigError that shows the spec."""
    with pytest.raises(ConfigError, match="port"):
        parse_ports(spec)


def test_port_spec_with_a_huge_number_is_refused_without_converting_it() -> None:
    with pytest.raises(ConfigError, match="outside 1-65535"):
        parse_ports("9" * 100_000)


@pytest.mark.parametrize("spec", ["127.0.76.1-²", "127.0.76.1-٢", "127.0.76.1-1²"])
def test_target_range_end_takes_ascii_digits_only(spec: str) -> None:
    """A target ``127.0.76.1-²`` raised a bare ValueError (a CLI traceback)."""
    with pytest.raises(ConfigError, match="is not an IP address or octet"):
        parse_targets(spec)


# --- canonical host identity -------------------------------------------------------------------------------


async def test_ipv4_mapped_ipv6_is_the_same_host_with_one_limiter(loopback_host: str) -> None:
    """``127.0.78.1`` and ``::ffff:127.0.78.1`` in one target list were two assets with two limiters: the
    device saw 2 sessions at once with one session per host. Now one asset, and the device (which counts
    on its own side) never held more than one session."""
    mapped = f"::ffff:{loopback_host}"
    async with EmulatedDevice(loopback_host, model="infusion-pump", seed=1, boot_delay_s=0.05) as dev:
        with anyio.fail_after(30):
            report = await discover(
                [loopback_host, mapped],
                scope=Scope([loopback_host, mapped]),
                ports=PUMP_PORTS,
                per_host_sessions=1,
                **FAST,
            )
        assert dev.stats.peak_sessions == 1
    assert [a.host for a in report.assets] == [loopback_host]
    assert report.hosts_scanned == 1


def test_ipv4_mapped_forms_are_one_identity_everywhere() -> None:
    assert parse_targets(["127.0.78.1", "::ffff:127.0.78.1", "::FFFF:7f00:4e01"]) == ["127.0.78.1"]
    assert Scope(["::ffff:127.0.78.0/120"]).check("127.0.78.9") == "127.0.78.9"
    assert Scope(["127.0.78.1"]).check("::ffff:127.0.78.1") == "127.0.78.1"
    assert Target("::ffff:127.0.78.1").host == "127.0.78.1"


def test_ipv6_zone_id_is_part_of_the_identity() -> None:
    """``Scope(['fe80::1%eth0']).check('fe80::1%eth1')`` was accepted: another interface's neighbour."""
    scope = Scope(["fe80::1%eth0"])
    assert scope.check("fe80::1%eth0") == "fe80::1%eth0"
    for other in ("fe80::1%eth1", "fe80::1"):
        with pytest.raises(ScopeError, match="outside the authorized scope"):
            scope.check(other)
        assert other not in scope
    with pytest.raises(ScopeError):
        Scope(["fe80::/120"]).check("fe80::1%eth0")  # a zoneless block does not name an interface either


def test_scope_entry_with_host_bits_is_refused_with_the_network_it_would_mean() -> None:
    """``Scope(['127.0.79.5/24'])`` silently authorized the whole /24."""
    pattern = r"'127\.0\.79\.5/24' has host bits set: .*127\.0\.79\.0/24.*127\.0\.79\.5"
    with pytest.raises(ConfigError, match=pattern):
        Scope(["127.0.79.5/24"])
    with pytest.raises(ConfigError, match=r"2001:db8::/32"):
        Scope(["2001:db8::5/32"])
    assert Scope(["127.0.79.0/24"]).networks == (ipaddress.ip_network("127.0.79.0/24"),)


_V4 = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)


def _forms(addr: ipaddress.IPv4Address) -> st.SearchStrategy[str]:
    mapped = ipaddress.IPv6Address(0xFFFF00000000 | int(addr))
    return st.sampled_from(
        [
            str(addr),
            f"::ffff:{addr}",
            mapped.exploded,
            mapped.compressed,
            mapped.exploded.upper(),
            f"0:0:0:0:0:ffff:{addr}",
            f"  {addr} ",
        ]
    )


@settings(max_examples=200, deadline=None)
@given(data=st.data(), addr=_V4, prefix=st.integers(min_value=0, max_value=32))
def test_every_written_form_of_an_address_has_one_identity(
    data: st.DataObject, addr: Any, prefix: int
) -> None:
    """(H) Any way of writing an IPv4 host (plain, mapped, exploded, upper case, padded) is one identity: the
    same canonical string, one target, the same scope verdict; and a scope entry is refused exactly when it
    has host bits set, naming the network it would have meant."""
    form_a, form_b = data.draw(_forms(addr)), data.draw(_forms(addr))
    assert canonical_host(form_a) == canonical_host(form_b) == str(addr)
    assert parse_targets([form_a, form_b]) == [str(addr)]
    net = ipaddress.IPv4Network((int(addr), prefix), strict=False)
    entry = f"{addr}/{prefix}"
    if int(net.network_address) != int(addr):
        with pytest.raises(ConfigError, match=rf"would mean the network {net.with_prefixlen}"):
            Scope([entry], allow_large=True)
    else:
        scope = Scope([entry], allow_large=True)
        assert form_a.strip() in scope
        assert scope.check(form_b) == str(addr)


@settings(max_examples=100, deadline=None)
@given(
    low=st.integers(min_value=1, max_value=2**64 - 1),
    zone=st.sampled_from(["eth0", "eth1", "wlan0", "1", "2"]),
    other=st.sampled_from(["eth0", "eth1", "wlan0", "1", "2", None]),
)
def test_zone_ids_match_exactly(low: int, zone: str, other: str | None) -> None:
    """(H) A link-local address with a zone is inside a scope entry only with the same zone."""
    addr = ipaddress.IPv6Address((0xFE80 << 112) | low)
    scope = Scope([f"{addr}%{zone}"])
    probe = str(addr) if other is None else f"{addr}%{other}"
    assert (probe in scope) == (other == zone)


# --- validate at construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/hook",
        "http://127.0.0.1:0/",
        "https://[::1]:70000/",
        "http://127.0.0.1:x/",
        "http://127.0.0.1/a b",
    ],
)
async def test_webhook_url_with_a_bad_port_is_refused_before_any_packet(
    url: str, loopback_host: str, tmp_path: Path
) -> None:
    """A webhook URL with port 99999 passed validation; the scan probed the network and crashed at the first
    alert. Now a ConfigError naming the URL, the device saw no connection attempt, and the alert file that
    would have been used was not created either."""
    with pytest.raises(ConfigError, match="webhook_url"):
        WebhookAlertSink(url)
    async with EmulatedDevice(loopback_host, model="infusion-pump", seed=1, boot_delay_s=0.05) as dev:
        with pytest.raises(ConfigError, match="webhook_url"):
            await discover(
                loopback_host,
                scope=Scope([loopback_host]),
                ports=PUMP_PORTS,
                webhook_url=url,
                alert_file=tmp_path / "alerts.jsonl",
                **FAST,
            )
        assert dev.stats.connects_total == 0
    assert not (tmp_path / "alerts.jsonl").exists()


async def test_a_webhook_that_cannot_be_delivered_is_logged_counted_and_the_scan_goes_on(
    loopback_hosts: Callable[[], str],
) -> None:
    pump_host, hook_host = loopback_hosts(), loopback_hosts()  # nothing listens on hook_host
    zones = Zones([Zone("guest", (pump_host,), kind="guest")])
    async with EmulatedDevice(pump_host, model="infusion-pump", seed=1, boot_delay_s=0.05):
        with capture_logs() as logs, anyio.fail_after(30):
            report = await discover(
                pump_host,
                scope=Scope([pump_host]),
                ports=PUMP_PORTS,
                zones=zones,
                webhook_url=f"http://{hook_host}:9/alerts",
                **FAST,
            )
    assert len(report.alerts) == 1
    assert [a.host for a in report.assets] == [pump_host]
    assert any("1 alert(s) could not be delivered to the webhook" in n for n in report.notes)
    failed = [e for e in logs if e["event"] == "discovery.alert_webhook_failed"]
    assert len(failed) == 1
    assert failed[0]["failures"] == 1


async def test_webhook_sink_counts_each_undelivered_alert(loopback_host: str) -> None:
    sink = WebhookAlertSink(f"http://{loopback_host}:9/x", timeout_s=1)
    alert = Alert(host="127.0.0.5", model="m", zone="z", zone_kind="guest", evidence=("e",), first_seen="t")
    assert await sink.send(alert) is False
    assert await sink.send(alert) is False
    assert sink.failures == 2


# --- touch only our own files ------------------------------------------------------------------------------


def _foreign_store(path: Path, *, app_id: int = 0, tables: str = "CREATE TABLE notes(id, text)") -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(tables)
    conn.execute("INSERT INTO notes VALUES (1, 'not yours')")
    if app_id:
        conn.execute(f"PRAGMA application_id = {app_id}")
    conn.commit()
    conn.close()
    return path


def _damaged_store(path: Path) -> Path:
    from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult

    with ProfileStore(path) as store:
        for i in range(40):
            levels = (LevelResult(level=1, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0),)
            trials = [TrialResult(index=0, levels=levels)]
            store.save(
                Characterization.from_trials(
                    host=f"127.0.0.{i + 1}", model_key=f"m{i}" * 50, ladder=(1,), trials=trials
                )
            )
    conn = sqlite3.connect(path)  # a copy in rollback-journal mode (as `sqlite3 .backup` or VACUUM INTO make)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 4 * page
    data[2 * page + 8 : 3 * page] = b"\xa5" * (page - 8)  # a b-tree page's cells: header intact, pages not
    path.write_bytes(bytes(data))
    return path


FOREIGN_STORES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("other tables", lambda p: _foreign_store(p), r"not a fragileprobe store: it holds table 'notes'"),
    (
        "another application id",
        lambda p: _foreign_store(p, app_id=0x0F0F0F0F),
        r"belongs to another application \(SQLite application_id 0x0f0f0f0f",
    ),
    (
        "our tables and a foreign one",
        lambda p: _foreign_store(p, tables="CREATE TABLE runs(x); CREATE TABLE notes(id, text)"),
        r"table 'notes'",
    ),
    ("fails its integrity check", _damaged_store, r"(failed its integrity check|corrupt)"),
]


@pytest.mark.parametrize(
    ("make", "pattern"), [r[1:] for r in FOREIGN_STORES], ids=[r[0] for r in FOREIGN_STORES]
)
def test_foreign_or_damaged_store_is_refused_and_left_byte_identical(
    tmp_path: Path, make: Callable[[Path], Path], pattern: str
) -> None:
    """ProfileStore opened another application's SQLite database without complaint, added its tables, set
    user_version and switched it to WAL; a damaged store was refused but no longer byte-identical. Now both
    are refused with StoreError before anything is written: same bytes, no -wal or -shm beside them."""
    path = make(tmp_path / "other.db")
    before = _digest(path)
    with pytest.raises(StoreError, match=pattern):
        ProfileStore(path)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_our_stores_carry_our_application_id_and_old_ones_are_stamped(tmp_path: Path) -> None:
    path = tmp_path / "fp.db"
    ProfileStore(path).close()
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID
    with ProfileStore(path):  # reopening our own store works
        pass
    legacy = tmp_path / "legacy.db"
    ProfileStore(legacy).close()
    conn = sqlite3.connect(legacy)
    conn.execute("PRAGMA application_id = 0")  # as every store written before the id existed
    conn.commit()
    conn.close()
    ProfileStore(legacy).close()
    assert int.from_bytes(legacy.read_bytes()[68:72], "big") == APPLICATION_ID


def _cli(
    *args: str, cwd: Path, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fragileprobe_command(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=stdin,
        timeout=timeout_s,
        check=False,
    )


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


CLI_ROWS = [
    ("--ports superscript", ["discover", "{h}", "--ports", "²"], r"--ports: .*port '²'"),
    ("--ports range superscript", ["discover", "{h}", "--ports", "21-³"], r"port range '21-³'"),
    ("--ports arabic-indic", ["discover", "{h}", "--ports", "٢٢"], r"port '٢٢'"),
    (
        "target range superscript",
        ["discover", "127.0.76.1-²"],
        r"'127\.0\.76\.1-²'.*not an IP address or octet",
    ),
    ("--port-alias superscript", ["discover", "{h}", "--port-alias", "²=21"], r"--port-alias: '²=21'"),
    (
        "--port-alias above 65535",
        ["discover", "{h}", "--port-alias", "70000=21"],
        r"70000 is outside 1-65535",
    ),
    (
        "--webhook port 99999",
        ["discover", "{h}", "--webhook", "http://127.0.0.1:99999/x"],
        r"webhook_url .*99999.*out of range",
    ),
    (
        "--sessions-per-host superscript",
        ["discover", "{h}", "--sessions-per-host", "²"],
        r"sessions-per-host",
    ),
    (
        "--sessions-per-host zero",
        ["discover", "{h}", "--sessions-per-host", "0"],
        r"--sessions-per-host: .*got 0",
    ),
    (
        "--alerts in a missing directory",
        ["discover", "{h}", "--alerts", "{tmp}/no/such/a.jsonl"],
        r"alert file .*cannot append",
    ),
    ("unknown option", ["discover", "{h}", "--bogus"], r"--bogus"),
    ("--ladder superscript", ["characterize", "{h}", "--ladder", "1,²"], r"--ladder: '1,²'"),
    ("--dwell infinite", ["characterize", "{h}", "--dwell", "1e400"], r"--dwell: .*got inf"),
    (
        "--recovery-cmd missing program",
        ["characterize", "{h}", "--recovery-cmd", "/nonexistent/pdu-ctl cycle"],
        r"--recovery-cmd: recovery command '/nonexistent/pdu-ctl': not found",
    ),
    (
        "--recovery-url bad port",
        ["characterize", "{h}", "--recovery-url", "http://127.0.0.1:99999"],
        r"--recovery-url: url: .*invalid port",
    ),
    (
        "characterize host name without --scope",
        ["characterize", "pump-3.ward.invalid"],
        r"host 'pump-3\.ward\.invalid' is a host name: a name needs --scope",
    ),
]


def test_cli_hostile_arguments_are_one_error_line_and_create_no_file(tmp_path: Path) -> None:
    """Each row: exit code 2, exactly one ``error:`` line, no traceback, and no store (nor alert file)
    created. Before: tracebacks for ``--ports ²``, ``21-³``, ``127.0.76.1-²`` and ``--port-alias ²=21``; a
    framed usage box for a value the parser refuses; ``--webhook`` with port 99999 probed and then crashed;
    bad ``--ports`` created the store; a host name without --scope got a message about the scope entry."""
    h = allocate_loopback()  # nothing listens there; every row fails before anything would be sent
    procs = {}
    for row, argv, _ in CLI_ROWS:
        work = tmp_path / row.replace(" ", "_").replace("/", "_")
        work.mkdir()
        args = [a.replace("{h}", h).replace("{tmp}", str(work)) for a in argv]
        command = [*fragileprobe_command(), *args, "--store", str(work / "fp.db")]
        procs[row] = (
            work,
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work),
        )
    for row, _, pattern in CLI_ROWS:
        work, proc = procs[row]
        stdout, stderr = proc.communicate(timeout=90)
        line = _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
        assert re.search(pattern, line), (row, line)
        assert sorted(p.name for p in work.iterdir()) == [], (row, list(work.iterdir()))


def test_cli_refuses_a_foreign_store_and_leaves_it_byte_identical(tmp_path: Path) -> None:
    path = _foreign_store(tmp_path / "notes.db")
    before = _digest(path)
    line = _one_error_line(_cli("discover", allocate_loopback(), "--store", str(path), cwd=tmp_path))
    assert "not a fragileprobe store" in line
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


# --- every wait has an end ---------------------------------------------------------------------------------


def test_manual_recovery_with_a_silent_open_stdin_ends_at_its_timeout_and_exits_1(tmp_path: Path) -> None:
    """``characterize --recovery manual --recovery-timeout 2`` with a stdin that stays open and silent
    reported the failed recovery and then never exited: the abandoned prompt thread blocked interpreter
    shutdown. Now the process ends with exit code 1 (device trouble) soon after the timeout."""
    host = allocate_loopback()
    emu = EmulatorProcess("--host", host, "--threshold", "2", "--jitter", "0", "--boot-delay", "0.1")
    try:
        emu.wait_ready()
        with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
            proc = subprocess.Popen(
                [
                    *fragileprobe_command(),
                    "characterize",
                    host,
                    "--ladder",
                    "1,2,3",
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
                    "--trials",
                    "1",
                    "--recovery",
                    "manual",
                    "--recovery-timeout",
                    "2",
                    "--store",
                    str(tmp_path / "fp.db"),
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=tmp_path,
            )
            assert proc.stdin is not None
            try:
                # Never written, never closed while the run lasts: a person who walked away.
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("characterize did not exit after its manual recovery timed out")
            finally:
                proc.stdin.close()
        stderr = (tmp_path / "err").read_text()
    finally:
        emu.stop()
    assert code == 1, stderr[-2000:]
    assert "Power-cycle it, then press Enter" in stderr
    assert "device trouble: " in stderr
    assert "Traceback" not in stderr
    assert "Fatal Python error" not in stderr


@pytest.mark.parametrize("bad", ["٢", "2", 2.7, True, "1e400"])
def test_numbers_in_an_imported_document_are_json_numbers_only(bad: object) -> None:
    """A profile import read ``"level": "٢"`` as level 2 (``int()`` takes Arabic-Indic digits), 2.7 as 2
    and ``true`` as 1: a document that holds those was not written by fragileprobe."""
    from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult

    levels = (LevelResult(level=2, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0),)
    good = Characterization.from_trials(
        host="127.0.0.9", model_key="m", ladder=(2,), trials=[TrialResult(index=0, levels=levels)]
    ).to_dict()
    assert Characterization.from_dict(good).ladder == (2,)
    bad_doc = {**good, "ladder": [bad]}
    bad_doc["trials"] = [{**good["trials"][0], "levels": [{**good["trials"][0]["levels"][0], "level": bad}]}]
    with pytest.raises(ConfigError, match="malformed"):
        Characterization.from_dict(bad_doc)


def test_a_bad_profile_import_creates_no_store(tmp_path: Path) -> None:
    """``profiles import bad.json --store new.db`` created new.db before the document was refused."""
    source = tmp_path / "bad.json"
    source.write_text('{"characterizations": [{"host": "h", "ladder": ["٢"], "trials": []}]}')
    line = _one_error_line(
        _cli("profiles", "import", str(source), "--store", str(tmp_path / "new.db"), cwd=tmp_path)
    )
    assert "malformed" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_zones_see_an_ipv4_mapped_host_as_its_ipv4_address() -> None:
    """The inventory's zones use the same identity as the scope: a mapped block or host is the IPv4 one."""
    zone = Zone("icu", ("::ffff:127.0.80.0/120",), kind="medical")
    assert "127.0.80.7" in zone
    assert "::ffff:127.0.80.7" in Zone("icu", ("127.0.80.0/24",), kind="medical")


async def test_a_heartbeat_port_answering_a_superscript_length_is_device_down_not_a_crash(
    loopback_host: str,
) -> None:
    """The characterization side of the Content-Length example: the heartbeat's answer is a protocol error,
    so characterize() ends with DeviceDownError at entry (fragileprobe's own error, naming the device), not
    with the heartbeat's ValueError. (A regression guard: the watchdog already turned a raising beat into a
    failed one; the beat itself no longer raises.)"""
    from fragileprobe import DeviceDownError
    from fragileprobe._characterize import characterize

    async with http_peers({loopback_host: SUPERSCRIPT_LENGTH}) as port:
        target = Target(loopback_host, ports=(port,), heartbeat=HttpHeartbeat(port=port, timeout_s=0.5))
        with anyio.fail_after(30), pytest.raises(DeviceDownError, match=loopback_host):
            await characterize(
                target,
                scope=Scope([loopback_host]),
                ladder=(1, 2),
                dwell_s=0.2,
                interval_s=0.1,
                healthy_beats=1,
            )


def test_our_own_store_after_analyze_still_opens(tmp_path: Path) -> None:
    """SQLite's own tables (sqlite_stat1 after ANALYZE) do not make our store foreign."""
    path = tmp_path / "fp.db"
    ProfileStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    ProfileStore(path).close()
