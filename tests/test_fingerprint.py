"""Pure fingerprinting: banners and HTTP responses in, typed records out, never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe._fingerprint import (
    MAX_FIELD_CHARS,
    OS_FAMILIES,
    OsGuess,
    ServiceInfo,
    fingerprint_http,
    fingerprint_service,
    guess_os,
    model_key,
    model_key_digest,
    parse_http_response,
    strip_telnet_negotiation,
)

IAC, WILL, DO, SB, SE = 255, 251, 253, 250, 240


@pytest.mark.parametrize(
    ("port", "banner", "service", "product", "version"),
    [
        (21, b"220 (vsFTPd 3.0.3)\r\n", "ftp", "vsFTPd", "3.0.3"),
        (21, b"220 ProFTPD 1.3.5e Server (Debian) [::ffff:10.1.2.3]\r\n", "ftp", "ProFTPD", "1.3.5e"),
        (21, b"220 Microsoft FTP Service\r\n", "ftp", "Microsoft FTP Service", None),
        (10021, b"220 InfuCorp FTP server v1.2 ready\r\n", "ftp", "InfuCorp", "1.2"),
        (22, b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.1\r\n", "ssh", "OpenSSH", "8.9p1"),
        (2222, b"SSH-2.0-dropbear_2019.78\r\n", "ssh", "dropbear", "2019.78"),
        (25, b"220 mail.example ESMTP Postfix (Debian)\r\n", "smtp", "Postfix", None),
        (5900, b"RFB 003.008\n", "vnc", "RFB", "003.008"),
        (3306, b"\x4a\x00\x00\x00\x0a8.0.23\x00rest-of-greeting", "mysql", "MySQL", "8.0.23"),
        (3306, b"\x4a\x00\x00\x00\x0a5.5.5-10.3.27-MariaDB\x00xyz", "mysql", "MariaDB", "10.3.27"),
        (445, b"", "smb", None, None),
        (3389, b"", "rdp", None, None),
        (1433, b"", "mssql", None, None),
        (9100, b"", "jetdirect", None, None),
        (515, b"", "lpd", None, None),
        (
            5432,
            b"E\x00\x00\x00\x50SFATAL\x00C28000\x00Mno pg_hba.conf entry\x00\x00",
            "postgresql",
            "PostgreSQL",
            None,
        ),
        (
            2575,
            b"\x0bMSH|^~\\&|PUMPGW|WARD3|HIS|H|20260101||ACK|1|P|2.5\r\x1c\r",
            "hl7-mllp",
            "PUMPGW",
            "2.5",
        ),
        (104, b"\x02\x00\x00\x00\x00\x10" + b"\x00" * 16, "dicom", None, None),
        (
            80,
            b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.41 (Ubuntu)\r\n\r\n<title>It works</title>",
            "http",
            "Apache",
            "2.4.41",
        ),
        (631, b"HTTP/1.1 200 OK\r\nServer: CUPS/2.4 IPP/2.1\r\n\r\n", "ipp", "CUPS", "2.4"),
    ],
)
def test_fingerprint_service_recognises_common_hospital_services(
    port: int, banner: bytes, service: str, product: str | None, version: str | None
) -> None:
    """Known banners (and silent well-known ports) give the right service, product and version."""
    info = fingerprint_service(port, banner)
    assert (info.service, info.product, info.version) == (service, product, version)
    assert info.port == port


def test_telnet_negotiation_is_stripped_and_recorded() -> None:
    """IAC WILL/DO/SB sequences are removed from the text and listed in the detail."""
    raw = bytes([IAC, WILL, 1, IAC, WILL, 3, IAC, DO, 24, IAC, SB, 24, 1, IAC, SE]) + b"pump-07 login: "
    payload, seen = strip_telnet_negotiation(raw)
    assert payload == b"pump-07 login: "
    assert seen == ("WILL echo", "WILL sga", "DO ttype")
    info = fingerprint_service(10023, raw)  # offset port: recognised by the IAC bytes, not the number
    assert info.service == "telnet"
    assert info.detail is not None
    assert "login prompt" in info.detail
    assert "WILL echo" in info.detail


def test_telnet_doubled_iac_is_a_literal_byte() -> None:
    assert strip_telnet_negotiation(bytes([65, IAC, IAC, 66]))[0] == bytes([65, IAC, 66])


def test_fingerprint_http_reads_server_status_and_title() -> None:
    info = fingerprint_http(
        401,
        [("Server", "GoAhead-Webs/2.5"), ("X", "y")],
        b"<html><TITLE>Pump &amp; Co</TITLE></html>",
        port=8080,
    )
    assert info == ServiceInfo(
        port=8080,
        service="http",
        product="GoAhead-Webs",
        version="2.5",
        detail="status 401",
        title="Pump & Co",
        server="GoAhead-Webs/2.5",
    )


def test_http_response_parsing_tolerates_a_malformed_status_line() -> None:
    parsed = parse_http_response(b"HTTP/1.1 OK-ish\r\nServer: x\r\n\r\nbody")
    assert parsed is not None
    status, headers, body = parsed
    assert status is None
    assert headers == (("Server", "x"),)
    assert body == b"body"
    assert fingerprint_service(80, b"HTTP/1.1 OK-ish\r\nServer: x\r\n\r\n").detail == "malformed status line"


@pytest.mark.parametrize(
    ("services", "family"),
    [
        (
            [ServiceInfo(22, "ssh", "OpenSSH", "8.9p1"), ServiceInfo(21, "ftp", "vsFTPd", "3.0.3")],
            "generic unix",
        ),
        (
            [ServiceInfo(445, "smb"), ServiceInfo(3389, "rdp"), ServiceInfo(80, "http", "Microsoft-IIS")],
            "windows",
        ),
        ([ServiceInfo(9100, "jetdirect"), ServiceInfo(515, "lpd")], "embedded"),
        ([ServiceInfo(80, "http", "Allegro-Software-RomPager", "4.0")], "embedded"),
        ([ServiceInfo(12345, "unknown")], "unknown"),
        ([], "unknown"),
    ],
)
def test_guess_os_families(services: list[ServiceInfo], family: str) -> None:
    guess = guess_os(services)
    assert guess.family == family
    assert (guess.evidence != ()) == (family != "unknown")


def test_guess_os_tie_is_unknown_with_the_tie_as_evidence() -> None:
    guess = guess_os([ServiceInfo(22, "ssh", "OpenSSH", "8.9"), ServiceInfo(445, "smb")])
    assert guess.family == "unknown"
    assert any(e.startswith("tie:") for e in guess.evidence)


# --- model_key --------------------------------------------------------------------------------------------


def _pump_banners(serial: int, host: str, ip: str) -> dict[int, bytes]:
    return {
        21: f"220 InfuCorp FTP v1.2 ready on {host} [{ip}] SN {serial}\r\n".encode(),
        22: b"SSH-2.0-OpenSSH_7.4\r\n",
        23: bytes([IAC, WILL, 1]) + f"{host} login: ".encode(),
    }


def test_model_key_ignores_serials_host_names_and_addresses() -> None:
    """Two devices of one model (different serial, host name, IP, MAC) get the same key."""
    a = model_key(
        open_ports=[21, 22, 23, 8080],
        banners=_pump_banners(1234, "pump-07", "10.0.0.7"),
        server_header="InfuStar/2.1",
    )
    b = model_key(
        open_ports=[8080, 23, 22, 21, 21],
        banners=_pump_banners(99871, "icu-pump-99", "10.9.0.9"),
        server_header="InfuStar/2.1",
    )
    assert a == b
    assert a.startswith("infustar-")


def test_model_key_separates_models() -> None:
    """Another port set, product version or web server gives another key."""
    ports = [21, 22, 23, 8080]
    banners = _pump_banners(1, "p", "10.0.0.1")
    key = model_key(open_ports=ports, banners=banners, server_header="InfuStar/2.1")
    assert model_key(open_ports=ports, banners=banners, server_header="InfuStar/2.2") != key
    assert model_key(open_ports=[21, 22, 23], banners=banners, server_header="InfuStar/2.1") != key
    other = {**banners, 22: b"SSH-2.0-OpenSSH_8.0\r\n"}
    assert model_key(open_ports=ports, banners=other, server_header="InfuStar/2.1") != key


def test_model_key_name_is_only_the_readable_prefix() -> None:
    """A user-given name changes the slug, not the digest, so discovery still matches the profile."""
    plain = model_key(open_ports=[22, 8080], banners={22: b"SSH-2.0-OpenSSH_7.4"})
    named = model_key(open_ports=[22, 8080], banners={22: b"SSH-2.0-OpenSSH_7.4"}, name="Ward 3 Pump!")
    assert named.startswith("ward-3-pump-")
    assert model_key_digest(named) == model_key_digest(plain)


def test_model_key_treats_empty_and_http_banners_on_a_port_alike() -> None:
    """A caller that read nothing on 8080 and one that sent GET / compute the same key."""
    a = model_key(open_ports=[8080], banners={}, server_header="lighttpd/1.4")
    b = model_key(
        open_ports=[8080],
        banners={8080: b"HTTP/1.1 200 OK\r\nServer: lighttpd/1.4\r\n\r\n"},
        server_header="lighttpd/1.4",
    )
    assert a == b


@settings(max_examples=300, deadline=None)
@given(port=st.integers(min_value=1, max_value=65535), banner=st.binary(max_size=2048))
def test_fingerprint_service_never_raises_on_junk(port: int, banner: bytes) -> None:
    """Any bytes on any port give a ServiceInfo with bounded fields."""
    info = fingerprint_service(port, banner)
    assert isinstance(info, ServiceInfo)
    for value in (info.product, info.version, info.detail, info.title):
        assert value is None or len(value) <= MAX_FIELD_CHARS


_PREFIXES = [
    b"",
    b"HTTP/1.1 ",
    b"SSH-2.0-",
    b"220 ",
    b"\xff\xfb",
    b"\x4a\x00\x00\x00\x0a",
    b"E\x00\x00",
    b"\x0bMSH|",
    b"RFB ",
    b"\xffSMB",
    b"\x03\x00",
]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(_PREFIXES),
    tail=st.binary(max_size=1024),
    port=st.sampled_from([21, 22, 23, 80, 104, 445, 2575, 3306, 3389, 5432, 8080, 9100, 40000]),
)
def test_fingerprint_service_never_raises_on_junk_that_starts_like_a_protocol(
    prefix: bytes, tail: bytes, port: int
) -> None:
    assert isinstance(fingerprint_service(port, prefix + tail), ServiceInfo)


@settings(max_examples=200, deadline=None)
@given(
    status=st.one_of(st.none(), st.integers()),
    headers=st.lists(st.tuples(st.text(), st.text()), max_size=20),
    body=st.binary(max_size=2048),
)
def test_fingerprint_http_never_raises(
    status: int | None, headers: list[tuple[str, str]], body: bytes
) -> None:
    assert isinstance(fingerprint_http(status, headers, body), ServiceInfo)


@settings(max_examples=200, deadline=None)
@given(
    banners=st.dictionaries(st.integers(1, 65535), st.binary(max_size=512), max_size=8),
    server=st.one_of(st.none(), st.text(max_size=200)),
    name=st.one_of(st.none(), st.text(max_size=50)),
)
def test_model_key_is_total_deterministic_and_readable(
    banners: dict[int, bytes], server: str | None, name: str | None
) -> None:
    """Any input gives a key "<slug>-<12 hex>", the same key twice."""
    key = model_key(open_ports=banners, banners=banners, server_header=server, name=name)
    assert key == model_key(open_ports=list(banners)[::-1], banners=banners, server_header=server, name=name)
    slug, _, digest = key.rpartition("-")
    assert len(digest) == 12
    assert all(c in "0123456789abcdef" for c in digest)
    assert slug
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in slug)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(
            ServiceInfo,
            port=st.integers(1, 65535),
            service=st.text(max_size=10),
            product=st.one_of(st.none(), st.text(max_size=30)),
            detail=st.one_of(st.none(), st.text(max_size=60)),
        ),
        max_size=10,
    )
)
def test_guess_os_never_raises(services: list[ServiceInfo]) -> None:
    guess = guess_os(services)
    assert isinstance(guess, OsGuess)
    assert guess.family in OS_FAMILIES


def test_huge_inputs_are_capped() -> None:
    """A megabyte flood is parsed from its capped head, quickly, to a bounded record."""
    flood = b"220 " + b"A" * 5_000_000
    info = fingerprint_service(21, flood)
    assert info.service == "ftp"
    assert info.detail is not None
    assert len(info.detail) <= MAX_FIELD_CHARS
    http = b"HTTP/1.1 200 OK\r\n" + b"X-Junk: y\r\n" * 500_000
    assert fingerprint_service(80, http).service == "http"
    key = model_key(open_ports=[21], banners={21: flood}, server_header="S" * 1_000_000)
    assert len(key) < 50


def test_model_server_header_prefers_8080_then_the_lowest_web_port() -> None:
    """Discovery and characterization name a model by the same web server's header."""
    from fragileprobe._fingerprint import model_server_header

    assert model_server_header({}) is None
    assert model_server_header({80: "a", 8080: "b", 443: "c"}) == "b"
    assert model_server_header({631: "ipp", 80: "web"}) == "web"
