"""The one error-translation table: network exceptions → (:class:`Outcome`, our :class:`ProbeError`).

The :mod:`~fragileprobe._net` seam raises what the socket API raises (``OSError`` subclasses, anyio's
``BrokenResourceError``). This module is the only place those become fragileprobe's vocabulary (refused,
reset, timed out, unreachable, after trio's): an :class:`~fragileprobe.Outcome` on a result record, or a
:class:`~fragileprobe.ProbeError` subclass to ``raise ... from exc``. One table per operation, as httpcore
keeps one ``exc_map`` per operation in ``httpcore/_backends/anyio.py``; the first matching row wins.

Why the rows say what they say:

* ``ConnectionRefusedError`` (ECONNREFUSED) is an RST answering our SYN (RFC 9293 3.10.7.3): the stack is
  alive and nothing listens. After the handshake the kernel reports a reset as ECONNRESET (or EPIPE once we
  wrote), never ECONNREFUSED; the exchange tables keep the row anyway so a network seam that raises it late
  is still told apart from an unreachable host.
* ``ETIMEDOUT`` from the kernel (SYN retries exhausted, RFC 6298 5.5) is the same fact as our own time bound
  expiring (``TimeoutError``).
* The unreachable errnos come from ICMP or the local stack (no route, no free local port: EADDRNOTAVAIL);
  any other ``OSError`` is reported the same way, as the network refusing, never as the device's answer.
* anyio wraps an ``OSError`` in ``BrokenResourceError``; the row applies to its cause when it has one.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio

from fragileprobe._errors import ProbeError, ProbeRefusedError, ProbeResetError, ProbeTimeoutError
from fragileprobe._results import Outcome, Phase

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Operation", "Translation", "describe", "hostport", "probe_error", "translate"]


class Operation(enum.Enum):
    """What we were doing when the exception came; its value is the verb of the error message."""

    CONNECT = "connect to"
    READ = "receive from"
    WRITE = "send to"

    @property
    def phase(self) -> Phase:
        """Where a failure of this operation sits (:class:`Phase`)."""
        return Phase.CONNECT if self is Operation.CONNECT else Phase.EXCHANGE


@dataclass(frozen=True, slots=True)
class Translation:
    """What one network exception means.

    Attributes:
        outcome: the result's :class:`Outcome`.
        error: the :class:`ProbeError` class to raise for a stream.
        phase: where the failure sits (from the operation).
    """

    outcome: Outcome
    error: type[ProbeError]
    phase: Phase


# A row matches an exception by its type, or by its errno when the key is an int.
_Row = tuple[type[BaseException] | int, Outcome, type[ProbeError]]

_TIMEOUT: Final[tuple[_Row, ...]] = (
    (TimeoutError, Outcome.TIMEOUT, ProbeTimeoutError),
    (errno.ETIMEDOUT, Outcome.TIMEOUT, ProbeTimeoutError),
)
_REFUSED: Final[tuple[_Row, ...]] = ((ConnectionRefusedError, Outcome.CLOSED, ProbeRefusedError),)
_RESET: Final[tuple[_Row, ...]] = (
    (ConnectionResetError, Outcome.RESET, ProbeResetError),
    (ConnectionAbortedError, Outcome.RESET, ProbeResetError),
    (BrokenPipeError, Outcome.RESET, ProbeResetError),
    # Broken without an OS error behind it: the stream's peer went away mid-exchange.
    (anyio.BrokenResourceError, Outcome.RESET, ProbeResetError),
)
_UNREACHABLE: Final[tuple[_Row, ...]] = (
    (errno.EHOSTUNREACH, Outcome.UNREACHABLE, ProbeError),
    (errno.ENETUNREACH, Outcome.UNREACHABLE, ProbeError),
    (errno.EHOSTDOWN, Outcome.UNREACHABLE, ProbeError),
    (errno.ENETDOWN, Outcome.UNREACHABLE, ProbeError),
    (errno.EADDRNOTAVAIL, Outcome.UNREACHABLE, ProbeError),
    (OSError, Outcome.UNREACHABLE, ProbeError),
)

TABLE: Final[Mapping[Operation, tuple[_Row, ...]]] = {
    Operation.CONNECT: (*_TIMEOUT, *_REFUSED, *_RESET, *_UNREACHABLE),
    Operation.READ: (*_TIMEOUT, *_REFUSED, *_RESET, *_UNREACHABLE),
    Operation.WRITE: (*_TIMEOUT, *_REFUSED, *_RESET, *_UNREACHABLE),
}
# What an exception no row matches means (a seam raising something outside the socket API).
_FALLBACK: Final = (Outcome.UNREACHABLE, ProbeError)


def _root(exc: BaseException) -> BaseException:
    """The exception a row is matched against: anyio's BrokenResourceError stands for its OS cause."""
    cause = exc.__cause__
    if not isinstance(exc, anyio.BrokenResourceError) or cause is None:
        return exc
    return exc if isinstance(cause, anyio.BrokenResourceError) else cause


def _matches(key: type[BaseException] | int, exc: BaseException) -> bool:
    if isinstance(key, int):
        return isinstance(exc, OSError) and exc.errno == key
    return isinstance(exc, key)


def translate(operation: Operation, exc: BaseException) -> Translation:
    """What ``exc``, raised while doing ``operation``, means (the first matching row of its table)."""
    root = _root(exc)
    for key, outcome, error in TABLE[operation]:
        if _matches(key, root):
            return Translation(outcome, error, operation.phase)
    return Translation(*_FALLBACK, operation.phase)


def describe(exc: BaseException) -> str:
    """A short lower-case reason for ``exc`` (the OS's text when there is one), for a result's ``error``."""
    root = _root(exc)
    if isinstance(root, OSError) and root.strerror:
        return root.strerror.lower()
    return str(root) or type(root).__name__


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_error(
    operation: Operation, exc: BaseException, host: str, port: int, *, timeout_s: float = 0.0, verb: str = ""
) -> ProbeError:
    """The fragileprobe exception for ``exc`` (callers ``raise probe_error(...) from exc``).

    Args:
        operation: What was being done.
        exc: The network exception.
        host: The peer's address, for the message.
        port: The peer's port, for the message.
        timeout_s: The bound that expired, for a timeout's message.
        verb: The message's verb when it is not the operation's (``"shut down"``).
    """
    found = translate(operation, exc)
    where = f"{verb or operation.value} {hostport(host, port)}"
    if found.outcome is Outcome.TIMEOUT:
        return found.error(f"{where} timed out after {timeout_s:g} s")
    if found.outcome is Outcome.CLOSED:
        return found.error(f"{where} refused (nothing listening)")
    if found.outcome is Outcome.RESET:
        return found.error(f"{where}: connection reset by the peer")
    return found.error(f"{where} failed: {describe(exc)}")
