"""``fragileprobe demo``: the story on an emulated infusion pump, in-process on loopback.

Stage 1 of the README's main job: start an emulated pump, show its services and banners, show its response
time rising with load, drive it into a hang at its threshold, show that it stays hung (the heartbeat fails
even after every session is closed), power-cycle it and show it back. The logic lives here and reports
:class:`DemoEvent` records through a callback; the CLI only prints them.

The demo talks to the pump with fragileprobe's own probes (``tcp_connect``, ``grab_banner``, ``http_get``
and ``open_stream`` for the sessions it holds), so every read is bounded.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from fragileprobe._errors import ConfigError, ProbeError
from fragileprobe._probes import Outcome, grab_banner, http_get, open_stream, tcp_connect
from fragileprobe.emulator._device import EmulatedPump, check_loopback_host
from fragileprobe.emulator._fragility import DeviceState, threshold_bounds

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fragileprobe._characterize import ProgressEvent
    from fragileprobe._charsettings import CharacterizeSettings
    from fragileprobe._discovery import DiscoveryReport
    from fragileprobe._groups import Zones
    from fragileprobe._probes import ProbeStream
    from fragileprobe._profile import Characterization
    from fragileprobe._scope import Scope
    from fragileprobe._store import ProfileStore

_T = TypeVar("_T")

__all__ = ["DemoEvent", "DemoResult", "run_demo"]

# The heartbeat's deadline during the demo: the pump answers in a few ms when healthy, so half a second of
# silence means it is hung (a real watchdog would use a longer bound; the demo must stay short).
HEARTBEAT_TIMEOUT_S = 0.5
# Most sessions the demo opens while looking for the crash: above every threshold the pump can draw.
MAX_DEMO_SESSIONS = 20
# Loads at which the demo measures the heartbeat latency (probe sessions held, plus the heartbeat).
LATENCY_LOADS = (0, 2, 4, 5)
# Random demo addresses come from 127.200.0.0/16, away from the test fixtures' 127.64.0.0/10.
_DEMO_NET = "127.200"
_BIND_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One thing the demo reports. ``kind``: "section", "info", "ok", "warn" or "row"."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo found."""

    host: str
    seed: int
    threshold: int | None  # the pump's drawn threshold on the first boot (ground truth)
    banners: dict[int, str] = field(default_factory=dict)
    latency_by_load_s: tuple[tuple[int, float], ...] = ()
    hung_at_sessions: int | None = None  # concurrent sessions (probes + heartbeat) when it stopped answering
    stayed_hung: bool = False
    refused_while_booting: bool = False
    recovered: bool = False
    threshold_after_cycle: int | None = None
    wall_time_s: float = 0.0


def _printable(data: bytes) -> str:
    """Banner bytes as one readable line (telnet negotiation shown as <IAC...>)."""
    out = []
    for byte in data[:200]:
        if 32 <= byte < 127:
            out.append(chr(byte))
        elif byte in (10, 13):
            out.append(" ")
        else:
            out.append(f"<{byte:02x}>")
    return " ".join("".join(out).split())


async def _heartbeat(host: str, port: int) -> tuple[bool, float]:
    """GET / on the web port: (answered 200, seconds until the whole response was in)."""
    bound = HEARTBEAT_TIMEOUT_S
    result = await http_get(host, port, "/", timeout_s=bound, total_timeout_s=bound)
    return result.outcome is Outcome.OPEN and result.status == 200, result.duration_s


async def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``predicate`` (the emulator exposes state, not events) for at most ``timeout_s``."""
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await anyio.sleep(0.005)


async def _open_session(host: str, port: int) -> ProbeStream:
    stream = await open_stream(host, port, timeout_s=HEARTBEAT_TIMEOUT_S)
    # Read the FTP greeting so the session is really established on the device side.
    with anyio.move_on_after(HEARTBEAT_TIMEOUT_S):
        await stream.receive(512)
    return stream


def _random_host() -> str:
    return f"{_DEMO_NET}.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}"


async def run_demo(
    *,
    emit: Callable[[DemoEvent], None],
    host: str | None = None,
    seed: int = 2026,
    boot_delay_s: float = 1.0,
    port_offset: int | None = None,
) -> DemoResult:
    """Run the demo against an in-process emulated pump and report through ``emit``.

    Args:
        emit: Called with every :class:`DemoEvent`, in order.
        host: Loopback address for the pump (default: a random one in 127.200.0.0/16).
        seed: Seed of the pump's threshold draws.
        boot_delay_s: The pump's boot delay after a power cycle.
        port_offset: Offset for privileged ports (default: 0 as root, 10000 otherwise).

    Raises:
        ConfigError: a bad argument (the message names it).
    """
    started = anyio.current_time()

    async def attempt(address: str) -> DemoResult:
        # No SYN watcher: the demo makes full connects only, and the sniffer would cost seconds to start.
        pump = EmulatedPump(
            address, seed=seed, boot_delay_s=boot_delay_s, port_offset=port_offset, syn_watch=False
        )
        async with pump:
            return await _story(pump, emit, started)

    return await _on_a_free_address(host, attempt)


async def _on_a_free_address(host: str | None, attempt: Callable[[str], Awaitable[_T]]) -> _T:
    """Run ``attempt`` on ``host``, or on random loopback addresses until one has its ports free.

    Raises:
        ConfigError: ``host`` is not a loopback address, or cannot serve (the message names the field).
    """
    if host is not None:
        check_loopback_host(host)
    for n in range(_BIND_ATTEMPTS):
        try:
            return await attempt(host or _random_host())
        except ConfigError as exc:
            # A random address already in use by someone else: try another one.
            if host is not None or exc.field != "port" or n == _BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _story(pump: EmulatedPump, emit: Callable[[DemoEvent], None], started: float) -> DemoResult:
    first_threshold = pump.threshold
    bounds = threshold_bounds(pump.model.fragility)
    _introduce(pump, bounds, emit)
    emit(DemoEvent("section", "1. Services and banners (one connection at a time)"))
    banners = await _banners(pump, emit)
    emit(DemoEvent("section", "2. Heartbeat latency as load rises (sessions held open on FTP)"))
    latencies = await _slowdown(pump, emit)
    emit(DemoEvent("section", "3. More sessions, one at a time, heartbeat after each"))
    hung_at = await _crash(pump, emit)
    emit(DemoEvent("section", "4. Every session closed: does it come back by itself?"))
    stayed_hung = await _stays_hung(pump, emit)
    emit(DemoEvent("section", f"5. Power cycle (boot delay {pump.boot_delay_s} s)"))
    refused, ok = await _power_cycle(pump, emit)
    emit(DemoEvent("section", "What this means"))
    if bounds is not None:
        safe = bounds[0] - 1
        emit(
            DemoEvent(
                "info",
                f"This model hangs somewhere in {bounds[0]}..{bounds[1]} concurrent sessions. A scanner "
                f"must stay at or below {safe} including its own heartbeat: at most {safe - 1} probe "
                "sessions plus 1 heartbeat. fragileprobe enforces such a ceiling and stops the moment the "
                "heartbeat fails.",
            )
        )
    return DemoResult(
        host=pump.host,
        seed=pump.seed,
        threshold=first_threshold,
        banners=banners,
        latency_by_load_s=tuple(latencies),
        hung_at_sessions=hung_at,
        stayed_hung=stayed_hung,
        refused_while_booting=refused,
        recovered=ok,
        threshold_after_cycle=pump.threshold,
        wall_time_s=anyio.current_time() - started,
    )


def _introduce(pump: EmulatedPump, bounds: tuple[int, int] | None, emit: Callable[[DemoEvent], None]) -> None:
    model = pump.model
    emit(DemoEvent("section", f"An emulated {model.product} on {pump.host}"))
    ports = ", ".join(f"{p}->{b}" if p != b else str(p) for p, b in pump.ports.items())
    offset_note = "" if pump.port_offset == 0 else f" (ports below 1024 at +{pump.port_offset}: not root)"
    emit(DemoEvent("info", f"{model.vendor}; ports {ports}{offset_note}"))
    if bounds is not None:
        emit(
            DemoEvent(
                "info",
                f"It hangs when it holds T concurrent sessions, T drawn per boot uniformly from "
                f"{bounds[0]}..{bounds[1]} (seed {pump.seed}); this boot T = {pump.threshold}.",
            )
        )


async def _banners(pump: EmulatedPump, emit: Callable[[DemoEvent], None]) -> dict[int, str]:
    """Each service's banner (the web page's server and title), one connection at a time."""
    model, host = pump.model, pump.host
    banners: dict[int, str] = {}
    for model_port in model.ports:
        port = pump.port(model_port)
        if model_port == model.web_port:
            result = await http_get(host, port, "/")
            text = f"HTTP {result.status} Server: {result.server!s}; title: {result.title!s}"
        else:
            probe = await grab_banner(host, port, read_timeout_s=1.0)
            text = _printable(probe.data) or f"({probe.outcome.value})"
        banners[model_port] = text
        emit(DemoEvent("row", f"{model_port:>5}/tcp  {model.services[model_port].kind:<7} {text}"))
    return banners


async def _crash(pump: EmulatedPump, emit: Callable[[DemoEvent], None]) -> int | None:
    """Open sessions one at a time with a heartbeat after each; the sessions (heartbeat included) at the
    hang, or None if the pump never hung."""
    host = pump.host
    held: list[ProbeStream] = []
    try:
        for count in range(1, MAX_DEMO_SESSIONS + 1):
            try:
                held.append(await _open_session(host, pump.port(21)))
            except ProbeError as exc:
                emit(DemoEvent("warn", f"session {count}: {exc}"))
                return count
            ok, latency = await _heartbeat(host, pump.web_port)
            if not ok:
                emit(
                    DemoEvent(
                        "warn",
                        f"{count} sessions + heartbeat = {count + 1}: no answer within "
                        f"{HEARTBEAT_TIMEOUT_S} s. The pump is {pump.state.value.upper()}.",
                    )
                )
                return count + 1
            emit(DemoEvent("row", f"{count} sessions + heartbeat: answered in {latency * 1000:6.1f} ms"))
    finally:
        for stream in held:
            await stream.aclose()
    return None


async def _stays_hung(pump: EmulatedPump, emit: Callable[[DemoEvent], None]) -> bool:
    """One second after every session closed: is the pump still hung?"""
    await anyio.sleep(1.0)
    ok, _ = await _heartbeat(pump.host, pump.web_port)
    stayed_hung = not ok and pump.state is DeviceState.HUNG
    emit(
        DemoEvent(
            "warn" if stayed_hung else "ok",
            "No: the heartbeat still fails one second later; only a power cycle helps."
            if stayed_hung
            else "It answers again.",
        )
    )
    stats = pump.stats
    emit(
        DemoEvent(
            "info",
            f"peak sessions {stats.peak_sessions}, crashes {stats.crashes}, "
            f"connection attempts while hung {stats.attempts_while_hung}",
        )
    )
    return stayed_hung


async def _power_cycle(pump: EmulatedPump, emit: Callable[[DemoEvent], None]) -> tuple[bool, bool]:
    """Power-cycle the pump: (its web port refused connections while booting, it answers after boot)."""
    host = pump.host
    refused = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump.power_cycle)
        await _wait_for(lambda: pump.state is DeviceState.BOOTING, 2.0)
        if pump.state is DeviceState.BOOTING:
            probe = await tcp_connect(host, pump.web_port, timeout_s=HEARTBEAT_TIMEOUT_S)
            refused = probe.outcome is Outcome.CLOSED
            emit(DemoEvent("row", f"while booting: connect to the web port -> {probe.outcome.value}"))
    ok, latency = await _heartbeat(host, pump.web_port)
    emit(
        DemoEvent(
            "ok" if ok else "warn",
            f"after boot: GET / -> {'200 OK' if ok else 'no answer'} in {latency * 1000:.1f} ms; "
            f"new threshold T = {pump.threshold}",
        )
    )
    return refused, ok


# --- the whole story -------------------------------------------------------------------------------------
# ``fragileprobe demo`` tells the whole story on a small emulated ward network: a gentle discovery finds the
# pump on the wrong network drop (alert), characterization measures how many sessions it survives (crashes
# and power cycles included), the profile is stored, a second discovery recognizes the model, and the safe
# scanner settings for its group are printed. ``run_demo`` above is the stage-1 tour of one pump.

# Demo timings: short enough that the whole story runs in well under a minute, long enough that the pump's
# slowdown and hang are seen exactly as with production timings (the emulator answers in milliseconds).
STORY_LADDER: tuple[int, ...] = (2, 5, 7, 10)  # a level counts the heartbeat: 1 would be it alone
STORY_DWELL_S = 0.4
STORY_TRIALS = 3
STORY_INTERVAL_S = 0.1
STORY_HEARTBEAT_TIMEOUT_S = 0.3
STORY_HOLD_S = 0.1
# Two healthy beats after a power cycle and three idle beats for the baseline: enough at 0.1 s a beat.
STORY_HEALTHY_BEATS = 2
STORY_BASELINE_BEATS = 3
# Discovery at demo speed: 20 connects/s per host (runZero's default is 40 packets/s) and a short banner
# wait (silent Windows ports would otherwise cost 1.5 s each).
STORY_RATE_PER_HOST = 20.0
STORY_BANNER_TIMEOUT_S = 0.5
STORY_PUMP_NAME = "infusion pump"
# The ward network: offsets from the story pump's last octet -> (model, zone kind).
_WARD = (
    (0, "infusion-pump", "general"),  # the story pump, plugged into the office network by mistake
    (1, "workstation", "general"),
    (2, "printer", "general"),
    (3, "infusion-pump", "medical"),  # its twin, where it belongs
)
_EMPTY_OFFSET = 4  # an address where nothing answers


@dataclass(frozen=True, slots=True)
class StoryResult:
    """What ``fragileprobe demo`` found (the JSON of ``fragileprobe demo --json``)."""

    host: str
    seed: int
    threshold: int | None  # the story pump's drawn threshold on its first boot (ground truth)
    assets: tuple[str, ...]
    groups: dict[str, list[str]]
    alerts: tuple[str, ...]
    model_key: str | None
    safe_ceiling: int | None
    failed_at: int | None
    crashes: int
    power_cycles: int
    recovered: bool
    recognized_group: str | None
    settings: dict[str, Any] | None
    store: str
    wall_time_s: float
    exports_dir: str | None = None  # where the scanner files of the last step were written

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _ward(host: str) -> list[tuple[str, str, str]]:
    """(address, model, zone kind) for the ward around the story pump's address, all in its /24."""
    prefix, last = host.rsplit(".", 1)
    base = int(last)
    span = _EMPTY_OFFSET + 1
    if base + span > 255:  # keep every address inside the /24 and away from .255
        base -= span + 1
    out = []
    for offset, model, zone in _WARD:
        out.append((host if offset == 0 else f"{prefix}.{base + offset}", model, zone))
    out.append((f"{prefix}.{base + _EMPTY_OFFSET}", "", "general"))
    return out


async def run_story(
    *,
    emit: Callable[[DemoEvent], None],
    host: str | None = None,
    seed: int = 2026,
    boot_delay_s: float = 1.0,
    port_offset: int | None = None,
    store_path: str | None = None,
    dwell_s: float = STORY_DWELL_S,
    trials: int = STORY_TRIALS,
) -> StoryResult:
    """Run the whole story on an in-process emulated ward network and report through ``emit``.

    Args:
        emit: Called with every :class:`DemoEvent` in order (kinds as in :func:`run_demo`, plus "alert"
            and "down" for things nobody may miss).
        host: Loopback address of the story pump (default: a random one in 127.200.0.0/16).
        seed: Seed of the devices' threshold draws.
        boot_delay_s: The devices' boot delay after a power cycle.
        port_offset: Offset for privileged ports (default: 0 as root, 10000 otherwise).
        store_path: Profile store file (default: a temporary file, removed afterwards).
        dwell_s: Seconds per characterization level.
        trials: Characterization trials.

    Raises:
        ConfigError: A bad argument (the message names it).
    """
    import tempfile

    from fragileprobe.emulator._fleet import Fleet

    settings = story_settings(dwell_s=dwell_s, trials=trials)  # a bad value is refused before anything starts
    started = anyio.current_time()

    async def attempt(address: str) -> StoryResult:
        ward = _ward(address)
        config = {
            "device": [
                {"host": h, "model": m, "seed": seed + i, "zone": z, "boot_delay_s": boot_delay_s}
                | ({"port_offset": port_offset} if port_offset is not None else {})
                for i, (h, m, z) in enumerate(ward)
                if m
            ],
            "empty": [h for h, m, _ in ward if not m],
        }
        async with Fleet(config, control_port=None) as fleet:
            with tempfile.TemporaryDirectory(prefix="fragileprobe-demo-") as tmp:
                path = store_path or f"{tmp}/fragileprobe-demo.db"
                scene = _Scene.of(fleet, ward, seed)
                return await _whole_story(scene, emit, started, path, settings)

    return await _on_a_free_address(host, attempt)


def story_settings(
    *, dwell_s: float = STORY_DWELL_S, trials: int = STORY_TRIALS, recovery: Any = None
) -> CharacterizeSettings:
    """The story's characterization settings: the production rules at demo speed.

    Raises:
        ConfigError: A bad ``dwell_s`` or ``trials`` (``field`` names it).
    """
    from fragileprobe._charsettings import CharacterizeSettings, RecoverySettings, TimingSettings
    from fragileprobe._ramp import RampConfig

    return CharacterizeSettings(
        timing=TimingSettings(
            dwell_s=dwell_s,
            interval_s=STORY_INTERVAL_S,
            heartbeat_timeout_s=STORY_HEARTBEAT_TIMEOUT_S,
            hold_s=STORY_HOLD_S,
            baseline_beats=STORY_BASELINE_BEATS,
        ),
        recovery=RecoverySettings(hook=recovery, healthy_beats=STORY_HEALTHY_BEATS),
        ramp=RampConfig(ladder=STORY_LADDER, trials=trials),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Scene:
    """The ward network of the story: its devices, the scope and zones, and how discovery reaches them."""

    fleet: Any
    ward: list[tuple[str, str, str]]
    scope: Scope
    zones: Zones
    ports: list[int]
    aliases: dict[int, int]
    seed: int

    @classmethod
    def of(cls, fleet: Any, ward: list[tuple[str, str, str]], seed: int) -> _Scene:
        from fragileprobe._groups import Zone, Zones
        from fragileprobe._scope import Scope

        def ranges(kind: str) -> tuple[str, ...]:
            return tuple(h for h, _, z in ward if z == kind)

        zones = Zones(
            [
                Zone(name="Office LAN", kind="general", ranges=ranges("general")),
                Zone(name="ICU device VLAN", kind="medical", ranges=ranges("medical")),
            ]
        )
        devices = list(fleet.devices.values())
        return cls(
            fleet=fleet,
            ward=ward,
            scope=Scope([h for h, _, _ in ward]),
            zones=zones,
            ports=sorted({b for d in devices for b in d.ports.values()}),
            aliases={b: p for d in devices for p, b in d.ports.items() if b != p},
            seed=seed,
        )

    @property
    def pump_host(self) -> str:
        return self.ward[0][0]

    async def discover(self, hosts: list[str], store: ProfileStore) -> DiscoveryReport:
        from fragileprobe._discovery_run import discover

        return await discover(
            hosts,
            scope=self.scope,
            ports=self.ports,
            zones=self.zones,
            store=store,
            rate_per_host=STORY_RATE_PER_HOST,
            banner_timeout_s=STORY_BANNER_TIMEOUT_S,
            port_aliases=self.aliases,
            seed=self.seed,
        )


async def _whole_story(
    scene: _Scene,
    emit: Callable[[DemoEvent], None],
    started: float,
    store_path: str,
    settings: CharacterizeSettings,
) -> StoryResult:
    from fragileprobe import export
    from fragileprobe._store import ProfileStore

    pump = scene.fleet.device(scene.pump_host)
    first_threshold = pump.threshold
    _set_the_scene(scene, first_threshold, emit)
    with ProfileStore(store_path) as store:
        emit(DemoEvent("section", "1. Gentle discovery (one session per host at a time, full connects only)"))
        report = await _first_discovery(scene, store, emit)
        emit(DemoEvent("section", "2. A closer look: the pump's answer time as load rises"))
        await _slowdown(pump, emit)
        char, cycles = await _characterization(scene, report, store, settings, emit)
        emit(DemoEvent("section", "4. The stored profile"))
        temporary = _stored_profile(store, store_path, char.model_key, emit)
        emit(DemoEvent("section", "5. Discovery again: the model is recognized everywhere it is plugged in"))
        again, recognized = await _second_discovery(scene, store, emit)
        emit(DemoEvent("section", "6. Recommended scanner settings for the pump's group"))
        group = recognized or export.MEDICAL_UNKNOWN_GROUP
        group_settings = export.template_for_group(group, store, assets=again.groups.get(group, ()))
        exports_dir = _scanner_files(store, store_path, group_settings, temporary=temporary, emit=emit)
    return StoryResult(
        host=scene.pump_host,
        seed=scene.seed,
        threshold=first_threshold,
        assets=tuple(a.host for a in report.assets),
        groups={g: [a.host for a in m] for g, m in report.groups.items()},
        alerts=tuple(a.host for a in report.alerts),
        model_key=char.model_key,
        safe_ceiling=char.safe_ceiling,
        failed_at=char.failed_at,
        crashes=char.crashes,
        power_cycles=cycles,
        recovered=pump.state is DeviceState.UP,
        recognized_group=recognized,
        settings=group_settings.to_dict(),
        store=store_path,
        wall_time_s=anyio.current_time() - started,
        exports_dir=exports_dir,
    )


def _set_the_scene(scene: _Scene, threshold: int | None, emit: Callable[[DemoEvent], None]) -> None:
    emit(DemoEvent("section", "The scene: a small ward network, emulated on loopback"))
    for h, model, zone in scene.ward:
        what = scene.fleet.device(h).model.product if model else "(nothing there)"
        emit(DemoEvent("row", f"{h:<16} {zone + ' zone':<13} {what}"))
    emit(
        DemoEvent(
            "info",
            f"The pump at {scene.pump_host} was plugged into the office network by mistake. "
            f"It hangs when it holds T concurrent sessions; this boot T = {threshold} "
            "(nobody tells fragileprobe that).",
        )
    )
    if scene.aliases:
        offset = next(iter(scene.fleet.devices.values())).port_offset
        emit(DemoEvent("info", f"Not root: services below port 1024 listen at +{offset}."))


async def _first_discovery(
    scene: _Scene, store: ProfileStore, emit: Callable[[DemoEvent], None]
) -> DiscoveryReport:
    """Discover the whole ward: the assets, their groups, the alert for the pump on the wrong network."""
    targets = [h for h, _, _ in scene.ward]
    report = await scene.discover(targets, store)
    for asset in report.assets:
        services = ", ".join(
            f"{s.port}/{s.service}"
            + (f" {s.product}" if s.product else "")
            + (f" {s.version}" if s.version else "")
            for s in asset.services
        )
        emit(DemoEvent("row", f"{asset.host:<16} [{'; '.join(asset.groups)}] {services}"))
    for alert in report.alerts:
        emit(
            DemoEvent(
                "alert",
                f"ALERT: {alert.host} looks like a medical device and sits in zone "
                f"'{alert.zone}' ({alert.zone_kind}): wrong network drop?",
            )
        )
    peak = max(d.stats.peak_sessions for d in scene.fleet.devices.values())
    emit(
        DemoEvent(
            "info",
            f"{len(report.assets)} hosts answered out of {len(targets)} in "
            f"{report.wall_time_s:.1f} s; no device hung: peak sessions per device "
            f"{peak}.",
        )
    )
    if not any(a.host == scene.pump_host for a in report.assets):
        raise ProbeError(f"discovery did not find the pump at {scene.pump_host}")
    return report


async def _characterization(
    scene: _Scene,
    report: DiscoveryReport,
    store: ProfileStore,
    settings: CharacterizeSettings,
    emit: Callable[[DemoEvent], None],
) -> tuple[Characterization, int]:
    """Characterize the pump found by discovery, power cycles narrated; (the result, power cycles)."""
    from fragileprobe._characterize import characterize

    pump = scene.fleet.device(scene.pump_host)
    found = next(a for a in report.assets if a.host == scene.pump_host)
    ramp, timing = settings.ramp, settings.timing
    emit(
        DemoEvent(
            "section",
            f"3. Characterization: ladder {', '.join(map(str, ramp.ladder))}, "
            f"{ramp.trials} trials, {timing.dwell_s:g} s per level, heartbeat every "
            f"{timing.interval_s:g} s",
        )
    )
    emit(
        DemoEvent(
            "info",
            "   N counts every session the pump holds from us, the heartbeat's included, "
            "until the pump has let go of it: a level, the safe ceiling and the scanner "
            "settings below all mean that one number",
        )
    )
    cycles = 0

    async def power_cycle() -> None:
        # The emulator's recovery hook, narrated: the pump is really hung when this runs.
        nonlocal cycles
        emit(
            DemoEvent(
                "down",
                f"The pump is {pump.state.value.upper()}: it stopped answering its "
                "heartbeat. Every session was cancelled at once.",
            )
        )
        boot = f"boot {pump.boot_delay_s:g} s"
        emit(DemoEvent("info", f"   power cycle through the emulator hook ({boot}) ..."))
        await pump.power_cycle()
        cycles += 1
        emit(DemoEvent("ok", f"   back up (new T = {pump.threshold}); waiting for healthy heartbeats"))

    char = await characterize(
        found.target(name=STORY_PUMP_NAME),
        scope=scene.scope,
        settings=settings.replace(recovery=power_cycle),
        store=store,
        name=STORY_PUMP_NAME,
        progress=_narrate_levels(emit),
    )
    for line in char.summary().splitlines():
        emit(DemoEvent("ok" if line.startswith("Safe ceiling") else "info", line))
    return char, cycles


def _narrate_levels(emit: Callable[[DemoEvent], None]) -> Callable[[ProgressEvent], None]:
    """A progress callback that tells each level's end."""

    def progress(event: ProgressEvent) -> None:
        if event.kind == "level_end":
            kind = {"passed": "row", "failed": "warn", "warned": "warn"}.get(event.outcome or "", "row")
            level = event.level or 0
            emit(
                DemoEvent(
                    kind,
                    f"trial {event.trial + 1}: {level:>2} sessions on the pump "
                    f"({level - 1} held + the heartbeat) -> "
                    f"{(event.outcome or '?').upper()}",
                )
            )

    return progress


def _stored_profile(
    store: ProfileStore, store_path: str, model_key: str | None, emit: Callable[[DemoEvent], None]
) -> bool:
    """Show the stored profile; True when the store is the demo's temporary one."""
    import tempfile

    profile = store.profile(model_key) if model_key else None
    if profile is not None:
        emit(DemoEvent("info", profile.summary()))
    temporary = store_path.startswith(tempfile.gettempdir()) and "fragileprobe-demo-" in store_path
    emit(
        DemoEvent(
            "info",
            f"stored in {store_path}" + (" (temporary: --store PATH keeps it)" if temporary else ""),
        )
    )
    return temporary


async def _second_discovery(
    scene: _Scene, store: ProfileStore, emit: Callable[[DemoEvent], None]
) -> tuple[DiscoveryReport, str | None]:
    """Discover the pumps again: the model is known now; (the report, the story pump's recognized group)."""
    again = await scene.discover([h for h, m, _ in scene.ward if m == "infusion-pump"], store)
    recognized: str | None = None
    for asset in again.assets:
        emit(
            DemoEvent(
                "row",
                f"{asset.host:<16} [{'; '.join(asset.groups)}] probed with at most "
                f"{asset.sessions_limit} session(s); "
                f"stored ceiling {asset.ceiling}",
            )
        )
        if asset.known_model and asset.host == scene.pump_host:
            recognized = asset.known_model
    return again, recognized


def _scanner_files(
    store: ProfileStore,
    store_path: str,
    group_settings: Any,
    *,
    temporary: bool,
    emit: Callable[[DemoEvent], None],
) -> str:
    """Show the group's scanner settings and write every scanner's files; the directory written."""
    import tempfile
    from pathlib import Path

    from fragileprobe import export

    for line in group_settings.text().splitlines():
        emit(DemoEvent("row", line))
    emit(DemoEvent("info", "Other groups keep their scanner defaults (printer ports 9100-9107 excluded)."))
    # The files each scanner imports (profiles export --format all), next to a kept store, else in a
    # directory of their own that outlives the demo's temporary store.
    exports_dir = (
        tempfile.mkdtemp(prefix="fragileprobe-demo-exports-")
        if temporary
        else str(Path(store_path).parent / "fragileprobe-exports")
    )
    plan = export.plan_exports(store.assets(), store.profiles())
    written = export.write_exports(exports_dir, export.render_exports(plan))
    emit(
        DemoEvent(
            "ok",
            f"Scanner files written to {exports_dir} ({len(written)} files: nessus/, gmp/, "
            "insightvm/, nmap/, targets/); see docs/scanners/",
        )
    )
    return exports_dir


async def _slowdown(pump: Any, emit: Callable[[DemoEvent], None]) -> list[tuple[int, float]]:
    """Hold sessions on FTP and time the web page: the knee a careful prober can see coming.

    Returns (sessions held, heartbeat latency) per load of ``LATENCY_LOADS``.
    """
    host = pump.host
    held: list[ProbeStream] = []
    latencies: list[tuple[int, float]] = []
    try:
        for load in LATENCY_LOADS:
            while len(held) < load:
                held.append(await _open_session(host, pump.port(21)))
            ok, latency = await _heartbeat(host, pump.web_port)
            latencies.append((load, latency))
            emit(
                DemoEvent(
                    "row" if ok else "warn",
                    f"{load} sessions + 1 heartbeat = {load + 1}: GET / in {latency * 1000:6.1f} ms"
                    + ("" if ok else "  (no answer!)"),
                )
            )
    finally:
        for stream in held:
            await stream.aclose()
    await _wait_for(lambda: pump.stats.sessions_now == 0, 2.0)
    return latencies
