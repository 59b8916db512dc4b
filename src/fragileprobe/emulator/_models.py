"""The catalogue of emulated device models: ports, banners and fragility.

Vendors and product names are fictional; the open-source components they carry (vsFTPd, dropbear, BusyBox,
GoAhead, VxWorks, Boa...) are real and give the banners a fingerprinter would see on such devices.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fragileprobe._errors import ConfigError
from fragileprobe.emulator._fragility import FragilitySpec

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MODELS",
    "SERVICE_KINDS",
    "DeviceModel",
    "ServiceSpec",
    "get_model",
]

# Service kinds the device I/O layer knows how to serve (see _services.py for what each does).
SERVICE_KINDS = frozenset(
    {
        "ftp",  # banner, then a minimal FTP command loop (USER/PASS always rejected, SYST, QUIT...)
        "ssh",  # identification string, then swallows whatever the client sends
        "telnet",  # IAC negotiation, login prompt, password check, a tiny shell
        "http",  # one request per connection, a status page or 404, Connection: close
        "banner",  # sends its banner (if any), then swallows input until the client leaves
        "silent",  # accepts, reads and counts, never says anything (raw print port, SMB, DICOM...)
        "rdp",  # answers an X.224 connection request with a connection confirm, then swallows
        "mllp",  # HL7 over MLLP: acknowledges each framed message with an ACK
        # hostile behaviours (issue 7)
        "mute",  # accepts and never reads nor speaks (the receive window fills up)
        "drip",  # drips its banner one byte per drip_interval_s, forever
        "flood",  # sends flood_bytes of junk as fast as the client reads
        "reset",  # resets the connection (RST) right after accepting it
        "reset-mid-banner",  # sends half its banner, then resets
        "http-bad-status",  # HTTP with a malformed status line
        "http-endless-headers",  # HTTP 200 whose headers never end
        "http-endless-chunked",  # HTTP 200 chunked body that never ends
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """One service of a model: what listens on a port and what it says.

    Attributes:
        kind: One of :data:`SERVICE_KINDS`.
        banner: Bytes sent on connect (FTP/SSH/banner/drip kinds) or the login prompt (telnet).
        server_header: HTTP ``Server:`` header value (http kinds).
        title: HTML ``<title>`` of the HTTP status page.
        body_html: Extra HTML inside the status page body.
        idle_timeout_s: The service closes a session idle for this long (real daemons have one too).
        drip_interval_s: Seconds between bytes (drip kind).
        flood_bytes: Total bytes of junk (flood kind).
    """

    kind: str
    banner: bytes = b""
    server_header: str | None = None
    title: str | None = None
    body_html: str = ""
    idle_timeout_s: float = 300.0
    drip_interval_s: float = 1.0
    flood_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.kind not in SERVICE_KINDS:
            raise ConfigError(f"kind: unknown service kind {self.kind!r} (known: {sorted(SERVICE_KINDS)})")
        if not isinstance(self.banner, bytes):
            raise ConfigError(f"banner: must be bytes, got {type(self.banner).__name__}")
        if not self.idle_timeout_s > 0:
            raise ConfigError(f"idle_timeout_s: must be > 0, got {self.idle_timeout_s!r}")
        if not self.drip_interval_s > 0:
            raise ConfigError(f"drip_interval_s: must be > 0, got {self.drip_interval_s!r}")
        if self.flood_bytes < 0:
            raise ConfigError(f"flood_bytes: must be >= 0, got {self.flood_bytes!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceModel:
    """An emulated device model.

    Attributes:
        name: Catalogue key ("infusion-pump").
        vendor: Vendor name as the device shows it.
        product: Product name and version text.
        os_family: Ground truth for fingerprinting tests: "generic unix", "windows" or "embedded".
        category: Ground truth for grouping tests: "medical", "workstation", "printer", "server".
        services: Model port -> service.
        web_port: The model port a watchdog heartbeats (the web server), or ``None``.
        fragility: How and when it hangs and slows.
        telnet_password: The hard-coded password the telnet login accepts (any user but root/root).
        hostname: Shown in the telnet login prompt.
        banners_after_crash: Model port -> replacement banner used after the device has crashed and been
            power-cycled at least once (a firmware that "changed" across a reboot; hostile option).
        flap_period_s: If set, the device hangs and recovers by itself every ``flap_period_s`` seconds
            (hostile option: a device that flaps during a characterization).
    """

    name: str
    vendor: str
    product: str
    os_family: str
    category: str
    services: Mapping[int, ServiceSpec]
    web_port: int | None
    fragility: FragilitySpec
    telnet_password: str | None = None
    hostname: str = "device"
    banners_after_crash: Mapping[int, bytes] = field(default_factory=dict)  # http: new Server header
    flap_period_s: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name: a model needs a name")
        if not self.services:
            raise ConfigError(f"services: model {self.name!r} has no services")
        for port in self.services:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(f"port: {port!r} out of range 1-65535 in model {self.name!r}")
        if self.web_port is not None and self.web_port not in self.services:
            raise ConfigError(f"web_port: {self.web_port} is not one of model {self.name!r}'s ports")
        for port in self.banners_after_crash:
            if port not in self.services:
                raise ConfigError(f"banners_after_crash: port {port} is not a port of {self.name!r}")
        if self.flap_period_s is not None and not self.flap_period_s > 0:
            raise ConfigError(f"flap_period_s: must be > 0, got {self.flap_period_s!r}")
        object.__setattr__(self, "services", types.MappingProxyType(dict(sorted(self.services.items()))))
        object.__setattr__(
            self, "banners_after_crash", types.MappingProxyType(dict(self.banners_after_crash))
        )

    @property
    def ports(self) -> tuple[int, ...]:
        """The model's ports, ascending."""
        return tuple(self.services)


# BusyBox telnetd's opening negotiation (busybox networking/telnetd.c): DO ECHO, DO NAWS, WILL ECHO,
# WILL SGA. A fingerprinter sees these bytes before the login prompt.
_BUSYBOX_IACS = bytes([255, 253, 1, 255, 253, 31, 255, 251, 1, 255, 251, 3])
# VxWorks telnetd opens with WILL ECHO, WILL SGA only.
_VXWORKS_IACS = bytes([255, 251, 1, 255, 251, 3])


def _http(server: str, title: str, body: str = "") -> ServiceSpec:
    return ServiceSpec(kind="http", server_header=server, title=title, body_html=body)


def _silent() -> ServiceSpec:
    return ServiceSpec(kind="silent")


def _banner(text: bytes) -> ServiceSpec:
    return ServiceSpec(kind="banner", banner=text)


INFUSION_PUMP = DeviceModel(
    name="infusion-pump",
    vendor="Meridian Infusion Systems",
    product="MIS-3000 volumetric infusion pump, firmware 4.2.1",
    os_family="embedded",
    category="medical",
    services={
        21: ServiceSpec(kind="ftp", banner=b"220 (vsFTPd 2.3.4)\r\n"),
        22: ServiceSpec(kind="ssh", banner=b"SSH-2.0-dropbear_0.52\r\n"),
        23: ServiceSpec(kind="telnet", banner=_BUSYBOX_IACS + b"\r\nmis3000 login: "),
        8080: _http(
            "GoAhead-Webs/2.5.0",
            "MIS-3000 Infusion Pump",
            "<p>Channel A: RUNNING 12.5 mL/h</p><p>Channel B: STANDBY</p><p>Firmware 4.2.1</p>",
        ),
    },
    web_port=8080,
    # T uniform in {7, 8, 9}: trouble at about 7 sessions; 5 probes + 1 heartbeat = 6 is always safe.
    fragility=FragilitySpec(
        threshold=8,
        jitter=1,
        base_latency_s=0.004,
        slowdown_s_per_session=0.012,
        syn_sensitive=True,
        syn_spared_ports=frozenset({21}),
    ),
    telnet_password="mis3000",
    hostname="mis3000",
)

SYRINGE_PUMP = DeviceModel(
    name="syringe-pump",
    vendor="Meridian Infusion Systems",
    product="SP-20 syringe pump, firmware 1.9.7",
    os_family="embedded",
    category="medical",
    services={
        21: ServiceSpec(kind="ftp", banner=b"220 SP-20 FTP server (Nucleus NET 3.2) ready.\r\n"),
        23: ServiceSpec(kind="telnet", banner=_VXWORKS_IACS + b"\r\nSP-20 Service Console\r\nLogin: "),
        80: _http("Allegro-Software-RomPager/4.07", "SP-20 Syringe Pump", "<p>Infusing: NO</p>"),
    },
    web_port=80,
    # T uniform in {4, 5, 6}: a lower ceiling than the MIS-3000.
    fragility=FragilitySpec(threshold=5, jitter=1, base_latency_s=0.006, slowdown_s_per_session=0.02),
    telnet_password="sp20svc",
    hostname="sp20",
)

PATIENT_MONITOR = DeviceModel(
    name="patient-monitor",
    vendor="Caldera Vitals",
    product="PM-8000 bedside patient monitor, software 2.4",
    os_family="embedded",
    category="medical",
    services={
        21: ServiceSpec(kind="ftp", banner=b"220 VxWorks (5.5.1) FTP server ready\r\n"),
        23: ServiceSpec(kind="telnet", banner=_VXWORKS_IACS + b"\r\n\r\nVxWorks login: "),
        80: _http("WindWeb/4.0", "PM-8000 Patient Monitor", "<p>Bed 12 - ECG, SpO2, NIBP</p>"),
        104: _silent(),  # DICOM: the SCU must speak first
        161: _silent(),  # SNMP over TCP
        443: _silent(),  # TLS: the client must speak first
        2575: ServiceSpec(kind="mllp"),  # HL7 v2 over MLLP
        3000: _banner(b"PM-8000 NETLINK v2.4 READY\r\n"),
        4000: _banner(b"CVS-DATA 1.3\r\n"),
        5000: _silent(),
        5900: _banner(b"RFB 003.003\n"),  # remote display (VNC)
        8080: _http("WindWeb/4.0", "PM-8000 Central Link"),
        9000: _banner(b"CALDERA ALARM GATEWAY 2.1\r\n"),
        24105: _silent(),  # vendor service port
    },
    web_port=80,
    # T uniform in {5, 6, 7}: 14 open services, so a plain connect scan holds more than that at once.
    fragility=FragilitySpec(threshold=6, jitter=1, base_latency_s=0.004, slowdown_s_per_session=0.015),
    telnet_password="pm8000",
    hostname="pm8000",
)

SLOW_PUMP = DeviceModel(
    name="slow-pump",
    vendor="Meridian Infusion Systems",
    product="MIS-2000 volumetric infusion pump (legacy), firmware 2.0.3",
    os_family="embedded",
    category="medical",
    services={
        22: ServiceSpec(kind="ssh", banner=b"SSH-2.0-dropbear_0.46\r\n"),
        23: ServiceSpec(kind="telnet", banner=_BUSYBOX_IACS + b"\r\nmis2000 login: "),
        8080: _http("Boa/0.94.13", "MIS-2000 Infusion Pump", "<p>Channel A: STANDBY</p>"),
    },
    web_port=8080,
    # Dies at T in {11, 12, 13} but slows steeply past 4 sessions: 0.19 s at 6, 0.68 s at 8, 1.5 s at 10,
    # so an early-warning ramp sees the knee long before the crash.
    fragility=FragilitySpec(
        threshold=12,
        jitter=1,
        base_latency_s=0.005,
        slowdown_s_per_session=0.005,
        knee_sessions=4,
        knee_slowdown_s=0.04,
        knee_exponent=2.0,
    ),
    telnet_password="mis2000",
    hostname="mis2000",
)

WORKSTATION = DeviceModel(
    name="workstation",
    vendor="Microsoft",
    product="Windows 10 Enterprise workstation",
    os_family="windows",
    category="workstation",
    services={
        135: _silent(),  # MS-RPC endpoint mapper
        139: _silent(),  # NetBIOS session service
        445: _silent(),  # SMB
        3389: ServiceSpec(kind="rdp"),
        5985: ServiceSpec(kind="http", server_header="Microsoft-HTTPAPI/2.0", title=None),
    },
    web_port=None,
    fragility=FragilitySpec(threshold=None, base_latency_s=0.001),
    hostname="WS-0042",
)

PRINTER = DeviceModel(
    name="printer",
    vendor="HP",
    product="HP LaserJet 400 M401dne",
    os_family="embedded",
    category="printer",
    services={
        80: _http("HP HTTP Server; HP LaserJet 400 M401dne - CF399A", "HP LaserJet 400 M401dne"),
        515: _silent(),  # LPD
        631: _http("HP HTTP Server; HP LaserJet 400 M401dne - CF399A", "HP LaserJet 400 M401dne - IPP"),
        9100: _silent(),  # raw print port: prints what it receives, never answers
    },
    web_port=80,
    fragility=FragilitySpec(threshold=None, base_latency_s=0.001),
    hostname="NPI3A1B2C",
)

LINUX_SERVER = DeviceModel(
    name="linux-server",
    vendor="Ubuntu",
    product="Ubuntu 22.04 LTS server",
    os_family="generic unix",
    category="server",
    services={
        22: ServiceSpec(kind="ssh", banner=b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n"),
        80: _http("Apache/2.4.52 (Ubuntu)", "Apache2 Ubuntu Default Page: It works"),
        443: _silent(),
    },
    web_port=80,
    fragility=FragilitySpec(threshold=None, base_latency_s=0.001),
    hostname="srv-lab-01",
)

# --- hostile models (issue 7): each misbehaves in ways that hang or crash naive scanners -------------------
# Hostile sessions give up after a minute of "forever" (drip, endless headers/chunks, mute), so a forgotten
# test client cannot pin the emulator; a prober's own bounds are far shorter.
_HOSTILE_IDLE_S = 60.0

HOSTILE_TARPIT = DeviceModel(
    name="hostile-tarpit",
    vendor="Unknown",
    product="tarpit: silent, mute, dripping and endless services",
    os_family="embedded",
    category="medical",
    services={
        21: ServiceSpec(kind="drip", banner=b"220 slow FTP server ready\r\n", idle_timeout_s=_HOSTILE_IDLE_S),
        22: ServiceSpec(kind="silent", idle_timeout_s=_HOSTILE_IDLE_S),
        23: ServiceSpec(kind="mute", idle_timeout_s=_HOSTILE_IDLE_S),
        80: ServiceSpec(
            kind="http-endless-headers", server_header="thttpd/2.25b", idle_timeout_s=_HOSTILE_IDLE_S
        ),
        8000: ServiceSpec(
            kind="http-endless-chunked", server_header="thttpd/2.25b", idle_timeout_s=_HOSTILE_IDLE_S
        ),
        8080: _http("thttpd/2.25b", "Tarpit status"),
    },
    web_port=8080,
    fragility=FragilitySpec(threshold=None, base_latency_s=0.002),
    hostname="tarpit",
)

HOSTILE_RESETTER = DeviceModel(
    name="hostile-resetter",
    vendor="Unknown",
    product="resetter: resets, half banners, junk floods, broken HTTP",
    os_family="embedded",
    category="medical",
    services={
        21: ServiceSpec(kind="reset"),
        22: ServiceSpec(kind="reset-mid-banner", banner=b"SSH-2.0-dropbear_2012.55\r\n"),
        23: ServiceSpec(kind="flood", flood_bytes=4 * 1024 * 1024),
        80: ServiceSpec(kind="http-bad-status", server_header="mini_httpd/1.19"),
        8080: _http("mini_httpd/1.19", "Resetter status"),
    },
    web_port=8080,
    fragility=FragilitySpec(threshold=None, base_latency_s=0.002),
    hostname="resetter",
)

HOSTILE_FIRMWARE = DeviceModel(
    name="hostile-firmware",
    vendor="Meridian Infusion Systems",
    product="MIS-3000 volumetric infusion pump that comes back from a crash with new firmware",
    os_family="embedded",
    category="medical",
    services=dict(INFUSION_PUMP.services),
    web_port=8080,
    fragility=INFUSION_PUMP.fragility,
    telnet_password="mis3000",
    hostname="mis3000",
    banners_after_crash={
        21: b"220 (vsFTPd 3.0.3)\r\n",
        22: b"SSH-2.0-dropbear_2019.78\r\n",
        8080: b"GoAhead-Webs/3.6.5",  # for an http service: the new Server header
    },
)

HOSTILE_FLAPPER = DeviceModel(
    name="hostile-flapper",
    vendor="Meridian Infusion Systems",
    product="MIS-3000 volumetric infusion pump with a flaky power supply",
    os_family="embedded",
    category="medical",
    services=dict(INFUSION_PUMP.services),
    web_port=8080,
    fragility=FragilitySpec(threshold=8, jitter=1, base_latency_s=0.004, slowdown_s_per_session=0.012),
    telnet_password="mis3000",
    hostname="mis3000",
    # Up 3 s, hung 3 s, then rebooting (refusing) for its boot delay, over and over.
    flap_period_s=3.0,
)

HOSTILE_MODELS = (HOSTILE_TARPIT, HOSTILE_RESETTER, HOSTILE_FIRMWARE, HOSTILE_FLAPPER)

_BUILTIN = (
    INFUSION_PUMP,
    SYRINGE_PUMP,
    PATIENT_MONITOR,
    SLOW_PUMP,
    WORKSTATION,
    PRINTER,
    LINUX_SERVER,
    *HOSTILE_MODELS,
)

#: Every built-in model by name (read-only).
MODELS: Mapping[str, DeviceModel] = types.MappingProxyType({m.name: m for m in _BUILTIN})


def get_model(model: str | DeviceModel) -> DeviceModel:
    """Return the catalogue model named ``model`` (or ``model`` itself if it is already a model).

    Raises:
        ConfigError: ``model`` names no known model.
    """
    if isinstance(model, DeviceModel):
        return model
    found = MODELS.get(model) if isinstance(model, str) else None
    if found is None:
        raise ConfigError(f"model: unknown model {model!r} (known: {', '.join(sorted(MODELS))})")
    return found
