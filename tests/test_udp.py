"""UDP probes: BER and the SNMP/NTP/SSDP parsers (fuzzed), a real net-snmp agent, one datagram each."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe import ConfigError
from fragileprobe._fingerprint import guess_os
from fragileprobe._probes import Outcome
from fragileprobe._udp import (
    SYS_DESCR_OID,
    TAG_GET,
    TAG_INTEGER,
    TAG_NULL,
    TAG_OCTETS,
    TAG_OID,
    TAG_RESPONSE,
    TAG_SEQUENCE,
    BerError,
    ber_decode,
    ber_encode,
    check_community,
    fingerprint_udp,
    ntp_request,
    parse_ntp_response,
    parse_snmp_response,
    parse_ssdp_response,
    snmp_get_request,
    ssdp_request,
    udp_probe,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

SNMPD = shutil.which("snmpd") or "/usr/sbin/snmpd"
SYS_DESCR = "Linux infusion-gw 5.10.0-21-armmp #1 SMP Debian 5.10.162-1 armv7l"


# --- BER ----------------------------------------------------------------------------------------------


def test_get_request_is_the_documented_v2c_message() -> None:
    """The request decodes to version 1 (v2c), the community, a GetRequest for sysDescr.0 with a NULL."""
    tag, message = ber_decode(snmp_get_request("s3cret", 4242))
    assert tag == TAG_SEQUENCE
    assert message == [
        (TAG_INTEGER, 1),
        (TAG_OCTETS, b"s3cret"),
        (
            TAG_GET,
            [
                (TAG_INTEGER, 4242),
                (TAG_INTEGER, 0),
                (TAG_INTEGER, 0),
                (TAG_SEQUENCE, [(TAG_SEQUENCE, [(TAG_OID, SYS_DESCR_OID), (TAG_NULL, None)])]),
            ],
        ),
    ]
    assert snmp_get_request("public", 1).hex() == (
        "302602010104067075626c6963a019020101020100020100300e300c06082b060102010101000500"
    )


def test_get_request_matches_what_net_snmps_snmpget_sends(loopback_host: str) -> None:
    """The same bytes as net-snmp's own ``snmpget -v2c`` for sysDescr.0, but for the request id."""
    snmpget = shutil.which("snmpget")
    if snmpget is None:
        pytest.skip("net-snmp's snmpget is not installed (apt-get install snmp)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((loopback_host, 0))
        sink.settimeout(10)
        port = sink.getsockname()[1]
        proc = subprocess.Popen(
            [
                snmpget,
                "-v2c",
                "-c",
                "fp-ward3",
                "-r",
                "0",
                "-t",
                "1",
                "-On",
                f"udp:{loopback_host}:{port}",
                "1.3.6.1.2.1.1.1.0",
            ],
            env={**os.environ, "MIBS": ""},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            theirs = sink.recv(4096)
        finally:
            proc.wait(timeout=15)
    _tag, message = ber_decode(theirs)
    assert isinstance(message, list)
    rid = message[2][1][0][1]  # type: ignore[index]
    assert snmp_get_request("fp-ward3", rid) == theirs


ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
oids = st.tuples(st.integers(0, 2), st.integers(0, 39)).flatmap(
    lambda head: st.lists(st.integers(0, 2**32), max_size=20).map(lambda rest: (*head, *rest))
)
leaf = st.one_of(
    st.tuples(st.just(TAG_INTEGER), ints),
    st.tuples(st.just(TAG_OCTETS), st.binary(max_size=300)),
    st.tuples(st.just(TAG_NULL), st.none()),
    st.tuples(st.just(TAG_OID), oids),
)
trees = st.recursive(
    leaf, lambda kids: st.tuples(st.just(TAG_SEQUENCE), st.lists(kids, max_size=5)), max_leaves=30
)


@given(trees)
def test_ber_round_trips(tree: tuple[int, object]) -> None:
    tag, value = tree
    data = ber_encode(tag, value)  # type: ignore[arg-type]
    if len(data) <= 4096:
        assert ber_decode(data) == (tag, value)


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_ber_decoder_gives_a_value_or_ber_error_for_any_bytes(data: bytes) -> None:
    with contextlib.suppress(BerError):
        ber_decode(data)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(0, 2**31 - 1))
def test_snmp_parser_never_raises_anything_else(data: bytes, rid: int) -> None:
    with contextlib.suppress(BerError):
        assert isinstance(parse_snmp_response(data, rid), str)


@given(st.integers(0, 300), st.binary(max_size=200))
def test_snmp_parser_survives_every_truncation_and_mutation_of_a_valid_answer(cut: int, noise: bytes) -> None:
    good = _snmp_response(77, SYS_DESCR.encode())
    assert parse_snmp_response(good, 77) == SYS_DESCR
    for data in (good[:cut], good[:cut] + noise, noise + good[cut:]):
        with contextlib.suppress(BerError):
            parse_snmp_response(data, 77)


def test_snmp_answers_that_do_not_match_are_refused() -> None:
    with pytest.raises(BerError, match="request"):
        parse_snmp_response(_snmp_response(5, b"x"), 6)
    with pytest.raises(BerError, match="error-status"):
        parse_snmp_response(_snmp_response(5, b"x", status=2), 5)
    with pytest.raises(BerError, match="no such object"):
        parse_snmp_response(_snmp_response(5, None), 5)
    with pytest.raises(BerError, match="indefinite"):
        ber_decode(b"\x30\x80\x00\x00")
    deep: tuple[int, object] = (TAG_NULL, None)
    for _ in range(10):
        deep = (TAG_SEQUENCE, [deep])
    with pytest.raises(BerError, match="nested deeper"):
        ber_decode(ber_encode(*deep))  # type: ignore[arg-type]


@given(st.binary(max_size=120), st.binary(min_size=8, max_size=8))
def test_ntp_and_ssdp_parsers_never_raise_anything_else(data: bytes, cookie: bytes) -> None:
    for parse in (lambda: parse_ntp_response(data, cookie), lambda: parse_ssdp_response(data)):
        with contextlib.suppress(BerError):
            parse()


def test_community_is_validated_with_the_field_named() -> None:
    for bad in ("", "x" * 256, "caf\u00e9", "a\nb"):
        with pytest.raises(ConfigError, match="snmp_community"):
            check_community(bad)


def test_fingerprints_from_udp_answers_feed_the_os_guess() -> None:
    from fragileprobe._udp import UdpResult

    snmp = fingerprint_udp(
        UdpResult("127.0.0.1", 161, "snmp", Outcome.OPEN, 0.01, fields=(("sys_descr", SYS_DESCR),))
    )
    assert snmp is not None
    assert (snmp.service, snmp.product, snmp.protocol) == ("snmp", "Linux", "udp")
    assert guess_os([snmp]).family == "generic unix"
    ssdp = fingerprint_udp(
        UdpResult(
            "127.0.0.1",
            1900,
            "ssdp",
            Outcome.OPEN,
            0.01,
            fields=(("server", "VxWorks/5.5 UPnP/1.0 InfusionHub/2.1"), ("st", "upnp:rootdevice")),
        )
    )
    assert ssdp is not None
    assert (ssdp.product, ssdp.version) == ("InfusionHub", "2.1")
    assert guess_os([ssdp]).family == "embedded"
    assert snmp.to_dict()["protocol"] == "udp"
    assert fingerprint_udp(UdpResult("127.0.0.1", 161, "snmp", Outcome.TIMEOUT, 1.0)) is None


# --- a real SNMP agent --------------------------------------------------------------------------------


@contextlib.contextmanager
def snmpd(host: str, port: int, community: str) -> Iterator[None]:
    """net-snmp's snmpd on ``host:port`` with a temporary config; stopped by its PID."""
    if not Path(SNMPD).exists():
        pytest.skip("net-snmp snmpd is not installed (apt-get install snmpd)")
    with tempfile.TemporaryDirectory(prefix="fp-snmpd-") as tmp:
        conf = Path(tmp) / "snmpd.conf"
        conf.write_text(
            f"agentAddress udp:{host}:{port}\nrocommunity {community} 127.0.0.0/8\nsysDescr {SYS_DESCR}\n"
        )
        env = {**os.environ, "SNMP_PERSISTENT_DIR": tmp, "MIBS": ""}
        proc = subprocess.Popen(
            [
                SNMPD,
                "-f",
                "-Lf",
                str(Path(tmp) / "log"),
                "-C",
                "-c",
                str(conf),
                "-I",
                "-ifTable,ifXTable,ipAddressTable",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_for_agent(host, port, community, proc):
                log = (Path(tmp) / "log").read_text(errors="replace")[-1500:]
                pytest.fail(f"snmpd did not answer within 15 s: {log}")
            yield
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def _wait_for_agent(host: str, port: int, community: str, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 15
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.connect((host, port))
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                s.send(snmp_get_request(community, 1))
                if s.recv(4096):
                    return True
            time.sleep(0.1)
    return False


async def test_snmp_sysdescr_from_a_real_net_snmp_agent(loopback_host: str) -> None:
    with snmpd(loopback_host, 16161, "fp-ward3"):
        res = await udp_probe(loopback_host, 16161, protocol="snmp", community="fp-ward3", timeout_s=2.0)
        wrong = await udp_probe(loopback_host, 16161, protocol="snmp", community="public", timeout_s=0.5)
    assert res.outcome is Outcome.OPEN, res
    assert res.field("sys_descr") == SYS_DESCR
    info = fingerprint_udp(res)
    assert info is not None
    assert info.product == "Linux"
    assert wrong.outcome is Outcome.TIMEOUT, "a wrong community gets no answer from net-snmp"


@pytest.mark.skipif(os.geteuid() != 0, reason="snmpd on the well-known port 161 needs root")
async def test_discovery_sends_one_snmp_request_and_uses_the_answer(loopback_host: str) -> None:
    """A live host with an SNMP agent on 161: discovery's asset carries the agent's sysDescr as a UDP
    service, and the OS guess uses it."""
    from fragileprobe._discovery_run import discover
    from fragileprobe._scope import Scope
    from fragileprobe.emulator import EmulatedDevice

    with snmpd(loopback_host, 161, "fp-ward3"):
        async with EmulatedDevice(loopback_host, model="workstation", seed=1, boot_delay_s=0.05) as dev:
            report = await discover(
                loopback_host,
                scope=Scope([loopback_host]),
                ports=[dev.port(p) for p in (135, 445)],
                udp_ports=[161],
                snmp_community="fp-ward3",
                banner_timeout_s=0.5,
            )
    (asset,) = report.assets
    udp = [s for s in asset.services if s.protocol == "udp"]
    assert [(s.port, s.service, s.product) for s in udp] == [(161, "snmp", "Linux")]
    assert any("udp/161 snmp" in n for n in asset.notes)


# --- NTP and SSDP, against servers written here -------------------------------------------------------


class _UdpServer:
    """A UDP server on a thread: answers each datagram with ``reply(datagram)`` (None: silence), counts."""

    def __init__(self, host: str, reply: object) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.received.append(data)
            answer = self.reply(data)  # type: ignore[operator]
            if answer is not None:
                self.sock.sendto(answer, peer)

    def __enter__(self) -> _UdpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _ntp_answer(request: bytes) -> bytes:
    out = bytearray(48)
    out[0] = (4 << 3) | 4  # VN 4, mode 4 (server)
    out[1] = 1
    out[12:16] = b"GPS\x00"
    out[24:32] = request[40:48]  # origin timestamp = the client's transmit timestamp
    return bytes(out)


async def test_ntp_and_ssdp_probes_send_one_datagram_and_parse_the_answer(loopback_host: str) -> None:
    ssdp_answer = (
        b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nST: upnp:rootdevice\r\n"
        b"SERVER: Linux/4.9 UPnP/1.1 PM-8000/3.2\r\nUSN: uuid:1::upnp:rootdevice\r\n\r\n"
    )
    with (
        _UdpServer(loopback_host, _ntp_answer) as ntp,
        _UdpServer(loopback_host, lambda _d: ssdp_answer) as ssdp,
        _UdpServer(loopback_host, lambda _d: None) as mute,
    ):
        n = await udp_probe(loopback_host, ntp.port, protocol="ntp", timeout_s=2.0)
        s = await udp_probe(loopback_host, ssdp.port, protocol="ssdp", timeout_s=2.0)
        m = await udp_probe(loopback_host, mute.port, protocol="ntp", timeout_s=0.3)
        await anyio.sleep(0.2)
    assert (n.outcome, n.field("stratum"), n.field("reference")) == (Outcome.OPEN, "1", "GPS")
    assert (s.outcome, s.field("server")) == (Outcome.OPEN, "Linux/4.9 UPnP/1.1 PM-8000/3.2")
    assert m.outcome is Outcome.TIMEOUT
    counts = [len(ntp.received), len(ssdp.received), len(mute.received)]
    assert counts == [1, 1, 1], "one datagram each, no retry"
    assert ntp.received[0] == ntp_request(ntp.received[0][40:48])
    assert ssdp.received[0] == ssdp_request(loopback_host)


async def test_an_ntp_answer_to_another_request_is_not_believed(loopback_host: str) -> None:
    def stale(request: bytes) -> bytes:
        return _ntp_answer(bytes(40) + b"\x01" * 8)

    with _UdpServer(loopback_host, stale) as srv:
        res = await udp_probe(loopback_host, srv.port, protocol="ntp", timeout_s=2.0)
    assert res.outcome is Outcome.PROTOCOL_ERROR
    assert "origin timestamp" in (res.error or "")


async def test_a_closed_udp_port_is_closed(loopback_host: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((loopback_host, 0))
        port = s.getsockname()[1]
    res = await udp_probe(loopback_host, port, protocol="snmp", timeout_s=2.0)
    assert res.outcome is Outcome.CLOSED  # ICMP port unreachable, reported on the connected socket


def test_a_port_without_a_probe_or_a_host_name_is_a_config_error() -> None:
    unknown = r"^udp_ports: must be a port with a known UDP probe .*, got 5353$"
    with pytest.raises(ConfigError, match=unknown) as info:
        anyio.run(lambda: udp_probe("127.0.0.1", 5353, timeout_s=0.1))
    assert info.value.field == "udp_ports"
    with pytest.raises(ConfigError, match=r"^host: must be an IP address literal, got 'localhost'$") as info:
        anyio.run(lambda: udp_probe("localhost", 161, timeout_s=0.1))
    assert info.value.field == "host"


def _snmp_response(rid: int, value: bytes | None, status: int = 0) -> bytes:
    val = (TAG_OCTETS, value) if value is not None else (0x80, None)
    return ber_encode(
        TAG_SEQUENCE,
        [
            (TAG_INTEGER, 1),
            (TAG_OCTETS, b"public"),
            (
                TAG_RESPONSE,
                [
                    (TAG_INTEGER, rid),
                    (TAG_INTEGER, status),
                    (TAG_INTEGER, 0),
                    (TAG_SEQUENCE, [(TAG_SEQUENCE, [(TAG_OID, SYS_DESCR_OID), val])]),
                ],
            ),
        ],
    )
