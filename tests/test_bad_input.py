"""Bad input: every row of docs/bad-input.md, from the library and from the command line.

Each row gives a clear error of the documented class whose message names the input and what is wrong;
nothing is sent to a device (a live emulated device at the address counts every connection attempt) and
nothing already stored is damaged (the store file's bytes and rows are compared before and after).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from _support.procs import fragileprobe_command
from conftest import allocate_loopback
from fragileprobe import (
    ConfigError,
    Guard,
    HttpHeartbeat,
    Scope,
    ScopeError,
    StoreError,
    Target,
    TcpHeartbeat,
    Watchdog,
    discover,
    grab_banner,
    http_get,
    parse_ports,
    parse_targets,
    tcp_connect,
)
from fragileprobe._characterize import characterize
from fragileprobe._groups import Rules, Zones
from fragileprobe._limiter import ConcurrencyLimiter
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._ramp import validate_ladder
from fragileprobe._store import SCHEMA_VERSION, ProfileStore
from fragileprobe.emulator import EmulatedDevice

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

# --- pure specs: (input, error class, message pattern naming the input and the fault) -------------------

SPEC_ROWS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # malformed addresses
    (
        "address: octet above 255",
        lambda: parse_targets("127.0.0.300"),
        ConfigError,
        r"'127\.0\.0\.300' is neither an IP address",
    ),
    (
        "address: three octets (inet_aton form)",
        lambda: parse_targets("127.0.0"),
        ConfigError,
        r"'127\.0\.0' is neither an IP address",
    ),
    ("address: bare integer", lambda: parse_targets("2130706433"), ConfigError, r"'2130706433'"),
    ("address: junk", lambda: parse_targets("pump 5!"), ConfigError, r"'pump 5!' is neither"),
    (
        "address: reversed range",
        lambda: parse_targets("127.0.0.9-3"),
        ConfigError,
        r"'127\.0\.0\.9-3' is reversed",
    ),
    (
        "address: range end above 255",
        lambda: parse_targets("127.0.0.9-300"),
        ConfigError,
        r"'127\.0\.0\.9-300'.*above 255",
    ),
    ("address: bad CIDR", lambda: parse_targets("127.0.0.0/33"), ConfigError, r"'127\.0\.0\.0/33'.*CIDR"),
    ("address: stray comma", lambda: parse_targets("127.0.0.1,,127.0.0.2"), ConfigError, r"stray comma"),
    ("target host malformed", lambda: Target("127.0.0.300"), ConfigError, r"Target\.host:.*'127\.0\.0\.300'"),
    # ports
    ("port: zero", lambda: parse_ports("0"), ConfigError, r"port 0 .*outside 1-65535"),
    ("port: above 65535", lambda: parse_ports("21,65536"), ConfigError, r"port 65536 .*outside 1-65535"),
    ("port: not a number", lambda: parse_ports("ftp"), ConfigError, r"'ftp' .*not a number"),
    ("port: reversed range", lambda: parse_ports("23-21"), ConfigError, r"'23-21' .*reversed"),
    ("port: half range", lambda: parse_ports("21-"), ConfigError, r"'21-' .*must look like"),
    ("port: empty", lambda: parse_ports(""), ConfigError, r"empty"),
    ("port: bool", lambda: parse_ports(True), ConfigError, r"bool"),
    ("target ports empty", lambda: Target("127.0.0.1", ports=()), ConfigError, r"Target\.ports.*empty"),
    # scopes
    ("scope: empty", lambda: Scope([]), ConfigError, r"scope is empty"),
    ("scope: blank string", lambda: Scope(" , "), ConfigError, r"scope is empty"),
    ("scope: malformed", lambda: Scope(["127.0.0.300"]), ConfigError, r"'127\.0\.0\.300' is not an address"),
    ("scope: not a string", lambda: Scope([5]), ConfigError, r"scope entry 5 must be a string"),  # type: ignore[list-item]
    (
        "scope: enormous",
        lambda: Scope(["10.0.0.0/8"]),
        ConfigError,
        r"'10\.0\.0\.0/8' covers 16777216 addresses.*allow_large",
    ),
    ("scope: everything", lambda: Scope(["0.0.0.0/0"]), ConfigError, r"'0\.0\.0\.0/0' covers"),
    ("targets: empty", lambda: parse_targets(""), ConfigError, r"target spec is empty"),
    (
        "targets: enormous",
        lambda: parse_targets("127.0.0.0/8"),
        ConfigError,
        r"'127\.0\.0\.0/8' has 16777216 addresses.*allow_large",
    ),
    (
        "targets: above max_hosts",
        lambda: parse_targets("127.0.0.0/16", allow_large=True, max_hosts=1000),
        ConfigError,
        r"more than max_hosts",
    ),
    # ladders
    ("ladder: empty", lambda: validate_ladder(()), ConfigError, r"ladder: must not be empty"),
    ("ladder: goes down", lambda: validate_ladder((1, 5, 3)), ConfigError, r"must climb.*3 follows 5"),
    ("ladder: flat", lambda: validate_ladder((2, 2)), ConfigError, r"ladder: must climb.*2 follows 2"),
    ("ladder: zero level", lambda: validate_ladder((0, 1)), ConfigError, r"levels must be >= 1, got 0"),
    ("ladder: fraction", lambda: validate_ladder((1, 2.5)), ConfigError, r"ladder: .*integers, got 2\.5"),  # type: ignore[arg-type]
    # ceilings
    (
        "ceiling: zero",
        lambda: ConcurrencyLimiter(0),
        ConfigError,
        r"^ceiling: must be an integer >= 1, got 0$",
    ),
    (
        "ceiling: negative",
        lambda: ConcurrencyLimiter(-2),
        ConfigError,
        r"^ceiling: must be an integer >= 1, got -2$",
    ),
    (
        "ceiling: fraction",
        lambda: ConcurrencyLimiter(1.5),
        ConfigError,  # type: ignore[arg-type]
        r"^ceiling: must be an integer >= 1, got 1\.5$",
    ),
    (
        "ceiling: Guard zero",
        lambda: Guard("127.0.0.1", ceiling=0, scope=Scope(["127.0.0.1"])),
        ConfigError,
        r"^ceiling: must be an integer >= 1, got 0$",
    ),
    (
        "ceiling: Guard one beside a session heartbeat",
        lambda: Guard("127.0.0.1", ceiling=1, scope=Scope(["127.0.0.1"])),
        ConfigError,
        r"ceiling: 1 leaves no room for work.*ceiling of 2 or more.*IcmpHeartbeat.*watchdog=False",
    ),
    (
        "rate: zero",
        lambda: ConcurrencyLimiter(1, rate_per_s=0),
        ConfigError,
        r"^rate_per_s: must be a positive number, got 0$",
    ),
    # timeouts and intervals
    (
        "heartbeat timeout zero",
        lambda: HttpHeartbeat(timeout_s=0),
        ConfigError,
        r"^HttpHeartbeat\.timeout_s: must be a positive number, got 0$",
    ),
    (
        "heartbeat timeout infinite",
        lambda: TcpHeartbeat(8080, timeout_s=float("inf")),
        ConfigError,
        r"^TcpHeartbeat\.timeout_s: must be a positive number, got inf$",
    ),
    (
        "heartbeat port zero",
        lambda: TcpHeartbeat(0),
        ConfigError,
        r"^TcpHeartbeat\.port: must be an integer in 1-65535, got 0$",
    ),
    (
        "heartbeat path",
        lambda: HttpHeartbeat(path="status"),
        ConfigError,
        r"^HttpHeartbeat\.path: must be a path starting with '/', got 'status'$",
    ),
    (
        "watchdog interval negative",
        lambda: Watchdog(TcpHeartbeat(8080), host="127.0.0.1", interval_s=-1),
        ConfigError,
        r"interval_s.*-1",
    ),
    (
        "watchdog failures zero",
        lambda: Watchdog(TcpHeartbeat(8080), host="127.0.0.1", failures_to_down=0),
        ConfigError,
        r"failures_to_down.*got 0",
    ),
    (
        "Guard connect timeout negative",
        lambda: Guard("127.0.0.1", ceiling=2, scope=Scope(["127.0.0.1"]), connect_timeout_s=-1),
        ConfigError,
        r"^connect_timeout_s: must be a positive number, got -1$",
    ),
    (
        "Guard interval NaN",
        lambda: Guard("127.0.0.1", ceiling=2, scope=Scope(["127.0.0.1"]), interval_s=float("nan")),
        ConfigError,
        r"^Watchdog\.interval_s: must be a positive number, got nan$",
    ),
]


@pytest.mark.parametrize(("row", "call", "error", "pattern"), SPEC_ROWS, ids=[r[0] for r in SPEC_ROWS])
def test_bad_spec_gives_named_error(
    row: str, call: Callable[[], object], error: type[Exception], pattern: str
) -> None:
    """Each malformed spec raises the documented error class with a message naming the input."""
    with pytest.raises(error, match=pattern):
        call()


def test_scope_error_is_a_config_error() -> None:
    """Callers catching ConfigError also catch out-of-scope targets (documented hierarchy)."""
    with pytest.raises(ConfigError, match="outside the authorized scope"):
        parse_targets("127.0.2.1", scope=Scope(["127.0.1.0/24"]))


# --- bad configuration of the entry points: refused before any packet --------------------------------------

CHARACTERIZE_ROWS: list[tuple[dict[str, Any], str]] = [
    ({"dwell_s": 0}, r"dwell_s: must be a positive number, got 0"),
    ({"dwell_s": -1.0}, r"dwell_s: must be a positive number, got -1"),
    ({"dwell_s": float("nan")}, r"dwell_s: .*nan"),
    ({"ladder": (1, 5, 3)}, r"ladder: must climb strictly, but 3 follows 5"),
    ({"ladder": ()}, r"ladder: must not be empty"),
    ({"trials": 0}, r"trials: .*got 0"),
    ({"crash_budget": 0}, r"crash_budget: .*got 0"),
    ({"interval_s": 0}, r"interval_s: .*got 0"),
    ({"heartbeat_timeout_s": -1}, r"heartbeat_timeout_s: .*got -1"),
    ({"connect_timeout_s": 0}, r"connect_timeout_s: .*got 0"),
    ({"read_timeout_s": -0.5}, r"read_timeout_s: .*got -0\.5"),
    ({"time_budget_s": 0}, r"time_budget_s: .*got 0"),
    ({"recovery_timeout_s": 0}, r"recovery_timeout_s: .*got 0"),
    ({"hold_s": -1}, r"hold_s: .*got -1"),
    ({"healthy_beats": 0}, r"healthy_beats: .*got 0"),
    ({"margin_fraction": 1.0}, r"margin_fraction: .*got 1\.0"),
    ({"resume": True}, r"resume: needs a store"),
]

DISCOVER_ROWS: list[tuple[dict[str, Any], str]] = [
    ({"ports": "21,abc"}, r"ports: .*'abc'"),
    ({"ports": "0"}, r"ports: port 0"),
    ({"per_host_sessions": 0}, r"per_host_sessions: .*got 0"),
    ({"per_host_sessions": -1}, r"per_host_sessions: .*got -1"),
    ({"rate_per_host": 0}, r"rate_per_host: .*got 0"),
    ({"max_hosts_in_parallel": 0}, r"max_hosts_in_parallel: .*got 0"),
    ({"connect_timeout_s": 0}, r"connect_timeout_s: .*got 0"),
    ({"banner_timeout_s": -2}, r"banner_timeout_s: .*got -2"),
    ({"unresponsive_after": 0}, r"unresponsive_after: .*got 0"),
    ({"resume": True}, r"resume=True needs a store"),
    ({"alert_file": "/nonexistent-fragileprobe-dir/alerts.jsonl"}, r"alert file .*alerts\.jsonl: cannot"),
    ({"webhook_url": "ftp://127.0.0.1/alerts"}, r"webhook_url: must be an http:// or https:// URL"),
]


def _idle_device() -> EmulatedDevice:
    """A live emulated pump (enter it in the test): every connection attempt to it is counted."""
    return EmulatedDevice(allocate_loopback(), seed=1, boot_delay_s=0.05)


@pytest.mark.parametrize(("kwargs", "pattern"), CHARACTERIZE_ROWS, ids=[str(r[0]) for r in CHARACTERIZE_ROWS])
async def test_characterize_bad_config_is_refused_before_any_packet(
    kwargs: dict[str, Any], pattern: str
) -> None:
    async with _idle_device() as idle_device:
        target = Target(
            idle_device.host,
            ports=(idle_device.port(21),),
            heartbeat=HttpHeartbeat(port=idle_device.web_port),
        )
        with anyio.fail_after(5):
            with pytest.raises(ConfigError, match=pattern):
                await characterize(target, scope=Scope([idle_device.host]), **kwargs)
        assert idle_device.stats.connects_total == 0


@pytest.mark.parametrize(("kwargs", "pattern"), DISCOVER_ROWS, ids=[str(r[0]) for r in DISCOVER_ROWS])
async def test_discover_bad_config_is_refused_before_any_packet(kwargs: dict[str, Any], pattern: str) -> None:
    async with _idle_device() as idle_device:
        with anyio.fail_after(5):
            with pytest.raises(ConfigError, match=pattern):
                await discover(idle_device.host, scope=Scope([idle_device.host]), **kwargs)
        assert idle_device.stats.connects_total == 0


async def test_bad_probe_arguments_are_refused_before_any_packet() -> None:
    async with _idle_device() as idle_device:
        host, port = idle_device.host, idle_device.port(21)
        calls: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (lambda: tcp_connect(host, port, timeout_s=0), r"timeout_s: .*got 0"),
            (lambda: tcp_connect(host, 0), r"port: .*got 0"),
            (lambda: tcp_connect(host, 70000), r"port: .*got 70000"),
            (lambda: grab_banner(host, port, read_timeout_s=-1), r"read_timeout_s: .*got -1"),
            (lambda: grab_banner(host, port, max_bytes=0), r"max_bytes: .*got 0"),
            (lambda: grab_banner(host, port, max_bytes=1 << 30), r"max_bytes: .*got 1073741824"),
            (lambda: http_get(host, port, "status"), r"path: must be a path starting with '/'.*got 'status'"),
            (lambda: http_get(host, port, "/\r\nX-Injected: 1"), r"path: must be a path starting with '/'"),
            (lambda: http_get(host, port, host_header="a\r\nb"), r"host_header: must be"),
            (lambda: http_get(host, port, total_timeout_s=0), r"total_timeout_s: .*got 0"),
            # without a scope a name would go to the resolver: refused, nothing sent (no DNS query either)
            (lambda: tcp_connect("127.0.0.300", port), r"host '127\.0\.0\.300' is not an IP address"),
        ]
        for call, pattern in calls:
            with pytest.raises(ConfigError, match=pattern):
                await call()
        assert idle_device.stats.connects_total == 0


async def test_set_ceiling_to_zero_or_below_is_refused_and_keeps_the_old_ceiling() -> None:
    limiter = ConcurrencyLimiter(3)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=rf"^ceiling: must be an integer >= 1, got {bad}$"):
            await limiter.set_ceiling(bad)
    assert limiter.ceiling == 3
    assert limiter.target_ceiling == 3


# --- targets outside the scope: ScopeError and no connect reaches a listener -------------------------------


async def test_targets_outside_scope_are_refused_before_any_packet() -> None:
    """Every entry point refuses an out-of-scope target with ScopeError; the device there sees nothing."""
    async with _idle_device() as idle_device:
        host = idle_device.host
        scope = Scope(["127.0.0.0/30"])  # does not contain the device
        assert host not in scope
        web = HttpHeartbeat(port=idle_device.web_port)
        target = Target(host, ports=(idle_device.port(21),), heartbeat=web)
        port = idle_device.port(21)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: tcp_connect(host, port, scope=scope),
            lambda: grab_banner(host, port, scope=scope),
            lambda: http_get(host, idle_device.web_port, scope=scope),
            lambda: characterize(target, scope=scope, dwell_s=0.1),
            lambda: discover(host, scope=scope),
            lambda: discover(["127.0.0.1", host], scope=scope),  # one bad target refuses the whole scan
        ]
        with anyio.fail_after(10):
            for call in calls:
                with pytest.raises(ScopeError, match=rf"{host}.*outside the authorized scope.*nothing was"):
                    await call()
            with pytest.raises(ScopeError, match=rf"{host}.*outside"):
                async with Guard(target, ceiling=2, scope=scope):
                    pass  # pragma: no cover - never entered
        assert idle_device.stats.connects_total == 0


# --- rules and zones files --------------------------------------------------------------------------------

RULES_ROWS = [
    ("syntax", "[[rule]\nname = 'x'\n", r"TOML syntax error.*line 1"),
    (
        "unknown key",
        "[[rule]]\nname = 'x'\nports_al = [21]\n",
        r"rule #1 \('x'\): unknown key 'ports_al'.*did you mean",
    ),
    ("binary", "\x00\x01\x02", r"TOML syntax error"),
]
ZONES_ROWS = [
    ("syntax", "[[zone]\n", r"TOML syntax error"),
    (
        "unknown key",
        "[[zone]]\nname = 'icu'\nranges = ['127.0.0.0/24']\nkind = 'medical'\ncolour = 'red'\n",
        r"zone #1 \('icu'\): unknown key 'colour'",
    ),
    (
        "overlap",
        "[[zone]]\nname = 'a'\nranges = ['127.0.0.0/24']\nkind = 'medical'\n"
        "[[zone]]\nname = 'b'\nranges = ['127.0.0.128/25']\nkind = 'general'\n",
        r"zones 'a' \(127\.0\.0\.0/24\) and 'b' \(127\.0\.0\.128/25\) overlap",
    ),
    (
        "bad range",
        "[[zone]]\nname = 'a'\nranges = ['127.0.0.0/33']\nkind = 'medical'\n",
        r"zone #1 \('a'\).*'127\.0\.0\.0/33'",
    ),
]


@pytest.mark.parametrize(("row", "text", "pattern"), RULES_ROWS, ids=[r[0] for r in RULES_ROWS])
def test_bad_rules_file_names_file_and_fault(tmp_path: Path, row: str, text: str, pattern: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"rules\.toml: {pattern}"):
        Rules.from_toml(path)


@pytest.mark.parametrize(("row", "text", "pattern"), ZONES_ROWS, ids=[r[0] for r in ZONES_ROWS])
def test_bad_zones_file_names_file_and_fault(tmp_path: Path, row: str, text: str, pattern: str) -> None:
    path = tmp_path / "zones.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"zones\.toml: {pattern}"):
        Zones.from_toml(path)


def test_missing_or_oversized_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        Zones.from_toml(tmp_path / "nope.toml")
    big = tmp_path / "big.toml"
    big.write_text("#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match=r"big\.toml: larger than"):
        Rules.from_toml(big)


# --- store files: corrupt, newer schema, locked; nothing stored is damaged ---------------------------------


def _char(host: str) -> Characterization:
    levels = (
        LevelResult(level=1, outcome=LevelOutcome.PASSED, dwell_s=0.1, elapsed_s=0.1),
        LevelResult(level=2, outcome=LevelOutcome.FAILED, dwell_s=0.1, elapsed_s=0.05),
    )
    return Characterization.from_trials(
        host=host, model_key="pump-x", ladder=(1, 2), trials=[TrialResult(index=0, levels=levels)]
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bad_store(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.db"
    if kind == "corrupt":
        path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    elif kind == "not-a-database":
        path.write_text("hosts:\n  - 127.0.0.1\n")
    else:  # newer schema, with a row a newer fragileprobe wrote
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE future(x)")
        conn.execute("INSERT INTO future VALUES ('keep me')")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 7}")
        conn.commit()
        conn.close()
    return path


STORE_ROWS = [
    ("corrupt", r"corrupt\.db.*corrupt"),
    ("not-a-database", r"not-a-database\.db.*(corrupt|not a fragileprobe store)"),
    ("newer", rf"newer\.db has schema version {SCHEMA_VERSION + 7}, newer than .*\({SCHEMA_VERSION}\)"),
]


@pytest.mark.parametrize(("kind", "pattern"), STORE_ROWS, ids=[r[0] for r in STORE_ROWS])
def test_bad_store_is_refused_and_left_byte_identical(tmp_path: Path, kind: str, pattern: str) -> None:
    """A bad store file fails at open (before any scan starts) with StoreError naming it; its bytes stay."""
    path = _bad_store(tmp_path, kind)
    before = _digest(path)
    with pytest.raises(StoreError, match=pattern):
        ProfileStore(path)
    assert _digest(path) == before


IMPORT_ROWS = [
    ("not JSON", "hosts: [127.0.0.1]", r"import_json: not JSON"),
    ("not an export", '{"profiles": []}', r"not a fragileprobe store export"),
    ("not a list", '{"characterizations": 5}', r"'characterizations' must be a list"),
    ("null entry", '{"characterizations": [null]}', r"malformed: expected an object, got None"),
    ("bad trial", '{"characterizations": [{"host": "h", "ladder": [1], "trials": [7]}]}', r"malformed"),
    ("newer format", '{"characterizations": [{"format": 99}]}', r"format 99 is newer"),
]


@pytest.mark.parametrize(("row", "text", "pattern"), IMPORT_ROWS, ids=[r[0] for r in IMPORT_ROWS])
def test_bad_import_document_is_refused_and_adds_nothing(
    tmp_path: Path, row: str, text: str, pattern: str
) -> None:
    with ProfileStore(tmp_path / "s.db") as store:
        store.save(_char("127.0.0.9"))
        before = store.export_json()
        with pytest.raises(ConfigError, match=pattern):
            store.import_json(text)
        assert store.export_json() == before


_LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def _save_while_locked(path: Path) -> None:
    store = ProfileStore(path, busy_timeout_s=0.2)
    try:
        store.save(_char("127.0.0.10"))
    finally:
        store.close()


def test_store_locked_by_another_process_fails_clearly_and_keeps_rows(tmp_path: Path) -> None:
    """Another process holds the store's lock: StoreError naming the file, stored rows unchanged, and the
    store works again once the lock is gone."""
    path = tmp_path / "shared.db"
    with ProfileStore(path) as store:
        store.save(_char("127.0.0.9"))
        rows_before = store.export_json()
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=r"shared\.db.*locked"):
            _save_while_locked(path)
    finally:
        assert holder.stdin is not None
        holder.communicate("\n", timeout=10)  # releases the lock, reaps the child, closes its pipes
    with ProfileStore(path) as store:
        assert store.export_json() == rows_before
        store.save(_char("127.0.0.10"))
        assert [c.host for c in store.history()] == ["127.0.0.9", "127.0.0.10"]


# --- the command line: one line on stderr, exit code 2, no traceback ---------------------------------------


def _cli_rows(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Row id (as in docs/bad-input.md) -> (argv, pattern the one stderr line must match)."""
    files = {
        "rules-syntax.toml": "[[rule]\nname = 'x'\n",
        "rules-unknown.toml": "[[rule]]\nname = 'x'\nports_al = [21]\n",
        "zones-syntax.toml": "[[zone]\n",
        "zones-unknown.toml": "[[zone]]\nname = 'a'\nranges = ['127.0.0.0/24']\nkind = 'medical'\n"
        "colour = 'red'\n",
        "zones-overlap.toml": "[[zone]]\nname = 'a'\nranges = ['127.0.0.0/24']\nkind = 'medical'\n"
        "[[zone]]\nname = 'b'\nranges = ['127.0.0.128/25']\nkind = 'general'\n",
        "fleet-broken.toml": "[[device]\nhost = '127.0.0.2'\n",
        "bad-import.json": '{"characterizations": [null]}',
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    for kind in ("corrupt", "newer"):
        _bad_store(tmp, kind)
    h = allocate_loopback()  # nothing listens there, and every row fails before anything would be sent

    def f(name: str) -> str:
        return str(tmp / name)

    c = ["characterize", "--store", str(tmp / "c.db")]
    d = ["discover", "--store", str(tmp / "d.db")]
    return {
        "address: octet above 255": ([*d, "127.0.0.300"], r"'127\.0\.0\.300' is neither an IP address"),
        "address: characterize": ([*c, "127.0.0.300"], r"'127\.0\.0\.300' is not an address"),
        "address: reversed range": ([*d, "127.0.0.9-3"], r"'127\.0\.0\.9-3' is reversed"),
        "port: not a number": ([*c, h, "--ports", "ftp"], r"'ftp' .*not a number"),
        "port: zero": ([*d, h, "--ports", "0"], r"port 0 .*outside 1-65535"),
        "ladder: goes down": ([*c, h, "--ladder", "1,5,3"], r"ladder: must climb.* 3 follows 5"),
        "ladder: flat": ([*c, h, "--ladder", "2,2"], r"ladder: must climb.*2 follows 2"),
        "ladder: zero level": ([*c, h, "--ladder", "0,1"], r"ladder: levels must be >= 1, got 0"),
        "ladder: not numbers": ([*c, h, "--ladder", "a,b"], r"--ladder: 'a,b' is not"),
        "scope: empty": ([*c, h, "--scope", ""], r"scope is empty"),
        "scope: enormous": ([*c, h, "--scope", "127.0.0.0/8"], r"'127\.0\.0\.0/8' covers 16777216"),
        "targets: empty": ([*d, ""], r"target spec is empty"),
        "targets: enormous": ([*d, "127.0.0.0/8"], r"'127\.0\.0\.0/8' has 16777216 addresses"),
        "target outside scope": ([*c, h, "--scope", "127.0.0.1"], rf"{re.escape(h)} is outside the"),
        "ceiling: zero": ([*d, h, "--sessions-per-host", "0"], r"--sessions-per-host: .*got 0"),
        "ceiling: negative": ([*d, h, "--sessions-per-host", "-2"], r"--sessions-per-host: .*got -2"),
        "dwell: zero": ([*c, h, "--dwell", "0"], r"(dwell_s|--dwell): must be a positive number.*got 0"),
        "dwell: negative": ([*c, h, "--dwell", "-1"], r"(dwell_s|--dwell): must be a positive .*got -1"),
        "timeout: heartbeat zero": (
            [*c, h, "--heartbeat-timeout", "0"],
            r"(timeout_s|--heartbeat-timeout): must be a positive number.*got 0",
        ),
        "timeout: interval negative": ([*c, h, "--interval", "-1"], r"(interval_s|--interval): .*got -1"),
        "timeout: connect zero": ([*d, h, "--connect-timeout", "0"], r"--connect-timeout: .*got 0"),
        "timeout: banner negative": ([*d, h, "--banner-timeout", "-1"], r"--banner-timeout: .*got -1"),
        "rules: syntax": ([*d, h, "--rules", f("rules-syntax.toml")], r"rules-syntax\.toml: TOML syntax"),
        "rules: unknown key": ([*d, h, "--rules", f("rules-unknown.toml")], r"unknown key 'ports_al'"),
        "zones: syntax": ([*d, h, "--zones", f("zones-syntax.toml")], r"zones-syntax\.toml: TOML syntax"),
        "zones: unknown key": ([*d, h, "--zones", f("zones-unknown.toml")], r"unknown key 'colour'"),
        "zones: overlap": ([*d, h, "--zones", f("zones-overlap.toml")], r"'a' .*and 'b' .*overlap"),
        "alert file unwritable": (
            [*d, h, "--alerts", str(tmp / "no" / "such" / "dir.jsonl")],
            r"alert file .*dir\.jsonl: cannot append",
        ),
        "store: corrupt": (["discover", "--store", str(tmp / "corrupt.db"), h], r"corrupt\.db.*corrupt"),
        "store: newer schema": (
            ["characterize", "--store", str(tmp / "newer.db"), h],
            r"newer\.db has schema version \d+, newer than",
        ),
        "store: locked": (["discover", "--store", str(tmp / "locked.db"), h], r"locked\.db is locked"),
        "store: bad import": (
            ["profiles", "import", f("bad-import.json"), "--store", f("imp.db")],
            r"malformed: expected an object",
        ),
        "emulate: not loopback": (["emulate", "--host", "10.1.2.3"], r"10\.1\.2\.3.*loopback"),
        "emulate: bad fleet file": (["emulate", "--fleet", f("fleet-broken.toml")], r"fleet-broken\.toml"),
    }


def test_cli_bad_input_is_one_line_exit_2_no_traceback_and_leaves_stores_intact(tmp_path: Path) -> None:
    """Every row through the real entry point (run side by side): exit code 2, exactly one line on stderr
    starting "error: " that names the input, no traceback; bad store files are byte-identical afterwards."""
    rows = _cli_rows(tmp_path)
    locked = tmp_path / "locked.db"
    with ProfileStore(locked) as store:
        store.save(_char("127.0.0.9"))
    stores = [tmp_path / "corrupt.db", tmp_path / "newer.db", locked]
    before = {path: _digest(path) for path in stores}
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(locked)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        procs = {
            row: subprocess.Popen(
                [*fragileprobe_command(), *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
            )
            for row, (argv, _) in rows.items()
        }
        results = {row: (proc.communicate(timeout=90), proc.returncode) for row, proc in procs.items()}
    finally:
        holder.communicate("\n", timeout=10)
    for row, ((_, stderr), code) in results.items():
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2, (row, code, stderr[-2000:])
        assert "Traceback" not in stderr, (row, stderr[-2000:])
        assert len(lines) == 1, (row, lines)
        assert lines[0].startswith("error: "), (row, lines)
        assert re.search(rows[row][1], lines[0]), (row, rows[row][1], lines[0])
    for path in stores:
        assert _digest(path) == before[path], f"{path.name} changed"


# --- more sessions than the process may open sockets --------------------------------------------------------


@pytest.fixture
def low_fd_limit() -> Any:
    """This process's soft file limit lowered to 200 for one test (restored afterwards)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        yield 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_asking_for_more_sockets_than_the_file_limit_is_refused_before_any_packet(
    low_fd_limit: int,
) -> None:
    """A ladder or a discovery that needs more sockets at once than ``ulimit -n`` allows: a ConfigError
    naming the setting and the limit. Past the limit every socket fails with EMFILE: the heartbeat then
    "fails" and a sturdy device was reported crashed at the level where we ran out of files."""
    async with _idle_device() as dev:
        target = Target(dev.host, ports=(dev.port(21),), heartbeat=HttpHeartbeat(port=dev.web_port))
        with pytest.raises(ConfigError, match=rf"ladder: its top level 400 .*only {low_fd_limit} files"):
            await characterize(target, scope=Scope([dev.host]), ladder=(1, 10, 400))
        hosts = [dev.host, *(allocate_loopback() for _ in range(3))]
        with pytest.raises(ConfigError, match=r"max_hosts_in_parallel x per_host_sessions \(4 x 50\)"):
            await discover(hosts, scope=Scope(hosts), per_host_sessions=50, max_hosts_in_parallel=4)
        assert dev.stats.connects_total == 0
