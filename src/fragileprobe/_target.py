"""The Target record: one device to probe, its ports and its sign of life.

A record, not a parser of scopes: it sits below :mod:`fragileprobe._scope` (which re-exports it for old
imports) and is checked against a scope only when a Guard opens, not here.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from fragileprobe import _validate
from fragileprobe._addresses import is_host_name, parse_address
from fragileprobe._errors import ConfigError
from fragileprobe._ports import PORT_SETS, parse_ports

if TYPE_CHECKING:
    from fragileprobe._heartbeat import Heartbeat

__all__ = ["Target"]


def _default_heartbeat() -> Heartbeat:
    # Lazily, and the one upward import the layering test allows: the default sign of life is a heartbeat,
    # a higher layer than this record (see ALLOWED in tests/test_layers.py).
    from fragileprobe._heartbeat import HttpHeartbeat

    return HttpHeartbeat()


@dataclass(frozen=True, slots=True)
class Target:
    """One device to probe: its address or name, the ports to look at and its sign of life.

    Args:
        host: an IP address or host name (checked against the scope when a Guard opens, not here).
        ports: a port spec (see :func:`~fragileprobe.parse_ports`); stored as a sorted tuple. Default: the
            pump set.
        heartbeat: how the watchdog asks "still alive?" (default: ``HttpHeartbeat()``, GET / on 8080).
        name: an optional label for logs and reports.

    Raises:
        ConfigError: an empty or malformed host, a bad port spec, or a heartbeat without ``beat``.
    """

    host: str
    _: KW_ONLY
    ports: tuple[int, ...] = PORT_SETS["pump"]
    heartbeat: Heartbeat = field(default_factory=_default_heartbeat)
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise _validate.fail("Target.host", "a non-empty string", self.host)
        host = self.host.strip()
        addr = parse_address(host)
        if addr is None and not is_host_name(host):
            raise _validate.fail("Target.host", "an IP address or a valid host name", host)
        object.__setattr__(self, "host", host if addr is None else str(addr))
        try:
            ports = parse_ports(self.ports)
        except ConfigError as exc:
            raise ConfigError(f"Target.ports: {exc}", field="Target.ports") from exc
        object.__setattr__(self, "ports", ports)
        if not callable(getattr(self.heartbeat, "beat", None)):
            raise _validate.fail("Target.heartbeat", "a heartbeat with a beat(host) method", self.heartbeat)
        if self.name is not None and not isinstance(self.name, str):
            raise _validate.fail("Target.name", "a string or None", self.name)

    @property
    def label(self) -> str:
        """The name if given, else the host: what logs and messages call this target."""
        return self.name or self.host
