"""The probe records: Outcome, Phase, ProbeKind, ProbeResult and HttpResult (pure data, no I/O).

A failed result says *where* it failed in :attr:`ProbeResult.phase`, so callers tell a
silent address (the connect timed out) from a service that accepted and then said nothing (the exchange
timed out) by a field, never by reading the error text.

Outcomes:

==================  ==========================================================================================
``OPEN``            connected (and, for ``http_get``, a well-formed status line and headers arrived)
``CLOSED``          the connect was refused (RST answering our SYN): nothing listens there
``TIMEOUT``         no answer in time: a silent/filtered port, or an HTTP response whose head never completed
``RESET``           an established connection was reset by the peer
``UNREACHABLE``     the network or the local stack refused (no route, host unreachable, no free port)
``PROTOCOL_ERROR``  the peer answered, but not with valid HTTP (bad status line, head over its cap,
                    malformed or endless chunked framing, closed before any response)
``CANCELLED``       cancelled from outside (the Guard records this when its watchdog cancels)
==================  ==========================================================================================

Each record round-trips through :meth:`ProbeResult.to_dict` / :meth:`ProbeResult.from_dict` (JSON-safe
values: enums by value, bytes as hex); the codec is generated from the dataclass fields, so a new field is
carried without a second list to keep in step. A dict written before a field existed loads with that
field's default (``phase`` → ``None``).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["HttpResult", "Outcome", "Phase", "ProbeKind", "ProbeResult"]

_R = TypeVar("_R", bound="ProbeResult")


class Outcome(enum.Enum):
    """What a probe observed (see the table in the module docstring)."""

    OPEN = "open"
    CLOSED = "closed"
    TIMEOUT = "timeout"
    RESET = "reset"
    UNREACHABLE = "unreachable"
    PROTOCOL_ERROR = "protocol_error"
    CANCELLED = "cancelled"


class ProbeKind(enum.Enum):
    """How a port is probed (discovery decides it from the well-known port)."""

    CONNECT = "connect"  # connect + close, nothing read (printer and client-speaks-first ports)
    HTTP = "http"  # one bounded GET /
    BANNER = "banner"  # connect, read what the service says first


class Phase(enum.Enum):
    """Where a failed probe failed.

    ``CONNECT``: the TCP connect itself timed out, was refused or was unreachable; the device never held a
    session from us. ``EXCHANGE``: the connection was established, then the exchange failed (a read timed
    out, the peer reset, the answer was not the protocol). A TIMEOUT in ``CONNECT`` means "nothing there";
    in ``EXCHANGE`` it means "something accepted and then stalled".
    """

    CONNECT = "connect"
    EXCHANGE = "exchange"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's record.

    Attributes:
        host: the address probed.
        port: the TCP port probed.
        outcome: what happened (see :class:`Outcome`).
        latency_s: seconds from starting the connect until it completed or failed.
        data: the bytes read (banner, or the HTTP head for :class:`HttpResult`), at most the byte cap.
        error: why the probe ended abnormally, or a note (e.g. the deadline cut a banner short); else None.
        started_at_s: the event loop's clock when the probe started (``anyio.current_time()``; on asyncio
            that is ``time.monotonic()``, the emulator's clock too).
        duration_s: seconds from start until the socket was closed.
        truncated: reading stopped at the byte cap; the peer had more to say.
        phase: where a failed probe failed (:class:`Phase`); ``None`` when the outcome is OPEN, or when the
            probe never reached the network (the Guard cancelled it first).
    """

    host: str
    port: int
    outcome: Outcome
    latency_s: float
    data: bytes
    error: str | None
    started_at_s: float
    duration_s: float
    truncated: bool = False
    phase: Phase | None = None

    @property
    def ok(self) -> bool:
        """True when the outcome is OPEN."""
        return self.outcome is Outcome.OPEN

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-safe values (enums by value, bytes as hex, header pairs as lists)."""
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
        """Rebuild a record from :meth:`to_dict`'s output; fields missing from ``data`` take their defaults.

        Raises:
            ValueError: a value does not decode (an unknown outcome or phase, bad hex).
            TypeError: a field without a default is missing.
        """
        names = [f.name for f in dataclasses.fields(cls) if f.name in data]
        return cls(**{name: _DECODERS.get(name, _same)(data[name]) for name in names})


@dataclass(frozen=True, slots=True)
class HttpResult(ProbeResult):
    """An :func:`~fragileprobe.http_get` record: a :class:`ProbeResult` plus the parsed response.

    ``data`` holds the raw head (status line and headers); ``body`` the first bytes of the decoded body.
    Header names are lower-cased; values are decoded as Latin-1 (RFC 9110 5.5).
    """

    status: int | None = None
    reason: str = ""
    http_version: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    server: str | None = None
    title: str | None = None

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


def _encode(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def _same(value: Any) -> Any:
    return value


def _phase(value: str | None) -> Phase | None:
    return None if value is None else Phase(value)


def _headers(value: list[list[str]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(text)) for name, text in value)


# How each field that is not JSON-native comes back; every other field is taken as it is.
_DECODERS: dict[str, Any] = {
    "outcome": Outcome,
    "phase": _phase,
    "data": bytes.fromhex,
    "body": bytes.fromhex,
    "headers": _headers,
}
