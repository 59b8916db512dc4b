"""A realistic network in a box: a private network namespace where most addresses never answer.

Bare loopback flatters every scanner: each unused address and closed port answers with an instant RST. A
hospital network does not. :class:`NetBed` builds two network namespaces of its own (``ip netns add``; no
route out of either: nothing can leave them), joined by a veth pair, one routed hop apart like a scanner and
a clinical VLAN:

* the **scanner** namespace (``NAME-s``, 10.89.0.1) routes the block (e.g. 10.90.0.0/20) to the device side;
* the **device** namespace (``NAME-d``, 10.89.0.2) drops everything sent to an address without a device
  (nftables, prerouting): SYNs, ICMP, UDP. A live address 10.90.a.b is DNATed to the loopback alias
  127.90.a.b (``route_localnet``), where the emulated fleet (``fragileprobe emulate --fleet``, run inside
  the namespace with ``ip netns exec``) serves it, fragile devices included. Loopback alone would not do:
  nmap treats every address routed over ``lo`` as itself ("localhost-response") and skips host discovery;
* **firewalled** hosts, whose firewall drops SYNs (and ICMP) to every port where no service listens, as a
  host firewall in "stealth" mode does: they answer only on their open ports;
* **filtered** ports on other hosts (single ports dropped, a network firewall's rule);
* **slow** hosts: ``tc netem`` delay on their packets when the kernel has netem, else (netem missing, as on
  kernels without ``sch_netem``) a slower application answer (the emulator's ``base_latency_s``), which is
  noted in :attr:`NetBed.notes`;
* an nftables counter of every SYN sent into the block (``syns()``).

Everything that sends traffic runs inside the scanner namespace (:meth:`NetBed.run`). The bed is torn down
by the namespace names it created and by the emulator's PID, never by a broad name.

:func:`netbed_available` says why the bed cannot be built here (not root, a tool missing), for skips.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fragileprobe.emulator import MODELS
from fragileprobe.emulator._fleet import DeviceConfig, FleetConfig
from fragileprobe.emulator._process import READY_TIMEOUT_S, EmulatorProcess, fragileprobe_command

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

# The transit link between the two namespaces (outside every block the bed serves).
SCANNER_ADDRESS = "10.89.0.1"
DEVICE_SIDE_ADDRESS = "10.89.0.2"
# The tools the bed needs (iproute2 for netns and tc, nftables).
TOOLS = ("ip", "nft")
# How long one command of the setup may take.
SETUP_TIMEOUT_S = 30.0


def netbed_available() -> str | None:
    """None when a bed can be built here, else the reason it cannot (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "the network test bed needs root (ip netns add, nftables)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"the network test bed needs {', '.join(missing)} (iproute2, nftables)"
    return None


def device_alias(host: str) -> str:
    """The loopback address (device namespace) serving scan address ``host``: 10.a.b.c -> 127.a.b.c."""
    return "127." + host.split(".", 1)[1]


@dataclass(frozen=True, slots=True)
class LiveHost:
    """One live address of the bed (a scan address): its model, how it is reached, and its ground truth."""

    host: str
    model: str
    threshold: int | None = None
    jitter: int | None = None
    firewalled: bool = False
    filtered_ports: tuple[int, ...] = ()
    delay_ms: int = 0

    @property
    def open_ports(self) -> tuple[int, ...]:
        """The model's TCP ports, minus the filtered ones (the bed runs as root: no port offset)."""
        return tuple(p for p in sorted(MODELS[self.model].services) if p not in self.filtered_ports)

    @property
    def fragile(self) -> bool:
        """A device that hangs at a few sessions (threshold of 6 or fewer)."""
        return self.threshold is not None and self.threshold + (self.jitter or 0) <= 6


def _run(cmd: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        list(cmd), input=input_text, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc.stdout


@dataclass
class NetBed:
    """A network namespace holding ``block``, with ``live`` hosts served by an emulated fleet.

    Use as a context manager; :meth:`popen` / :meth:`run` execute commands inside it.
    """

    block: str
    live: Sequence[LiveHost]
    name: str = field(default_factory=lambda: f"fpbed-{os.getpid()}-{random.randrange(1 << 20):05x}")
    notes: list[str] = field(default_factory=list)
    _emulator: EmulatorProcess | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _created: list[str] = field(default_factory=list)

    @property
    def scanner_ns(self) -> str:
        """The namespace scanners run in."""
        return f"{self.name}-s"

    @property
    def device_ns(self) -> str:
        """The namespace the devices (and the firewall) live in."""
        return f"{self.name}-d"

    # --- ground truth ---
    @property
    def hosts(self) -> tuple[str, ...]:
        """Every address of the block."""
        return tuple(str(a) for a in ipaddress.ip_network(self.block))

    def truth(self) -> Mapping[str, LiveHost]:
        """Live address -> its LiveHost."""
        return {h.host: h for h in self.live}

    # --- lifecycle ---
    def __enter__(self) -> NetBed:
        why = netbed_available()
        if why is not None:
            raise RuntimeError(why)
        self._tmp = tempfile.TemporaryDirectory(prefix="fpbed-")
        scanner, devices = self.scanner_ns, self.device_ns
        try:
            _run(["ip", "netns", "add", scanner])
            self._created.append(scanner)
            _run(["ip", "netns", "add", devices])
            self._created.append(devices)
            # Created directly inside the namespaces: the host's own namespace never holds the pair.
            _run(
                [
                    "ip",
                    "link",
                    "add",
                    "name",
                    "veth0",
                    "netns",
                    scanner,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "veth0",
                    "netns",
                    devices,
                ]
            )
            for ns, address in ((scanner, SCANNER_ADDRESS), (devices, DEVICE_SIDE_ADDRESS)):
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{address}/30", "dev", "veth0"])
                _run(["ip", "-n", ns, "link", "set", "veth0", "up"])
            _run(["ip", "-n", scanner, "route", "add", self.block, "via", DEVICE_SIDE_ADDRESS])
            # DNAT to 127.x needs route_localnet on the device side (else 127/8 on a wire is a martian).
            _run(
                [
                    "ip",
                    "netns",
                    "exec",
                    devices,
                    "sysctl",
                    "-qw",
                    "net.ipv4.conf.all.route_localnet=1",
                    "net.ipv4.conf.veth0.route_localnet=1",
                    "net.ipv4.conf.lo.route_localnet=1",
                ]
            )
            _run(["ip", "netns", "exec", devices, "nft", "-f", "-"], input_text=self._ruleset())
            self._shape_latency()
            self._start_fleet()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the fleet by PID and delete the namespace this bed created (by its name)."""
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        while self._created:  # deleting a namespace deletes its end of the veth pair, and so the pair
            _run(["ip", "netns", "del", self._created.pop()], check=False)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # --- inside the namespaces ---
    def command(self, *args: str, ns: str | None = None) -> list[str]:
        """``args`` prefixed to run inside the scanner namespace (or ``ns``)."""
        return ["ip", "netns", "exec", ns or self.scanner_ns, *args]

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``args`` inside the scanner namespace."""
        return subprocess.Popen(self.command(*args), **kwargs)

    def run(
        self, *args: str, timeout_s: float, ns: str | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the scanner namespace (or ``ns``), bounded in time, capturing text output."""
        return subprocess.run(
            self.command(*args, ns=ns),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            **kwargs,
        )

    def python(self, code: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` inside the device namespace (where the fleet's control API is)."""
        return self.run(sys.executable, "-c", code, *args, timeout_s=timeout_s, ns=self.device_ns)

    def restart_fleet(self) -> None:
        """Stop the fleet (by PID) and start it again: fresh devices, counters at zero."""
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        self._start_fleet()

    # --- measurements ---
    def syns(self) -> int:
        """SYNs that entered the block since the bed was built (or since :meth:`reset_counters`)."""
        out = _run(self.command("nft", "-j", "list", "counter", "ip", "fpbed", "syns", ns=self.device_ns))
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError("the syns counter is missing")

    def reset_counters(self) -> None:
        """Zero the SYN counter."""
        _run(self.command("nft", "reset", "counter", "ip", "fpbed", "syns", ns=self.device_ns))

    def device_stats(self) -> dict[str, dict[str, Any]]:
        """Scan address -> the emulated device's stats and state (from the fleet's control API)."""
        assert self._emulator is not None
        code = (
            "import json, sys, anyio\nfrom fragileprobe.emulator import FleetClient\n"
            "devices = anyio.run(FleetClient(sys.argv[1]).list_devices)\n"
            "print(json.dumps({d.host: {'crashes': d.stats.crashes,"
            " 'peak_sessions': d.stats.peak_sessions, 'connects_total': d.stats.connects_total,"
            " 'state': d.state.value, 'threshold': d.threshold}"
            " for d in devices}))"
        )
        proc = self.python(code, self._emulator.control_url, timeout_s=60)
        if proc.returncode != 0:
            raise RuntimeError(f"device stats failed: {proc.stderr[-1000:]}")
        by_alias: dict[str, dict[str, Any]] = json.loads(proc.stdout)
        return {h.host: by_alias[device_alias(h.host)] for h in self.live}

    def power_cycle_hung(self) -> list[str]:
        """Power-cycle every hung device; return their addresses."""
        assert self._emulator is not None
        hung = [h for h, s in self.device_stats().items() if s["state"] != "up"]
        if hung:
            code = (
                "import sys, anyio\nfrom fragileprobe.emulator import FleetClient\n"
                "async def main():\n    c = FleetClient(sys.argv[1])\n"
                "    for h in sys.argv[2:]:\n        await c.power_cycle(h, boot_delay_s=0.05)\n"
                "anyio.run(main)"
            )
            proc = self.python(code, self._emulator.control_url, *map(device_alias, hung), timeout_s=120)
            if proc.returncode != 0:
                raise RuntimeError(f"power cycle failed: {proc.stderr[-1000:]}")
        return hung

    # --- building ---
    def _ruleset(self) -> str:
        live = [h.host for h in self.live]
        fw = [h for h in self.live if h.firewalled]
        open_elems = [f"{h.host} . {p}" for h in fw for p in h.open_ports]
        filtered = [f"{h.host} . {p}" for h in self.live for p in h.filtered_ports]

        def elements(items: Sequence[str]) -> str:
            return f"elements = {{ {', '.join(items)} }}" if items else ""

        aliases = [f"{h} : {device_alias(h)}" for h in live]
        syn = "tcp flags & (syn | ack) == syn"
        # A stealth host firewall drops every TCP segment to a port without a service (SYNs and nmap's
        # ACK probe alike), and ICMP and UDP; a filtered port on another host drops SYNs only.
        return f"""
table ip fpbed {{
  counter syns {{ }}
  set live {{ type ipv4_addr; {elements(live)} }}
  map alias {{ type ipv4_addr : ipv4_addr; {elements(aliases)} }}
  set firewalled {{ type ipv4_addr; {elements([h.host for h in fw])} }}
  set fw_open {{ type ipv4_addr . inet_service; {elements(open_elems)} }}
  set filtered {{ type ipv4_addr . inet_service; {elements(filtered)} }}
  chain pre {{
    type filter hook prerouting priority -300; policy accept;
    ip daddr {self.block} {syn} counter name "syns"
    ip daddr {self.block} ip daddr != @live drop
    ip daddr @firewalled meta l4proto icmp drop
    ip daddr @firewalled meta l4proto udp drop
    ip daddr @firewalled meta l4proto tcp ip daddr . tcp dport != @fw_open drop
    ip daddr . tcp dport @filtered {syn} drop
  }}
  chain nat {{
    type nat hook prerouting priority -100; policy accept;
    ip daddr @live dnat to ip daddr map @alias
  }}
}}
"""

    def _shape_latency(self) -> None:
        slow = [h for h in self.live if h.delay_ms]
        if not slow:
            return
        ns = self.device_ns
        probe = self.run(
            "tc",
            "qdisc",
            "add",
            "dev",
            "veth0",
            "root",
            "handle",
            "1:",
            "prio",
            "bands",
            "4",
            timeout_s=SETUP_TIMEOUT_S,
            ns=ns,
        )
        # The answers leave the device side with the scan address as source (un-DNATed): delay those,
        # both ways' worth, on that egress.
        netem = (
            probe.returncode == 0
            and self.run(
                "tc",
                "qdisc",
                "add",
                "dev",
                "veth0",
                "parent",
                "1:4",
                "handle",
                "40:",
                "netem",
                "delay",
                f"{2 * slow[0].delay_ms}ms",
                timeout_s=SETUP_TIMEOUT_S,
                ns=ns,
            ).returncode
            == 0
        )
        if not netem:
            self.notes.append(
                "tc netem unavailable in this kernel: slow hosts answer slowly in the "
                "application (emulator base latency), not in the network"
            )
            return
        for h in slow:
            _run(
                self.command(
                    "tc",
                    "filter",
                    "add",
                    "dev",
                    "veth0",
                    "parent",
                    "1:0",
                    "protocol",
                    "ip",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "ip",
                    "src",
                    f"{h.host}/32",
                    "flowid",
                    "1:4",
                    ns=ns,
                )
            )

    def _start_fleet(self) -> None:
        assert self._tmp is not None
        netem = not any("netem unavailable" in n for n in self.notes)
        devices = []
        for i, h in enumerate(self.live):
            extra: dict[str, Any] = {}
            if h.delay_ms and not netem:
                extra["base_latency_s"] = 2 * h.delay_ms / 1000
            devices.append(
                DeviceConfig(
                    host=device_alias(h.host),
                    model=h.model,
                    seed=i + 1,
                    threshold=h.threshold,
                    jitter=h.jitter,
                    boot_delay_s=0.05,
                    port_offset=0,
                    **extra,
                )
            )
        path = Path(self._tmp.name) / "fleet.toml"
        path.write_text(FleetConfig(devices=tuple(devices), port_offset=0).to_toml())
        self._emulator = _NetnsEmulator(self.device_ns, "--fleet", str(path), "--quiet")
        self._emulator.wait_ready(READY_TIMEOUT_S + len(devices) * 0.2)


class _NetnsEmulator(EmulatorProcess):
    """``fragileprobe emulate`` started inside a namespace; stopped by its PID like its parent class."""

    def __init__(self, netns: str, *args: str) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        # `ip netns exec` execs the command in place: the PID is the emulator's own, so SIGINT reaches it.
        command = ["ip", "netns", "exec", netns, *fragileprobe_command(), "emulate", *args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines = []
        self._stderr_text = ""


def hospital_block(
    block: str = "10.90.0.0/20",
    *,
    seed: int = 15,
    live_fraction: float = 0.015,
    firewalled: int = 4,
    fragile: int = 8,
    slow: int = 3,
    delay_ms: int = 50,
) -> list[LiveHost]:
    """A hospital-like mix of live hosts spread over ``block`` (about ``live_fraction`` of it).

    ``fragile`` syringe pumps hang at 3-5 sessions; ``firewalled`` infusion pumps drop SYNs to closed
    ports; ``slow`` hosts get ``delay_ms`` each way; a few hosts have one filtered port.
    """
    rng = random.Random(seed)
    net = ipaddress.ip_network(block)
    count = max(fragile + firewalled + 6, round(net.num_addresses * live_fraction))
    addresses = [str(a) for a in rng.sample(list(net.hosts()), count)]
    mix = (
        ["infusion-pump"] * 5
        + ["patient-monitor"] * 2
        + ["workstation"] * 3
        + ["printer"] * 2
        + ["linux-server"] * 2
        + ["slow-pump"]
    )
    live: list[LiveHost] = []
    for i, host in enumerate(addresses):
        if i < fragile:
            live.append(LiveHost(host, "syringe-pump", threshold=4, jitter=1))
        elif i < fragile + firewalled:
            live.append(LiveHost(host, "infusion-pump", firewalled=True))
        else:
            live.append(LiveHost(host, mix[rng.randrange(len(mix))]))
    # Slow and partly filtered hosts among the ordinary ones.
    ordinary = list(range(fragile + firewalled, len(live)))
    rng.shuffle(ordinary)
    for i in ordinary[:slow]:
        h = live[i]
        live[i] = LiveHost(h.host, h.model, delay_ms=delay_ms)
    for i in ordinary[slow : slow + 3]:
        h = live[i]
        ports = sorted(MODELS[h.model].services)
        live[i] = LiveHost(h.host, h.model, filtered_ports=(ports[-1],))
    return live


@contextlib.contextmanager
def netbed(block: str, live: Sequence[LiveHost]) -> Iterator[NetBed]:
    """A :class:`NetBed` for the block (torn down on exit)."""
    bed = NetBed(block=block, live=live)
    with bed:
        yield bed


def stop_by_pid(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGINT a process we started, by PID; SIGKILL if it does not exit."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
