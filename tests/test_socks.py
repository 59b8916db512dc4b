"""The sans-IO SOCKS5 machine: transcripts of RFC 1928/1929 handshakes, and hypothesis properties (any bytes
in, whole or one byte at a time: a typed event or SocksProtocolError out, the same either way)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe import FragileProbeError
from fragileprobe._socks import (
    MAX_BUFFER_BYTES,
    AuthMethod,
    AuthRequest,
    ConnectRequest,
    Greeting,
    NeedData,
    Reply,
    RequestRefused,
    SocksProtocolError,
    SocksServer,
    State,
    encode_reply,
)


def _request(cmd: int, atyp: int, addr: bytes, port: int) -> bytes:
    return bytes((5, cmd, 0, atyp)) + addr + struct.pack("!H", port)


def _drive(chunks: list[bytes], *, auth_ok: bool = True, method: int = AuthMethod.NO_AUTH) -> list[object]:
    """Feed ``chunks``; answer every decision; return events and bytes sent, or the error, in order."""
    machine = SocksServer()
    out: list[object] = []
    try:
        for chunk in chunks:
            machine.receive_data(chunk)
            while True:
                event = machine.next_event()
                if isinstance(event, NeedData):
                    break
                out.append(event)
                if isinstance(event, Greeting):
                    out.append(machine.select_method(method))
                elif isinstance(event, AuthRequest):
                    out.append(machine.auth_result(auth_ok))
                else:
                    code = Reply.SUCCEEDED if isinstance(event, ConnectRequest) else event.reply
                    out.append(machine.reply(code))
                if machine.state in (State.CLOSED, State.RELAY):
                    return out
    except SocksProtocolError as exc:
        out.append(("error", str(exc), exc.reply))
    return out


# --- transcripts ------------------------------------------------------------------------------------------


def test_connect_ipv4_without_auth() -> None:
    machine = SocksServer()
    machine.receive_data(b"\x05\x01\x00")
    assert machine.next_event() == Greeting((0,))
    assert machine.select_method(AuthMethod.NO_AUTH) == b"\x05\x00"
    machine.receive_data(_request(1, 1, bytes((10, 0, 0, 5)), 502) + b"early")
    assert machine.next_event() == ConnectRequest("10.0.0.5", 502)
    assert machine.reply(Reply.SUCCEEDED, "127.0.0.1", 4000) == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x0f\xa0"
    assert machine.state is State.RELAY
    assert machine.trailing_data() == b"early"


def test_connect_ipv6_with_rfc1929_login() -> None:
    machine = SocksServer()
    machine.receive_data(b"\x05\x02\x00\x02")
    assert machine.next_event() == Greeting((0, 2))
    assert machine.select_method(AuthMethod.USERNAME_PASSWORD) == b"\x05\x02"
    machine.receive_data(b"\x01\x05alice\x06s3cret")
    event = machine.next_event()
    assert event == AuthRequest(b"alice", b"s3cret")
    assert "s3cret" not in repr(event)
    assert machine.auth_result(True) == b"\x01\x00"
    machine.receive_data(_request(1, 4, ipaddress.ip_address("fd00::7").packed, 80))
    assert machine.next_event() == ConnectRequest("fd00::7", 80)


def test_failed_login_closes() -> None:
    machine = SocksServer()
    machine.receive_data(b"\x05\x01\x02")
    machine.next_event()
    machine.select_method(AuthMethod.USERNAME_PASSWORD)
    machine.receive_data(b"\x01\x01a\x01b")
    machine.next_event()
    assert machine.auth_result(False) == b"\x01\x01"
    assert machine.state is State.CLOSED
    with pytest.raises(SocksProtocolError):
        machine.receive_data(b"\x05")


def test_no_acceptable_method_closes() -> None:
    machine = SocksServer()
    machine.receive_data(b"\x05\x01\x01")  # GSSAPI only
    machine.next_event()
    assert machine.select_method(AuthMethod.NO_ACCEPTABLE) == b"\x05\xff"
    assert machine.state is State.CLOSED


@pytest.mark.parametrize(("cmd", "reason"), [(2, "bind"), (3, "udp_associate"), (9, "command_0x09")])
def test_bind_udp_and_unknown_commands_get_command_not_supported(cmd: int, reason: str) -> None:
    out = _drive([b"\x05\x01\x00" + _request(cmd, 1, bytes(4), 0)])
    refused = out[2]
    assert refused == RequestRefused(Reply.COMMAND_NOT_SUPPORTED, reason, "0.0.0.0", 0)
    assert out[3] == b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"


def test_domain_names_get_not_allowed_by_ruleset() -> None:
    out = _drive([b"\x05\x01\x00" + _request(1, 3, b"\x0bexample.org", 443)])
    assert out[2] == RequestRefused(Reply.NOT_ALLOWED, "domain_name", "example.org", 443)
    assert out[3][:2] == b"\x05\x02"


def test_unknown_address_type_is_a_protocol_error_with_0x08() -> None:
    out = _drive([b"\x05\x01\x00" + bytes((5, 1, 0, 7, 1, 2))])
    assert out[-1][0] == "error"  # type: ignore[index]
    assert out[-1][2][:2] == b"\x05\x08"  # type: ignore[index]


def test_socks4_and_http_clients_get_nothing() -> None:
    for first in (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"GET / HTTP/1.1\r\n"):
        out = _drive([first])
        assert out == [("error", out[0][1], b"")]  # type: ignore[index]


def test_buffer_cap_is_enforced_before_the_reply() -> None:
    machine = SocksServer()
    machine.receive_data(b"\x05\x01\x00")
    machine.next_event()
    machine.select_method(AuthMethod.NO_AUTH)
    machine.receive_data(_request(1, 1, bytes(4), 1))
    machine.next_event()
    with pytest.raises(SocksProtocolError, match="more than 4096 bytes") as info:
        machine.receive_data(b"x" * (MAX_BUFFER_BYTES + 1))
    assert info.value.reply[:2] == b"\x05\x01"


def test_answers_out_of_turn_are_caller_bugs() -> None:
    machine = SocksServer()
    with pytest.raises(RuntimeError):
        machine.reply(Reply.SUCCEEDED)


def test_encode_reply_ipv6() -> None:
    expected = b"\x05\x05\x00\x04" + bytes(15) + b"\x01\x00\x01"
    assert encode_reply(Reply.CONNECTION_REFUSED, "::1", 1) == expected


# --- properties -------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=600),
    st.sampled_from([AuthMethod.NO_AUTH, AuthMethod.USERNAME_PASSWORD]),
    st.booleans(),
)
def test_any_bytes_give_typed_events_or_our_error_and_chunking_changes_nothing(
    data: bytes, method: int, auth_ok: bool
) -> None:
    """Whole, or one byte at a time: the same events, answers and error; never another exception."""
    whole = _drive([data], method=method, auth_ok=auth_ok)
    bytewise = _drive([data[i : i + 1] for i in range(len(data))] or [b""], method=method, auth_ok=auth_ok)
    assert whole == bytewise
    for item in whole:
        assert isinstance(item, Greeting | AuthRequest | ConnectRequest | RequestRefused | bytes | tuple)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_prefixed_garbage_after_a_valid_greeting_never_escapes_the_hierarchy(tail: bytes) -> None:
    machine = SocksServer()
    machine.receive_data(b"\x05\x01\x00")
    machine.next_event()
    machine.select_method(AuthMethod.NO_AUTH)
    error: FragileProbeError | None = None
    try:
        for i in range(len(tail)):
            machine.receive_data(tail[i : i + 1])
            event = machine.next_event()
            if not isinstance(event, NeedData):
                assert isinstance(event, ConnectRequest | RequestRefused)
                break
    except FragileProbeError as exc:
        error = exc
    assert error is None or isinstance(error, SocksProtocolError)


addresses = st.one_of(
    st.ip_addresses(v=4).map(lambda a: (1, a.packed, str(a))),
    st.ip_addresses(v=6).map(lambda a: (4, a.packed, str(a))),
)


@settings(max_examples=300, deadline=None)
@given(
    methods=st.lists(st.integers(0, 255), min_size=1, max_size=255).map(lambda m: [*m, 0]),
    login=st.none() | st.tuples(st.binary(min_size=1, max_size=255), st.binary(max_size=255)),
    address=addresses,
    port=st.integers(0, 65535),
    cmd=st.sampled_from([1, 2, 3]),
    early=st.binary(max_size=200),
    split=st.integers(0, 2000),
)
def test_every_valid_handshake_parses_exactly(
    methods: list[int],
    login: tuple[bytes, bytes] | None,
    address: tuple[int, bytes, str],
    port: int,
    cmd: int,
    early: bytes,
    split: int,
) -> None:
    """A well-formed greeting, optional login and request, pipelined and cut anywhere, gives exactly the
    request that was sent, and the early data back untouched."""
    atyp, packed, text = address
    methods = [*methods, 2] if login is not None else methods
    wire = bytes((5, len(methods[:255]))) + bytes(methods[:255])
    if login is not None:
        wire += bytes((1, len(login[0]))) + login[0] + bytes((len(login[1]),)) + login[1]
    wire += _request(cmd, atyp, packed, port) + early
    cut = split % (len(wire) + 1)
    machine = SocksServer()
    pending = [wire[:cut], wire[cut:]]
    seen: list[object] = []
    while machine.state not in (State.RELAY, State.CLOSED):
        event = machine.next_event()
        if isinstance(event, NeedData):
            assert pending, "the whole handshake was fed"
            machine.receive_data(pending.pop(0))
            continue
        seen.append(event)
        if isinstance(event, Greeting):
            machine.select_method(AuthMethod.USERNAME_PASSWORD if login else AuthMethod.NO_AUTH)
        elif isinstance(event, AuthRequest):
            assert (event.username, event.password) == login
            machine.auth_result(True)
        elif isinstance(event, ConnectRequest):
            assert (event.host, event.port) == (text, port)
            machine.reply(Reply.SUCCEEDED)
        else:
            assert event.reply == Reply.COMMAND_NOT_SUPPORTED
            assert cmd != 1
            machine.reply(event.reply)
    if machine.state is State.RELAY:
        assert cmd == 1
        rest = b"".join(pending)
        assert machine.trailing_data() + rest == early
