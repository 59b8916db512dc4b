"""Where a probe failed, as a field: the error-translation table (pure), the records' codec, and the phase
every probe sets (in virtual time, on the in-memory network)."""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import ProbeError, ProbeRefusedError, ProbeResetError, ProbeTimeoutError
from fragileprobe._probes import (
    HttpResult,
    Outcome,
    Phase,
    ProbeResult,
    grab_banner,
    http_get,
    open_stream,
    tcp_connect,
)
from fragileprobe._translate import TABLE, Operation, probe_error, translate
from fragileprobe.testing import DeviceSocket, FakeNetwork, http_ok, run_virtual

HOST = "127.0.0.9"


def _wrapped(cause: BaseException) -> anyio.BrokenResourceError:
    exc = anyio.BrokenResourceError()
    exc.__cause__ = cause
    return exc


# --- the table ------------------------------------------------------------------------------------------

ROWS = [
    (Operation.CONNECT, TimeoutError(), Outcome.TIMEOUT, ProbeTimeoutError),
    (Operation.CONNECT, OSError(errno.ETIMEDOUT, "Connection timed out"), Outcome.TIMEOUT, ProbeTimeoutError),
    (Operation.CONNECT, ConnectionRefusedError(errno.ECONNREFUSED, "x"), Outcome.CLOSED, ProbeRefusedError),
    (Operation.CONNECT, OSError(errno.EHOSTUNREACH, "No route to host"), Outcome.UNREACHABLE, ProbeError),
    (Operation.CONNECT, OSError(errno.EADDRNOTAVAIL, "no free port"), Outcome.UNREACHABLE, ProbeError),
    (Operation.CONNECT, OSError(errno.EMFILE, "Too many open files"), Outcome.UNREACHABLE, ProbeError),
    (Operation.READ, ConnectionResetError(errno.ECONNRESET, "reset"), Outcome.RESET, ProbeResetError),
    (Operation.READ, ConnectionAbortedError(), Outcome.RESET, ProbeResetError),
    (Operation.READ, anyio.BrokenResourceError(), Outcome.RESET, ProbeResetError),
    (Operation.READ, _wrapped(ConnectionResetError()), Outcome.RESET, ProbeResetError),
    (Operation.READ, _wrapped(TimeoutError()), Outcome.TIMEOUT, ProbeTimeoutError),
    (Operation.WRITE, BrokenPipeError(errno.EPIPE, "Broken pipe"), Outcome.RESET, ProbeResetError),
    (Operation.WRITE, ValueError("not a network error"), Outcome.UNREACHABLE, ProbeError),
]


@pytest.mark.parametrize(("operation", "exc", "outcome", "error"), ROWS, ids=[repr(r[1]) for r in ROWS])
def test_each_network_exception_translates_to_one_outcome_and_error_class(
    operation: Operation, exc: BaseException, outcome: Outcome, error: type[ProbeError]
) -> None:
    found = translate(operation, exc)
    assert (found.outcome, found.error) == (outcome, error)
    assert found.phase is (Phase.CONNECT if operation is Operation.CONNECT else Phase.EXCHANGE)
    raised = probe_error(operation, exc, "127.0.0.5", 23, timeout_s=2.0)
    assert type(raised) is error
    assert "127.0.0.5:23" in str(raised)


def test_probe_error_messages_name_the_target_and_the_operation() -> None:
    assert str(probe_error(Operation.CONNECT, TimeoutError(), "127.0.1.5", 23, timeout_s=2.0)) == (
        "connect to 127.0.1.5:23 timed out after 2 s"
    )
    assert str(probe_error(Operation.READ, ConnectionResetError(), "::1", 80)) == (
        "receive from [::1]:80: connection reset by the peer"
    )
    assert (
        str(
            probe_error(
                Operation.WRITE,
                OSError(errno.EHOSTUNREACH, "No route to host"),
                "127.0.0.1",
                21,
                verb="shut down",
            )
        )
        == "shut down 127.0.0.1:21 failed: no route to host"
    )


def test_every_operation_has_a_table_ending_in_a_catch_all_oserror_row() -> None:
    assert set(TABLE) == set(Operation)
    for rows in TABLE.values():
        assert rows[-1][0] is OSError


@given(code=st.integers(min_value=0, max_value=200), operation=st.sampled_from(list(Operation)))
def test_any_oserror_translates_without_raising(code: int, operation: Operation) -> None:
    found = translate(operation, OSError(code, "x"))
    assert isinstance(found.outcome, Outcome)
    assert issubclass(found.error, ProbeError)


# --- the records' codec ---------------------------------------------------------------------------------

phases = st.none() | st.sampled_from(list(Phase))
results = st.builds(
    ProbeResult,
    host=st.sampled_from(["127.0.0.1", "::1"]),
    port=st.integers(1, 65535),
    outcome=st.sampled_from(list(Outcome)),
    latency_s=st.floats(0, 10),
    data=st.binary(max_size=40),
    error=st.none() | st.text(max_size=20),
    started_at_s=st.floats(0, 1e6),
    duration_s=st.floats(0, 10),
    truncated=st.booleans(),
    phase=phases,
)
header_pairs = st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=3).map(tuple)
http_results = st.builds(
    HttpResult,
    host=st.just("127.0.0.1"),
    port=st.integers(1, 65535),
    outcome=st.sampled_from(list(Outcome)),
    latency_s=st.floats(0, 10),
    data=st.binary(max_size=40),
    error=st.none() | st.text(max_size=20),
    started_at_s=st.floats(0, 1e6),
    duration_s=st.floats(0, 10),
    phase=phases,
    status=st.none() | st.integers(100, 599),
    headers=header_pairs,
    body=st.binary(max_size=40),
    server=st.none() | st.text(max_size=8),
    title=st.none() | st.text(max_size=8),
)


@given(record=results)
def test_probe_result_round_trips_through_json(record: ProbeResult) -> None:
    assert ProbeResult.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@given(record=http_results)
def test_http_result_round_trips_through_json(record: HttpResult) -> None:
    assert HttpResult.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_a_dict_written_before_phase_existed_still_loads() -> None:
    old = {
        "host": "127.0.0.1",
        "port": 23,
        "outcome": "timeout",
        "latency_s": 2.0,
        "data": "",
        "error": "x",
        "started_at_s": 0.0,
        "duration_s": 2.0,
        "truncated": False,
    }
    record = ProbeResult.from_dict(old)
    assert record.phase is None
    assert record.outcome is Outcome.TIMEOUT
    assert record.to_dict() == {**old, "phase": None}


# --- every probe sets the phase -------------------------------------------------------------------------


async def _silent(sock: DeviceSocket) -> None:
    await sock.receive_until_closed()


async def _resets(sock: DeviceSocket) -> None:
    sock.abort()


async def _ssh(sock: DeviceSocket) -> None:
    await sock.send(b"SSH-2.0-OpenSSH_8.9\r\n")
    await sock.receive_until_closed()


class _Unreachable:
    async def connect(self, host: str, port: int) -> object:
        raise OSError(errno.EHOSTUNREACH, "No route to host")


Probe = Callable[..., Awaitable[ProbeResult]]
PROBES: list[Probe] = [tcp_connect, grab_banner, http_get]


def _phases(
    handler: Callable[[DeviceSocket], Awaitable[None]] | None, probes: list[Probe]
) -> list[tuple[Outcome, Phase | None]]:
    async def main() -> list[tuple[Outcome, Phase | None]]:
        async with FakeNetwork() as net:
            net.serve(HOST, 1, _silent)  # the host exists: other ports refuse
            if handler is not None:
                net.serve(HOST, 80, handler)
            out = []
            for probe in probes:
                reads = {} if probe is tcp_connect else {"read_timeout_s": 0.5}
                res = await probe(HOST, 80, timeout_s=1.0, network=net, **reads)
                out.append((res.outcome, res.phase))
            return out

    return run_virtual(main)


def test_a_silent_address_times_out_in_the_connect_phase() -> None:
    async def main() -> list[tuple[Outcome, Phase | None]]:
        async with FakeNetwork() as net:
            net.drop(HOST, 80)
            out = [
                (r.outcome, r.phase)
                for r in (
                    await tcp_connect(HOST, 80, timeout_s=1.0, network=net),
                    await grab_banner(HOST, 80, timeout_s=1.0, network=net),
                    await http_get(HOST, 80, timeout_s=1.0, network=net),
                )
            ]
            with pytest.raises(ProbeTimeoutError):
                await open_stream(HOST, 80, timeout_s=1.0, network=net)
            return out

    assert run_virtual(main) == [(Outcome.TIMEOUT, Phase.CONNECT)] * 3


def test_a_refused_port_is_closed_in_the_connect_phase() -> None:
    assert _phases(None, PROBES) == [(Outcome.CLOSED, Phase.CONNECT)] * 3


def test_an_unreachable_host_fails_in_the_connect_phase() -> None:
    async def main() -> ProbeResult:
        return await http_get(HOST, 80, network=_Unreachable())  # type: ignore[arg-type]

    res = run_virtual(main)
    assert (res.outcome, res.phase, res.error) == (Outcome.UNREACHABLE, Phase.CONNECT, "no route to host")


def test_an_accepting_service_that_stalls_times_out_in_the_exchange_phase() -> None:
    """The case error-text inspection used to tell apart: same outcome as a silent address, other phase."""
    assert _phases(_silent, [http_get]) == [(Outcome.TIMEOUT, Phase.EXCHANGE)]
    # A silent banner port is an OPEN port with nothing said: not a failure, no phase.
    assert _phases(_silent, [tcp_connect, grab_banner]) == [(Outcome.OPEN, None)] * 2


def test_a_reset_after_the_connect_is_in_the_exchange_phase() -> None:
    assert _phases(_resets, [grab_banner, http_get]) == [(Outcome.RESET, Phase.EXCHANGE)] * 2


def test_a_protocol_error_is_in_the_exchange_phase() -> None:
    assert _phases(_ssh, [http_get]) == [(Outcome.PROTOCOL_ERROR, Phase.EXCHANGE)]


def test_a_successful_probe_has_no_phase() -> None:
    assert _phases(http_ok, [tcp_connect, http_get]) == [(Outcome.OPEN, None)] * 2
