"""Real tools behind the shield: nmap -sT and -sV through ``fragileprobe shield --exec`` (proxychains-ng),
curl --socks5, the CLI's own server mode, and the HTML report's shield timeline."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from typing import TYPE_CHECKING

import anyio
import pytest
from python_socks import ProxyError
from python_socks.async_.anyio import Proxy
from tests._support.procs import fragileprobe_command

import fragileprobe as fp
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import EmulatedDevice

if TYPE_CHECKING:
    from pathlib import Path

NMAP = shutil.which("nmap")
CURL = shutil.which("curl")
PROXYCHAINS = shutil.which("proxychains4")
needs_nmap = pytest.mark.skipif(NMAP is None or PROXYCHAINS is None, reason="needs nmap and proxychains4")
needs_curl = pytest.mark.skipif(CURL is None, reason="needs curl")
# A monitor with 14 services and a crash threshold of 5-7 sessions: nmap -sT alone holds more than that at
# once (ANCHORS.md: about 40 with 100 open ports), so a plain scan can hang it; through the shield it cannot.
MONITOR = "patient-monitor"


def _open_ports(nmap_out: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"^(\d+)/tcp\s+open\b", nmap_out, re.M)}


async def _shield_exec(args: list[str], command: list[str], timeout_s: float = 240) -> tuple[int, str, str]:
    with anyio.fail_after(timeout_s):
        proc = await anyio.run_process(
            [*fragileprobe_command(), "shield", *args, "--exec", "--", *command], check=False
        )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.mark.nmap
@pytest.mark.slow
async def test_nmap_connect_scan_through_the_shield_finds_the_same_ports_and_never_hangs_the_device(
    loopback_host: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "s.db"
    async with EmulatedDevice(
        loopback_host, model=MONITOR, seed=2, boot_delay_s=0.05, syn_watch=False
    ) as dev:
        ports = ",".join(str(p) for p in sorted(dev.ports.values()))
        expected = set(dev.ports.values())
        code, out, err = await _shield_exec(
            [
                "--scope",
                loopback_host,
                "--store",
                str(store_path),
                "--default-ceiling",
                "2",
                "--heartbeat",
                f"{loopback_host}={dev.web_port}",
            ],
            # --max-parallelism 1, as --exec advises; the socket nmap keeps of its last connect while it is
            # frozen in the next one (inside proxychains) is preempted by the shield when idle for 1 s.
            ["nmap", "-sT", "--max-parallelism", "1", "-Pn", "-n", "-p", ports, loopback_host],
        )
        assert code == 0, err
        assert _open_ports(out) == expected, out + err
        assert dev.stats.crashes == 0
        assert dev.stats.peak_sessions <= 3  # the ceiling of 2 plus the heartbeat
    with ProfileStore(store_path) as store:
        rows = store.shield_sessions(loopback_host)
    # Every open port was relayed (reply 0); a session nmap kept while frozen in its next connect may have
    # been ended by preemption afterwards.
    assert {r["port"] for r in rows if r["reply"] == 0} == expected
    assert {r["outcome"] for r in rows if r["reply"] == 0} <= {"relayed", "preempted_idle"}
    assert all(r["ceiling"] == 2 for r in rows)


@pytest.mark.nmap
@pytest.mark.slow
async def test_nmap_version_scan_through_the_shield_names_the_services(loopback_host: str) -> None:
    async with EmulatedDevice(
        loopback_host, model="infusion-pump", seed=4, boot_delay_s=0.05, syn_watch=False
    ) as pump:
        ports = ",".join(str(pump.port(p)) for p in (21, 22))
        code, out, err = await _shield_exec(
            [
                "--scope",
                loopback_host,
                "--default-ceiling",
                "2",
                "--slot-wait",
                "10",
                "--heartbeat",
                f"{loopback_host}={pump.web_port}",
            ],
            ["nmap", "-sT", "-sV", "--max-parallelism", "1", "-Pn", "-n", "-p", ports, loopback_host],
        )
        assert code == 0, err
        assert "vsftpd 2.3.4" in out
        assert "Dropbear sshd" in out
        assert pump.stats.crashes == 0
        assert pump.stats.peak_sessions <= 3


@pytest.mark.nmap
@pytest.mark.parametrize("scan", [["-sS"], ["-sT", "-O"], ["-sU"], ["-sT", "-PE"]])
async def test_exec_refuses_nmap_runs_that_would_send_raw_packets(
    loopback_host: str, scan: list[str]
) -> None:
    """A SYN scan never goes through proxychains (it hooks connect() only): refused before anything runs."""
    command = ["nmap", *scan, "-Pn", "-n", loopback_host]
    code, _out, err = await _shield_exec(["--scope", loopback_host], command, timeout_s=60)
    assert code == 2
    assert "never pass" in err or "raw packets" in err


def test_exec_check_as_root_demands_connect_scan_and_no_ping() -> None:
    from fragileprobe._shield import check_exec_command

    with pytest.raises(fp.ConfigError, match="-sT"):
        check_exec_command(["nmap", "-Pn", "10.0.0.1"], root=True)
    with pytest.raises(fp.ConfigError, match="-Pn"):
        check_exec_command(["nmap", "-sT", "10.0.0.1"], root=True)
    assert check_exec_command(["nmap", "-sT", "10.0.0.1"], root=False) != []  # warns: no -n
    warned = check_exec_command(["nmap", "-sTV", "-Pn", "-n", "10.0.0.1"], root=True)
    assert len(warned) == 1
    assert "--max-parallelism 1" in warned[0]
    careful = ["nmap", "-sTV", "--max-parallelism", "1", "-Pn", "-n", "10.0.0.1"]
    assert check_exec_command(careful, root=True) == []


def test_proxychains_config_is_strict_without_proxy_dns() -> None:
    from fragileprobe._shield import proxychains_config

    text = proxychains_config(
        "127.0.0.1", 1080, read_timeout_s=9, connect_timeout_s=2, username="u", password="p"
    )
    lines = text.splitlines()
    assert "strict_chain" in lines
    assert not any(line.startswith("proxy_dns") for line in lines)
    assert lines[-1] == "socks5 127.0.0.1 1080 u p"
    assert "tcp_read_time_out 9000" in lines


@needs_curl
async def test_curl_socks5_through_the_shield(loopback_hosts: object, tmp_path: Path) -> None:
    host = loopback_hosts()  # type: ignore[operator]
    async with EmulatedDevice(
        host, model="infusion-pump", seed=1, boot_delay_s=0.05, syn_watch=False
    ) as pump:
        shield = fp.Shield(scope=fp.Scope(host), listen_port=0)
        async with shield:
            h, p = shield.address
            ok = await anyio.run_process(
                [CURL, "-sS", "-m", "10", "--socks5", f"{h}:{p}", f"http://{host}:{pump.web_port}/"],
                check=False,
            )
            assert ok.returncode == 0, ok.stderr
            assert b"<title>" in ok.stdout
            # a name is never resolved: refused by ruleset, curl reports the proxy's refusal
            name = await anyio.run_process(
                [CURL, "-sS", "-m", "10", "--socks5-hostname", f"{h}:{p}", "http://pump.invalid/"],
                check=False,
            )
            assert name.returncode != 0
            assert b"not allowed" in name.stderr.lower() or name.returncode == 97
            with anyio.fail_after(10):
                while shield.stats.active:  # noqa: ASYNC110 - bounded poll of the shield's counter
                    await anyio.sleep(0.02)
    outcomes = [s.outcome for s in shield.sessions]
    assert outcomes == ["relayed", "refused_name"]
    assert shield.sessions[0].bytes_down > 0


async def test_cli_server_mode_relays_and_stops_on_sigint(loopback_host: str, tmp_path: Path) -> None:
    async with EmulatedDevice(
        loopback_host, model="infusion-pump", seed=1, boot_delay_s=0.05, syn_watch=False
    ) as pump:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a long-running child we signal, read in a thread
            [
                *fragileprobe_command(),
                "shield",
                "--scope",
                loopback_host,
                "--listen",
                "127.0.0.1:0",
                "--store",
                str(tmp_path / "s.db"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            line = await anyio.to_thread.run_sync(proc.stderr.readline)
            match = re.search(r"listening on ([\d.]+):(\d+)", line)
            assert match, line
            proxy = Proxy.from_url(f"socks5://{match.group(1)}:{match.group(2)}")
            stream = await proxy.connect(loopback_host, pump.port(21), timeout=10)
            async with stream:
                assert (await stream.receive()).startswith(b"220")
            with pytest.raises(ProxyError):
                await proxy.connect("127.0.0.99", 21, timeout=10)  # outside the scope
            await anyio.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            _out, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130
    assert "2 session(s), 1 relayed, 1 refused" in err
    with ProfileStore(tmp_path / "s.db") as store:
        assert [r["outcome"] for r in store.shield_sessions()] == ["relayed", "refused_scope"]


def test_cli_refuses_an_open_bind_without_auth(tmp_path: Path) -> None:
    command = [*fragileprobe_command(), "shield", "--scope", "127.0.0.1", "--listen", "0.0.0.0:0"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "must be a loopback address unless users" in proc.stderr


def test_report_shows_a_timeline_per_device_with_its_trips(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "s.db")
    rows = [
        dict(
            host="127.5.0.1",
            port=21,
            client="127.0.0.1:1",
            username=None,
            started_at_s=100.0 + i,
            ended_at_s=100.5 + i,
            bytes_up=1,
            bytes_down=20,
            outcome="relayed",
            reply=0,
            ceiling=1,
            limit_source="medical default",
            waited_s=0.0,
        )
        for i in range(3)
    ]
    rows.append(
        {**rows[0], "started_at_s": 104.0, "ended_at_s": 104.0, "outcome": "refused_tripped", "reply": 2}
    )
    store.record_shield_sessions(rows)
    trip = {
        "host": "127.5.0.1",
        "tripped_at_s": 103.0,
        "reason": "timeout",
        "sessions_closed": 1,
        "ceiling": 1,
        "limit_source": "medical default",
    }
    store.record_shield_trip(trip)
    store.record_alert({"kind": "shield_trip", "host": "127.5.0.1"})
    code = subprocess.run(
        [
            *fragileprobe_command(),
            "report",
            "--store",
            str(tmp_path / "s.db"),
            "--out",
            str(tmp_path / "r"),
            "--no-plot",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert code.returncode == 0, code.stderr
    page = (tmp_path / "r.html").read_text()
    assert "Through the shield" in page
    assert "<h3>127.5.0.1</h3>" in page
    assert "TRIP" in page
    assert page.count("<rect") >= 5  # four sessions and the blocked span
    assert "3 relayed, 1 refused, 1 trip(s)" in page
    assert "wrong zone" in page  # the trip alert is not shown as a zone alert
    store.close()
