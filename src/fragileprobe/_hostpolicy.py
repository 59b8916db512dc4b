"""What discovery does next to one host, decided without I/O (``_discovery_run`` does the I/O).

The rules, in the order they apply:

1. **Liveness first.** A host starts with a few likely ports (:class:`LivenessPlanner`: the ports most often
   open on the hosts found so far in this run, then a fixed ranking). Any answer there, open *or* refused
   (RST), makes the host alive and it is worked on every port. If every liveness port times out at connect,
   the address is silent and costs nothing more: one or two bounded timeouts, not one per port.
2. **Filtered is not hung.** On a host that has answered, a connect that times out is a *filtered* port
   (a firewall dropping SYNs to closed ports looks exactly like that). It is recorded and never counts
   toward giving up on the host.
3. **A host that stops answering after it spoke is left alone** (issue 11). Once a host has spoken (sent a
   byte, or an HTTP status), a connect that succeeds but then yields nothing in time counts a strike when
   something was expected there: a web port's ``GET /`` unanswered, or a banner port (a service that speaks
   first, or a port that spoke on the previous sighting) silent. ``unresponsive_after`` strikes in a row
   (a port that speaks resets the count) and the host gets no further probe. A host given up on never lands
   in a fallback group ("safe to scan").
4. **A host that accepted and never spoke is hung** (:meth:`HostPolicy.conclude`, after the last probe): it
   accepted connections, answered on no port, and a request (``GET /``, a banner port) went unanswered. A
   hung device looks exactly like that; it is given up on too, never "safe to scan" on no evidence.

:class:`Seen` is the vocabulary: what one probe said about the host, from :func:`classify`.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from fragileprobe._probes import HttpResult, Outcome, Phase, ProbeResult
from fragileprobe._results import ProbeKind

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "BANNER_PORTS",
    "HUNG_REASON",
    "LIKELY_PORTS",
    "HostPolicy",
    "LivenessPlanner",
    "ProbeKind",
    "Seen",
    "classify",
]

# Services that speak first (a banner on connect): FTP, SSH, Telnet, SMTP, POP3, IMAP, VNC, MySQL, and
# their TLS-less submission variants. Silence there, after the host spoke elsewhere, is a stalled service.
BANNER_PORTS: Final = frozenset({21, 22, 23, 25, 110, 143, 587, 3306, 5900})
# Ports tried first to learn whether an address is alive, best first: the ports most often *open* on clinical
# devices and their neighbours (web UIs, maintenance consoles), then Windows and printers. Open matters,
# not merely "answers": a host behind a firewall that drops SYNs to closed ports answers only where a
# service listens. Ports of the scan not listed here follow in the scan's order.
LIKELY_PORTS: Final = (
    80,
    22,
    8080,
    23,
    443,
    21,
    445,
    3389,
    135,
    139,
    9100,
    631,
    515,
    8443,
    5985,
    104,
    2575,
    11112,
    161,
    502,
    1433,
    3306,
    5432,
    5900,
    5986,
)
# Liveness ports per address by default: a silent address costs this many connect timeouts (and SYNs).
# Two ports that together cover the services most devices expose; at the default global rate a /20 of
# silent space costs ~8 s of SYNs.
DEFAULT_LIVENESS_PORTS: Final = 2
# Why a host that accepted connections and answered nothing was given up on (rule 4).
HUNG_REASON: Final = (
    "accepted connections but answered on no port (a request timed out): hung, or every service is silent"
)


class Seen(enum.Enum):
    """What one probe said about its host."""

    SPOKE = "spoke"  # bytes arrived (a banner, an HTTP answer, even garbage)
    ACCEPTED = "accepted"  # connected; nothing was expected, or the peer closed/reset
    STALLED = "stalled"  # connected, then nothing in time where an answer was due
    REFUSED = "refused"  # RST to our SYN: the stack is alive, nothing listens
    NO_ANSWER = "no_answer"  # the connect itself timed out (silent address or filtered port)
    UNREACHABLE = "unreachable"  # the local stack or a router refused (no route, no free port)


def classify(result: ProbeResult, kind: ProbeKind, *, expects_banner: bool) -> Seen:
    """What ``result`` says about the host (pure).

    Args:
        result: The probe's record.
        kind: How the port was probed.
        expects_banner: The port is one where silence means a stalled service (see the module docstring).
    """
    spoke = bool(result.data) or (isinstance(result, HttpResult) and result.status is not None)
    if spoke:
        return Seen.SPOKE
    outcome = result.outcome
    if outcome is Outcome.CLOSED:
        return Seen.REFUSED
    if outcome is Outcome.TIMEOUT:
        # http_get / grab_banner report TIMEOUT both for a connect that timed out and for a peer that
        # accepted but never answered; only the first means "not there".
        if result.phase is Phase.CONNECT:
            return Seen.NO_ANSWER
        return Seen.STALLED
    if outcome is Outcome.UNREACHABLE or outcome is Outcome.CANCELLED:
        return Seen.UNREACHABLE
    if outcome is Outcome.OPEN and kind is ProbeKind.BANNER and expects_banner:
        return Seen.STALLED
    return Seen.ACCEPTED  # OPEN (nothing expected), RESET, PROTOCOL_ERROR without bytes


class LivenessPlanner:
    """Which ports to try first on a new address: learned from the hosts found so far in this run (pure).

    Greedy set cover over the open-port sets of the live hosts seen: the first port is the one open on most
    of them, the next the one open on most of those the first misses, and so on; ties and the ports no live
    host showed yet follow :data:`LIKELY_PORTS`, then the scan's own order.
    """

    # Live hosts remembered for the cover: enough to see a network's device mix, bounded in memory.
    MAX_REMEMBERED: Final = 4096

    def __init__(
        self,
        ports: Sequence[int],
        *,
        count: int = DEFAULT_LIVENESS_PORTS,
        hints: dict[int, int] | None = None,
    ) -> None:
        self.ports = tuple(ports)
        self.count = max(0, count)
        self._hints: dict[int, int] = dict(hints or {})
        rank: dict[int, int] = {p: i for i, p in enumerate(LIKELY_PORTS)}
        position = {p: i for i, p in enumerate(self.ports)}

        def order(port: int) -> tuple[int, int]:
            return (rank.get(self._hints.get(port, port), len(rank)), position[port])

        self._prior = sorted(self.ports, key=order)
        self._prior_rank = {p: i for i, p in enumerate(self._prior)}
        self._seen: list[frozenset[int]] = []
        self._cached: tuple[int, ...] | None = None

    def learn(self, open_ports: Iterable[int]) -> None:
        """Record a live host's open ports."""
        found = frozenset(p for p in open_ports if p in self._prior_rank)
        if found and len(self._seen) < self.MAX_REMEMBERED:
            self._seen.append(found)
            self._cached = None

    def plan(self) -> tuple[int, ...]:
        """The liveness ports for the next address (all ports when ``count`` covers them or is 0)."""
        if self.count == 0 or self.count >= len(self.ports):
            return tuple(self._prior)
        if self._cached is None:
            chosen: list[int] = []
            left = list(self._seen)
            while len(chosen) < self.count:
                counts = collections.Counter(p for s in left for p in s)
                if counts:
                    best = max(counts, key=lambda p: (counts[p], -self._prior_rank[p]))
                else:
                    best = next(p for p in self._prior if p not in chosen)
                chosen.append(best)
                left = [s for s in left if best not in s]
            self._cached = tuple(chosen)
        return self._cached


@dataclass(slots=True)
class HostPolicy:
    """One host's probing plan and what it has shown (pure: the executor feeds it results).

    Attributes:
        ports: Every port of the scan.
        liveness: The ports tried first, in order.
        unresponsive_after: Strikes in a row that make the host left alone.
        spoke_before: Ports that spoke on the previous sighting (from the inventory).
    """

    ports: tuple[int, ...]
    liveness: tuple[int, ...]
    unresponsive_after: int
    spoke_before: frozenset[int] = frozenset()
    answered: list[int] = field(default_factory=list)  # ports that spoke, in order
    filtered: list[int] = field(default_factory=list)  # connect timeouts while the host was alive
    alive: bool = False
    strikes: int = 0
    stalled: int = 0  # STALLED observations (any time)
    gave_up: str | None = None
    _order: tuple[int, ...] = ()
    _next: int = 0
    _quiet: list[int] = field(default_factory=list)  # NO_ANSWER before the host was known alive

    def __post_init__(self) -> None:
        first = set(self.liveness)
        self._order = (*self.liveness, *(p for p in self.ports if p not in first))

    def stopped(self) -> bool:
        """The host was given up on: no further probe."""
        return self.gave_up is not None

    @property
    def in_liveness(self) -> bool:
        """The host has not answered yet and liveness ports remain to be tried."""
        return not self.alive and self._next < len(self.liveness)

    @property
    def silent(self) -> bool:
        """Every liveness port was tried and none answered: the address is skipped."""
        return not self.alive and self._next >= len(self.liveness)

    def next_port(self) -> int | None:
        """The next port to probe, or None (done, silent, or given up)."""
        if self.gave_up is not None or (self.silent and self.liveness):
            return None
        if self._next >= len(self._order):
            return None
        port = self._order[self._next]
        self._next += 1
        return port

    def expects_banner(self, port: int, hint: int) -> bool:
        """Silence on ``port`` (well-known as ``hint``) would be a stalled service."""
        return hint in BANNER_PORTS or port in self.spoke_before

    def observe(self, port: int, seen: Seen) -> None:
        """Take one probe's verdict (see the module docstring for the rules)."""
        if seen is Seen.SPOKE:
            self.alive = True
            self.answered.append(port)
            self.strikes = 0
            self._promote_quiet()
            return
        if seen in (Seen.ACCEPTED, Seen.REFUSED):
            if not self.alive:
                self.alive = True
                self._promote_quiet()
            return
        if seen is Seen.NO_ANSWER:
            # Filtered if the host is (or turns out to be) alive; never a strike.
            (self.filtered if self.alive else self._quiet).append(port)
            return
        if seen is Seen.STALLED:
            self.stalled += 1
            if not self.alive:
                self.alive = True
                self._promote_quiet()
            if self.answered or self.spoke_before:
                self.strikes += 1
                if self.strikes >= self.unresponsive_after:
                    where = f"{len(self.answered)} port(s)" if self.answered else "the previous sighting"
                    self.gave_up = (
                        f"{self.strikes} consecutive timeouts after answering on {where}: "
                        "connected but silent where it had to answer"
                    )
            return
        # UNREACHABLE: says nothing about the host.

    def _promote_quiet(self) -> None:
        self.filtered.extend(self._quiet)
        self._quiet.clear()

    def hung_without_a_word(self) -> bool:
        """Accepted connections, never spoke, and a request went unanswered: a hung device looks so."""
        return self.gave_up is None and not self.answered and self.stalled > 0

    def conclude(self) -> str | None:
        """After the last probe: why the host was given up on (rule 3, or rule 4 now), or None."""
        if self.hung_without_a_word():
            self.gave_up = HUNG_REASON
        return self.gave_up
