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
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from fragileprobe._errors import ConfigError, ProbeError
from fragileprobe._probes import Outcome, grab_banner, http_get, open_stream, tcp_connect
from fragileprobe.emulator._device import EmulatedPump, check_loopback_host
from fragileprobe.emulator._fragility import DeviceState, threshold_bounds

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fragileprobe._probes import ProbeStream

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
    started = time.monotonic()

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
            if host is not None or not str(exc).startswith("port:") or n == _BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _story(pump: EmulatedPump, emit: Callable[[DemoEvent], None], started: float) -> DemoResult:
    host = pump.host
    model = pump.model
    first_threshold = pump.threshold
    bounds = threshold_bounds(model.fragility)
    emit(DemoEvent("section", f"An emulated {model.product} on {host}"))
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

    # 1. services and banners
    emit(DemoEvent("section", "1. Services and banners (one connection at a time)"))
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

    # 2. latency under load
    emit(DemoEvent("section", "2. Heartbeat latency as load rises (sessions held open on FTP)"))
    latencies: list[tuple[int, float]] = []
    held: list[ProbeStream] = []
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
        held.clear()
    await _wait_for(lambda: pump.stats.sessions_now == 0, 2.0)

    # 3. the crash
    emit(DemoEvent("section", "3. More sessions, one at a time, heartbeat after each"))
    hung_at: int | None = None
    try:
        for count in range(1, MAX_DEMO_SESSIONS + 1):
            try:
                held.append(await _open_session(host, pump.port(21)))
            except ProbeError as exc:
                emit(DemoEvent("warn", f"session {count}: {exc}"))
                hung_at = count
                break
            ok, latency = await _heartbeat(host, pump.web_port)
            if ok:
                emit(DemoEvent("row", f"{count} sessions + heartbeat: answered in {latency * 1000:6.1f} ms"))
                continue
            hung_at = count + 1
            emit(
                DemoEvent(
                    "warn",
                    f"{count} sessions + heartbeat = {count + 1}: no answer within "
                    f"{HEARTBEAT_TIMEOUT_S} s. The pump is {pump.state.value.upper()}.",
                )
            )
            break
    finally:
        for stream in held:
            await stream.aclose()
        held.clear()

    # 4. stays hung
    emit(DemoEvent("section", "4. Every session closed: does it come back by itself?"))
    await anyio.sleep(1.0)
    ok, _ = await _heartbeat(host, pump.web_port)
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

    # 5. power cycle
    emit(DemoEvent("section", f"5. Power cycle (boot delay {pump.boot_delay_s} s)"))
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

    # summary
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
        host=host,
        seed=pump.seed,
        threshold=first_threshold,
        banners=banners,
        latency_by_load_s=tuple(latencies),
        hung_at_sessions=hung_at,
        stayed_hung=stayed_hung,
        refused_while_booting=refused,
        recovered=ok,
        threshold_after_cycle=pump.threshold,
        wall_time_s=time.monotonic() - started,
    )


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

    started = time.monotonic()

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
                return await _whole_story(fleet, ward, emit, started, seed, path, dwell_s, trials)

    return await _on_a_free_address(host, attempt)


async def _whole_story(
    fleet: Any,
    ward: list[tuple[str, str, str]],
    emit: Callable[[DemoEvent], None],
    started: float,
    seed: int,
    store_path: str,
    dwell_s: float,
    trials: int,
) -> StoryResult:
    import tempfile
    from pathlib import Path

    from fragileprobe import export
    from fragileprobe._characterize import characterize
    from fragileprobe._discovery import discover
    from fragileprobe._groups import Zone, Zones
    from fragileprobe._scope import Scope
    from fragileprobe._store import ProfileStore

    pump_host = ward[0][0]
    pump = fleet.device(pump_host)
    first_threshold = pump.threshold
    targets = [h for h, _, _ in ward]
    scope = Scope(targets)
    zones = Zones([
        Zone(name="Office LAN", kind="general", ranges=tuple(h for h, _, z in ward if z == "general")),
        Zone(name="ICU device VLAN", kind="medical", ranges=tuple(h for h, _, z in ward if z == "medical")),
    ])  # fmt: skip
    devices = list(fleet.devices.values())
    ports = sorted({b for d in devices for b in d.ports.values()})
    aliases = {b: p for d in devices for p, b in d.ports.items() if b != p}

    emit(DemoEvent("section", "The scene: a small ward network, emulated on loopback"))
    for h, model, zone in ward:
        what = fleet.device(h).model.product if model else "(nothing there)"
        emit(DemoEvent("row", f"{h:<16} {zone + ' zone':<13} {what}"))
    emit(DemoEvent("info", f"The pump at {pump_host} was plugged into the office network by mistake. "
                           f"It hangs when it holds T concurrent sessions; this boot T = {first_threshold} "
                           "(nobody tells fragileprobe that)."))  # fmt: skip
    if aliases:
        emit(DemoEvent("info", f"Not root: services below port 1024 listen at +{devices[0].port_offset}."))

    with ProfileStore(store_path) as store:
        # 1. discovery
        emit(DemoEvent("section", "1. Gentle discovery (one session per host at a time, full connects only)"))
        report = await discover(
            targets, scope=scope, ports=ports, zones=zones, store=store, rate_per_host=STORY_RATE_PER_HOST,
            banner_timeout_s=STORY_BANNER_TIMEOUT_S, port_aliases=aliases, seed=seed,
        )  # fmt: skip
        for asset in report.assets:
            services = ", ".join(
                f"{s.port}/{s.service}" + (f" {s.product}" if s.product else "")
                + (f" {s.version}" if s.version else "")
                for s in asset.services
            )  # fmt: skip
            emit(DemoEvent("row", f"{asset.host:<16} [{'; '.join(asset.groups)}] {services}"))
        for alert in report.alerts:
            emit(DemoEvent("alert", f"ALERT: {alert.host} looks like a medical device and sits in zone "
                                    f"'{alert.zone}' ({alert.zone_kind}): wrong network drop?"))  # fmt: skip
        emit(DemoEvent("info", f"{len(report.assets)} hosts answered out of {len(targets)} in "
                               f"{report.wall_time_s:.1f} s; no device hung: peak sessions per device "
                               f"{max(d.stats.peak_sessions for d in devices)}."))  # fmt: skip
        found = next((a for a in report.assets if a.host == pump_host), None)
        if found is None:
            raise ProbeError(f"discovery did not find the pump at {pump_host}")

        # 2. the pump slows down under load (stage 1 of the demo)
        emit(DemoEvent("section", "2. A closer look: the pump's answer time as load rises"))
        await _slowdown(pump, emit)

        # 3. characterization
        emit(DemoEvent("section", f"3. Characterization: ladder {', '.join(map(str, STORY_LADDER))}, "
                                  f"{trials} trials, {dwell_s:g} s per level, heartbeat every "
                                  f"{STORY_INTERVAL_S:g} s"))  # fmt: skip
        emit(DemoEvent("info", "   N counts every session the pump holds from us, the heartbeat's included, "
                               "until the pump has let go of it: a level, the safe ceiling and the scanner "
                               "settings below all mean that one number"))  # fmt: skip
        cycles = {"n": 0}

        async def power_cycle() -> None:
            # The emulator's recovery hook, narrated: the pump is really hung when this runs.
            emit(DemoEvent("down", f"The pump is {pump.state.value.upper()}: it stopped answering its "
                                   "heartbeat. Every session was cancelled at once."))  # fmt: skip
            emit(
                DemoEvent(
                    "info", f"   power cycle through the emulator hook (boot {pump.boot_delay_s:g} s) ..."
                )
            )
            await pump.power_cycle()
            cycles["n"] += 1
            emit(DemoEvent("ok", f"   back up (new T = {pump.threshold}); waiting for healthy heartbeats"))

        def progress(event: Any) -> None:
            if event.kind == "level_end":
                kind = {"passed": "row", "failed": "warn", "warned": "warn"}.get(event.outcome, "row")
                level = event.level or 0
                emit(DemoEvent(kind, f"trial {event.trial + 1}: {level:>2} sessions on the pump "
                                     f"({level - 1} held + the heartbeat) -> "
                                     f"{(event.outcome or '?').upper()}"))  # fmt: skip

        char = await characterize(
            found.target(name=STORY_PUMP_NAME), scope=scope, ladder=STORY_LADDER, dwell_s=dwell_s,
            trials=trials, recovery=power_cycle, store=store, name=STORY_PUMP_NAME,
            interval_s=STORY_INTERVAL_S,
            heartbeat_timeout_s=STORY_HEARTBEAT_TIMEOUT_S, hold_s=STORY_HOLD_S, healthy_beats=2,
            baseline_beats=3, progress=progress,
        )  # fmt: skip
        for line in char.summary().splitlines():
            emit(DemoEvent("ok" if line.startswith("Safe ceiling") else "info", line))

        # 4. the profile
        emit(DemoEvent("section", "4. The stored profile"))
        profile = store.profile(char.model_key) if char.model_key else None
        if profile is not None:
            emit(DemoEvent("info", profile.summary()))
        temporary = store_path.startswith(tempfile.gettempdir()) and "fragileprobe-demo-" in store_path
        emit(
            DemoEvent(
                "info",
                f"stored in {store_path}" + (" (temporary: --store PATH keeps it)" if temporary else ""),
            )
        )

        # 5. discovery again: the model is known now
        emit(DemoEvent("section", "5. Discovery again: the model is recognized everywhere it is plugged in"))
        again = await discover(
            [h for h, m, _ in ward if m == "infusion-pump"], scope=scope, ports=ports, zones=zones,
            store=store,
            rate_per_host=STORY_RATE_PER_HOST, banner_timeout_s=STORY_BANNER_TIMEOUT_S, port_aliases=aliases,
            seed=seed,
        )  # fmt: skip
        recognized: str | None = None
        for asset in again.assets:
            emit(DemoEvent("row", f"{asset.host:<16} [{'; '.join(asset.groups)}] probed with at most "
                                  f"{asset.sessions_limit} session(s); "
                                  f"stored ceiling {asset.ceiling}"))  # fmt: skip
            if asset.known_model and asset.host == pump_host:
                recognized = asset.known_model

        # 6. settings
        emit(DemoEvent("section", "6. Recommended scanner settings for the pump's group"))
        group = recognized or export.MEDICAL_UNKNOWN_GROUP
        settings = export.template_for_group(group, store, assets=again.groups.get(group, ()))
        for line in settings.text().splitlines():
            emit(DemoEvent("row", line))
        emit(
            DemoEvent("info", "Other groups keep their scanner defaults (printer ports 9100-9107 excluded).")
        )
        # The files each scanner imports (profiles export --format all), next to a kept store, else in a
        # directory of their own that outlives the demo's temporary store.
        exports_dir = (tempfile.mkdtemp(prefix="fragileprobe-demo-exports-") if temporary
                       else str(Path(store_path).parent / "fragileprobe-exports"))
        plan = export.plan_exports(store.assets(), store.profiles())
        written = export.write_exports(exports_dir, export.render_exports(plan))
        emit(DemoEvent("ok", f"Scanner files written to {exports_dir} ({len(written)} files: nessus/, gmp/, "
                             "insightvm/, nmap/, targets/); see docs/scanners/"))
    return StoryResult(
        host=pump_host, seed=seed, threshold=first_threshold, assets=tuple(a.host for a in report.assets),
        groups={g: [a.host for a in m] for g, m in report.groups.items()},
        alerts=tuple(a.host for a in report.alerts), model_key=char.model_key, safe_ceiling=char.safe_ceiling,
        failed_at=char.failed_at, crashes=char.crashes, power_cycles=cycles["n"],
        recovered=pump.state is DeviceState.UP, recognized_group=recognized, settings=settings.to_dict(),
        store=store_path, wall_time_s=time.monotonic() - started, exports_dir=exports_dir,
    )  # fmt: skip


async def _slowdown(pump: Any, emit: Callable[[DemoEvent], None]) -> None:
    """Hold sessions on FTP and time the web page: the knee a careful prober can see coming."""
    host = pump.host
    held: list[ProbeStream] = []
    try:
        for load in LATENCY_LOADS:
            while len(held) < load:
                held.append(await _open_session(host, pump.port(21)))
            ok, latency = await _heartbeat(host, pump.web_port)
            emit(DemoEvent("row" if ok else "warn",
                           f"{load} sessions + 1 heartbeat = {load + 1}: GET / in {latency * 1000:6.1f} ms"
                           + ("" if ok else "  (no answer!)")))  # fmt: skip
    finally:
        for stream in held:
            await stream.aclose()
    await _wait_for(lambda: pump.stats.sessions_now == 0, 2.0)
