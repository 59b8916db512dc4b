"""The ``fragileprobe`` command line.

Commands print; the work happens in the library (``fragileprobe._demo``, ``fragileprobe.emulator``). Bad
input is reported as one line on stderr with exit code 2, never a traceback. typer and rich are imported
here only, so ``import fragileprobe`` stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NoReturn

import anyio
import anyio.abc
import structlog
import typer
from rich.console import Console
from rich.markup import escape

from fragileprobe._errors import ConfigError, FragileProbeError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from fragileprobe._charsettings import CharacterizeSettings, RecoverySettings
    from fragileprobe._demo import DemoEvent
    from fragileprobe._discovery import DiscoveryReport
    from fragileprobe._discovery_settings import DiscoverySettings
    from fragileprobe._groups import Rules, Zones
    from fragileprobe._profile import Characterization
    from fragileprobe._progress import LogTap, TerminalCharacterizeView, TerminalDiscoveryView
    from fragileprobe._scope import Scope
    from fragileprobe._shield import Shield
    from fragileprobe._store import ProfileStore
    from fragileprobe.emulator._fleet import Fleet, FleetConfig
    from fragileprobe.export import GroupScanSettings

__all__ = ["app", "main"]

app = typer.Typer(
    name="fragileprobe",
    help="Look at fragile network devices (infusion pumps, monitors) without knocking them over.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit code for bad input, like argparse and click usage errors.
EXIT_BAD_INPUT = 2


def _fail(message: str) -> NoReturn:
    _err.print(f"error: {escape(message)}")
    raise typer.Exit(EXIT_BAD_INPUT)


def _configure_logging(level: int, *, tap: LogTap | None = None) -> None:
    # The CLI is an application: it (and only it) decides where library log events go: stderr, so stdout
    # stays for results that other programs parse. With a tap (live progress), every event is built and the
    # tap sees the few it shows (heartbeat latencies, device down); the level filter then drops the rest.
    processors: list[Any] = []
    if tap is not None:
        processors.append(tap)
    processors += [
        _LevelFilter(level),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="%H:%M:%S"),
        structlog.dev.ConsoleRenderer(colors=False),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if tap is not None else level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


class _LevelFilter:
    """structlog processor: drop events below ``level`` (used when a tap needs every event built)."""

    _LEVELS: ClassVar[dict[str, int]] = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "warn": logging.WARNING,
        "error": logging.ERROR,
        "exception": logging.ERROR,
        "critical": logging.CRITICAL,
    }

    def __init__(self, level: int) -> None:
        self.level = level

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if self._LEVELS.get(method_name, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event_dict


# --- emulate -------------------------------------------------------------------------------------------
def _print_fleet(fleet: Fleet, *, quiet: bool) -> None:
    for device in fleet.devices.values():
        if quiet:
            break
        ports = ",".join(f"{p}:{b}" for p, b in device.ports.items())
        zone = fleet.zone_of(device.host)
        print(
            f"device {device.host} {device.model.name} threshold={device.threshold} seed={device.seed} "
            f"ports={ports}" + (f" zone={zone}" if zone else ""),
            flush=True,
        )
    offsets = {d.port_offset for d in fleet.devices.values()}
    if any(offsets):
        print(f"note: ports below 1024 are served at +{max(offsets)} (not root or --port-offset)", flush=True)
    if fleet.empty and not quiet:
        print(f"empty {' '.join(fleet.empty)}", flush=True)
    with contextlib.suppress(RuntimeError):
        print(f"control {fleet.control_url}", flush=True)
    print(f"ready: {len(fleet.devices)} device(s), {len(fleet.empty)} empty; Ctrl-C to stop", flush=True)


async def _run_fleet(config: FleetConfig, control_port: int | None, quiet: bool) -> None:
    from fragileprobe.emulator._fleet import Fleet

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Fleet(config, control_port=control_port) as fleet:
            _print_fleet(fleet, quiet=quiet)
            async for signum in signals:
                print(f"stopping ({signal.Signals(signum).name})", flush=True)
                break


@app.command()
def emulate(
    model: Annotated[
        str, typer.Option(help="Model of the single device (see --list-models).")
    ] = "infusion-pump",
    host: Annotated[str, typer.Option(help="Loopback address of the single device.")] = "127.0.1.5",
    seed: Annotated[int | None, typer.Option(help="Seed of the threshold draws.")] = None,
    threshold: Annotated[int | None, typer.Option(help="Override the crash threshold base.")] = None,
    jitter: Annotated[int | None, typer.Option(help="Override the threshold jitter.")] = None,
    boot_delay: Annotated[float | None, typer.Option(help="Seconds a power cycle takes.")] = None,
    port_offset: Annotated[
        int | None, typer.Option(help="Offset for ports below 1024 (default: 0 as root, else 10000).")
    ] = None,
    fleet: Annotated[Path | None, typer.Option(help="Run the fleet described by this TOML file.")] = None,
    hospital_fleet: Annotated[
        bool, typer.Option(help="Run the standard 254-address hospital fleet.")
    ] = False,
    hostile_fleet: Annotated[
        bool, typer.Option(help="Run the fleet of hostile devices (80 addresses).")
    ] = False,
    prefix: Annotated[
        str | None, typer.Option(help="First three octets of the hospital/hostile fleet.")
    ] = None,
    syn_watch: Annotated[
        bool | None,
        typer.Option(help="SYN-scan watchers for syn-sensitive devices (root; default: on for one device)."),
    ] = None,
    control_port: Annotated[int, typer.Option(help="Port of the control API on 127.0.0.1 (0: any).")] = 0,
    quiet: Annotated[bool, typer.Option(help="Do not list every device.")] = False,
    list_models: Annotated[bool, typer.Option(help="List the built-in models and exit.")] = False,
) -> None:
    """Run an emulated device (or a fleet) on loopback until interrupted."""
    from fragileprobe.emulator._fleet import FleetConfig
    from fragileprobe.emulator._fleet import hospital_fleet as make_hospital
    from fragileprobe.emulator._fleet import hostile_fleet as make_hostile
    from fragileprobe.emulator._models import MODELS

    if list_models:
        for name, m in MODELS.items():
            print(f"{name:16} {len(m.services):2} ports  {m.product}")
        return
    _configure_logging(logging.INFO)
    try:
        if (fleet is not None) + hospital_fleet + hostile_fleet > 1:
            _fail("--fleet, --hospital-fleet and --hostile-fleet: choose one")
        if fleet is not None:
            config = FleetConfig.from_toml(fleet)
        elif hospital_fleet:
            config = make_hospital(
                prefix or "127.77.0", seed=seed or 0, boot_delay_s=boot_delay, port_offset=port_offset
            )
        elif hostile_fleet:
            config = make_hostile(
                prefix or "127.76.0", seed=seed or 0, boot_delay_s=boot_delay, port_offset=port_offset
            )
        else:
            config = FleetConfig.from_mapping(
                {
                    "device": [
                        {
                            k: v
                            for k, v in {
                                "host": host,
                                "model": model,
                                "seed": seed,
                                "threshold": threshold,
                                "jitter": jitter,
                                "boot_delay_s": boot_delay,
                                "port_offset": port_offset,
                            }.items()
                            if v is not None
                        }
                    ],
                    # One device: watch for SYN scans unless told not to (a fleet defaults to off).
                    "syn_watch": True if syn_watch is None else syn_watch,
                }
            )
        if syn_watch is not None and config.syn_watch != syn_watch:
            config = dataclasses.replace(config, syn_watch=syn_watch)
        if not 0 <= control_port <= 65535:
            _fail(f"--control-port: {control_port} out of range 0-65535")
        anyio.run(_run_fleet, config, control_port, quiet)
    except FragileProbeError as exc:
        _fail(str(exc))


# --- shared by the measuring commands ------------------------------------------------------------------
# Exit codes (documented in docs/cli.md and every command's --help).
EXIT_OK = 0
EXIT_DEVICE_TROUBLE = (
    1  # a device went down and could not be brought back, none is safe, or alerts were raised
)
EXIT_INTERRUPTED = (
    130  # Ctrl-C (SIGINT) or SIGTERM: stopped cleanly, progress saved; 128 + SIGINT by convention
)

_EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 device trouble found; 2 bad input (one line on stderr); 130 interrupted "
    "(Ctrl-C: work so far is saved, the resume command is printed)."
)
_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON only on stdout (progress goes to stderr).")
]
StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        help="Profile store (SQLite) for results, profiles and the inventory. Every finished trial or host "
        "is written at once, so an interrupted run loses nothing finished and can be resumed.",
    ),
]
LogLevelOpt = Annotated[
    str, typer.Option("--log-level", help="Library log events on stderr: debug, info, warning, error.")
]


def _trouble(message: str) -> NoReturn:
    _err.print(f"device trouble: {escape(message)}")
    raise typer.Exit(EXIT_DEVICE_TROUBLE)


def _log_level(name: str) -> int:
    level = _LOG_LEVELS.get(name.lower())
    if level is None:
        _fail(f"--log-level: {name!r} is not one of {', '.join(_LOG_LEVELS)}")
    return level


def _print_json(data: Any) -> None:
    # Plain print (not rich): JSON must reach stdout byte for byte, never wrapped or highlighted.
    print(json.dumps(data, indent=2, default=str), flush=True)


def _resume_command() -> str:
    """The command line this process was started with, plus --resume (what to run to continue)."""
    args = [a for a in sys.argv[1:] if a != "--resume"]
    return shlex.join(["fragileprobe", *args, "--resume"])


async def _interruptible(fn: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
    """Run ``fn``; SIGINT/SIGTERM cancel it cleanly (its finally blocks run). Returns (result, interrupted).

    A signal handler, not KeyboardInterrupt: cancellation reaches every await point, so sessions in flight
    are closed by their context managers and the store keeps everything committed so far.
    """
    outcome: dict[str, Any] = {}
    interrupted = False

    async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        nonlocal interrupted
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                interrupted = True
                tg.cancel_scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        await tg.start(watch)
        try:
            outcome["value"] = await fn()
        except FragileProbeError as exc:  # handed to the caller after the task group has closed
            outcome["error"] = exc
        tg.cancel_scope.cancel()
    if "error" in outcome and not interrupted:
        raise outcome["error"]
    return outcome.get("value"), interrupted


def _handle_library_error(exc: FragileProbeError) -> NoReturn:
    """Map fragileprobe's errors to exit codes: the device's fault -> 1, the input's fault -> 2."""
    from fragileprobe._errors import DeviceDownError, ProbeError, RecoveryError

    if isinstance(exc, DeviceDownError | RecoveryError | ProbeError):
        _trouble(str(exc))
    _fail(str(exc))


def _parse_ladder(text: str) -> tuple[int, ...]:
    from fragileprobe._numbers import is_ascii_decimal

    pieces = [x for x in text.replace(" ", "").split(",") if x]
    if not all(is_ascii_decimal(x) for x in pieces):  # int() would take '٢' and '+2'; '²' would crash it
        _fail(f"--ladder: {text!r} is not a comma-separated list of integers like '1,2,5,7,10'")
    levels = tuple(int(x) for x in pieces)
    if not levels:
        _fail("--ladder: give at least one level, like '1,2,5,7,10'")
    return levels


def _open_store(path: Path) -> ProfileStore:
    from fragileprobe._store import ProfileStore

    return ProfileStore(path)


# --- demo ----------------------------------------------------------------------------------------------
_STYLES = {
    "section": "bold cyan",
    "info": "",
    "ok": "green",
    "warn": "bold red",
    "row": "",
    "alert": "bold red",
}


def _print_event(event: DemoEvent, console: Console | None = None) -> None:
    out = console or _out
    text = escape(event.text)
    if event.kind == "section":
        out.print()
        out.print(f"[bold cyan]== {text}[/]")
    elif event.kind == "row":
        out.print(f"   {text}")
    elif event.kind == "down":
        from rich.panel import Panel

        out.print(Panel(text, title="DEVICE DOWN", border_style="bold red", style="red"), soft_wrap=False)
    else:
        style = _STYLES.get(event.kind, "")
        out.print(f"[{style}]{text}[/]" if style else text)


_DEMO_HELP = (
    "The whole story on a small emulated ward network, in-process on loopback (no arguments needed, root "
    "or not, about half a minute): a gentle discovery finds an infusion pump on the wrong network (alert), "
    "characterization measures how many simultaneous sessions it survives (it crashes at about 7 and is "
    "power-cycled through the emulator), the profile is stored, the model is recognized, and the safe "
    "scanner settings for its group are printed. --tour shows only the first look at one pump."
)


@app.command(help=_DEMO_HELP, epilog=_EXIT_CODES_HELP)
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the pump's threshold draws.")] = 2026,
    host: Annotated[
        str | None, typer.Option(help="Loopback address of the pump (default: a random 127.200.x.y).")
    ] = None,
    boot_delay: Annotated[
        float, typer.Option(help="Seconds the pump takes to boot after a power cycle.")
    ] = 0.5,
    store: Annotated[
        Path | None, typer.Option(help="Keep the profile store here (default: a temporary file).")
    ] = None,
    dwell: Annotated[float, typer.Option(help="Seconds per characterization level.")] = 0.4,
    trials: Annotated[int, typer.Option(help="Characterization trials.")] = 3,
    tour: Annotated[
        bool, typer.Option(help="Only the first look at one pump: services, slowdown, crash, power cycle.")
    ] = False,
    port_offset: Annotated[
        int | None,
        typer.Option(
            help="Serve ports below 1024 at this offset (default: 0 as root, 10000 otherwise); "
            "--port-offset 10000 shows what a non-root user sees."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the whole story on an emulated ward network (see _DEMO_HELP)."""
    from fragileprobe._demo import run_demo, run_story

    _configure_logging(logging.ERROR)
    console = _err if json_out else _out
    try:
        if tour:
            result = anyio.run(
                lambda: run_demo(
                    emit=lambda e: _print_event(e, console),
                    host=host,
                    seed=seed,
                    boot_delay_s=boot_delay,
                    port_offset=port_offset,
                )
            )
        else:
            story = anyio.run(
                lambda: run_story(
                    emit=lambda e: _print_event(e, console),
                    host=host,
                    seed=seed,
                    boot_delay_s=boot_delay,
                    store_path=str(store) if store is not None else None,
                    dwell_s=dwell,
                    trials=trials,
                    port_offset=port_offset,
                )
            )
    except FragileProbeError as exc:
        _handle_library_error(exc)
    if tour:
        if json_out:
            _print_json(dataclasses.asdict(result))
        console.print()
        console.print(
            f"demo finished in {result.wall_time_s:.1f} s: hung at {result.hung_at_sessions} concurrent "
            f"sessions (T = {result.threshold}), recovered after power cycle: "
            f"{'yes' if result.recovered else 'NO'}"
        )
        if not result.recovered or result.hung_at_sessions is None:
            raise typer.Exit(EXIT_DEVICE_TROUBLE)
        return
    if json_out:
        _print_json(story.to_dict())
    console.print()
    console.print(
        f"demo finished in {story.wall_time_s:.1f} s: the pump on the wrong network raised an alert, first "
        f"crashed at {story.failed_at} concurrent sessions (its T = {story.threshold}), safe ceiling "
        f"{story.safe_ceiling}, {story.power_cycles} power cycle(s), recovered after power cycle: "
        f"{'yes' if story.recovered else 'NO'}"
    )
    if not story.recovered or story.safe_ceiling is None:
        raise typer.Exit(EXIT_DEVICE_TROUBLE)


# --- characterize -------------------------------------------------------------------------------------
# characterize()'s settings (ConfigError.field) -> the option that sets them, so that an error names what
# was typed. The heartbeat's own fields are the heartbeat options.
_CHARACTERIZE_OPTIONS = {
    "ladder": "--ladder",
    "trials": "--trials",
    "crash_budget": "--crash-budget",
    "margin_fraction": "--margin",
    "dwell_s": "--dwell",
    "hold_s": "--hold",
    "interval_s": "--interval",
    "linger_s": "--linger",
    "heartbeat_timeout_s": "--heartbeat-timeout",
    "time_budget_s": "--time-budget",
    "healthy_beats": "--healthy-beats",
    "recovery_timeout_s": "--recovery-timeout",
    "latency_factor": "--early-warning",
}
_HEARTBEAT_OPTIONS = {
    "port": "--heartbeat-port",
    "path": "--heartbeat-path",
    "timeout_s": "--heartbeat-timeout",
}


@contextlib.contextmanager
def _named_options(options: dict[str, str]) -> Iterator[None]:
    """A ConfigError whose ``field`` has an option in ``options`` comes out naming that option first."""
    try:
        yield
    except ConfigError as exc:
        option = options.get(exc.field or "")
        if option is None:
            raise
        raise ConfigError(f"{option}: {exc}", field=exc.field) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class _CharacterizeArgs:
    """The characterize command's input, checked: the device, how to find its ports, and the settings."""

    host: str
    name: str | None
    ports: tuple[int, ...] | None  # None: the pump set, or the emulated device's ports (--recovery-url)
    heartbeat_port: int | None  # None: 8080, or the emulated device's web port (--recovery-url)
    heartbeat_path: str
    recovery_url: str | None
    recovery_label: str
    settings: CharacterizeSettings


# Longest answer read from the person at the manual-recovery prompt (they press Enter; the rest is ignored).
_CONFIRM_MAX_BYTES = 4096


def _confirm_on_stderr(message: str) -> str:
    """Prompt on stderr, wait for a line on stdin; EOFError when stdin ends.

    The prompt goes to stderr so that --json output on stdout stays clean. stdin is read with ``select`` and
    ``os.read`` on its descriptor, never ``sys.stdin.readline()``: this runs in a daemon thread that is
    abandoned when the recovery times out, and a thread blocked inside the buffered reader holds its lock,
    which aborts the interpreter at exit ("could not acquire lock ... at interpreter shutdown").
    """
    import os
    import select

    sys.stderr.write(message)
    sys.stderr.flush()
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no real stdin (embedded, replaced): plain readline
        return sys.stdin.readline()
    got = b""
    while b"\n" not in got and len(got) < _CONFIRM_MAX_BYTES:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(fd, 1)  # one byte at a time: what follows the line stays for whoever reads next
        if not chunk:
            raise EOFError("stdin closed")
        got += chunk
    return got.decode("utf-8", errors="replace")


async def _characterize_run(
    a: _CharacterizeArgs, scope: Scope, store: ProfileStore, resume: bool, view: TerminalCharacterizeView
) -> Characterization:
    from fragileprobe._characterize import characterize
    from fragileprobe._heartbeat import HttpHeartbeat
    from fragileprobe._scope import Target, parse_ports

    address = scope.check(a.host)
    ports, hb_port = a.ports, a.heartbeat_port
    if a.recovery_url is not None and (ports is None or hb_port is None):
        # The emulated fleet knows where the device's services really listen (offset ports without root).
        from fragileprobe.emulator import FleetClient

        info = await FleetClient(a.recovery_url).device(address)
        if ports is None:
            ports = tuple(sorted(info.ports.values()))
        if hb_port is None and info.web_port is not None:
            hb_port = info.web_port
    # The heartbeat's timeout is the settings' heartbeat_timeout_s (characterize() applies it).
    heartbeat = HttpHeartbeat(port=hb_port or 8080, path=a.heartbeat_path)
    target = Target(address, ports=ports or parse_ports("pump"), heartbeat=heartbeat, name=a.name)
    timing, ramp = a.settings.timing, a.settings.ramp
    dropped = " (level 1 dropped: a level counts the heartbeat, 1 would be it alone)" * (1 in ramp.ladder)
    view.console.print(
        f"characterizing {target.label} ports {','.join(map(str, target.ports))}, heartbeat GET "
        f"{a.heartbeat_path} on {heartbeat.port} every {timing.interval_s:g} s; "
        f"ladder {','.join(str(lv) for lv in ramp.ladder if lv >= 2)}{dropped}, "
        f"dwell {timing.dwell_s:g} s, {ramp.trials} trial(s), at most {ramp.crash_budget} crash(es) per "
        f"trial; recovery: {a.recovery_label}; store {store.path}"
    )
    with view:
        return await characterize(
            target,
            scope=scope,
            settings=a.settings,
            store=store,
            name=a.name,
            resume=resume,
            progress=view.on_progress,
        )


def _host_as_scope(host: str) -> str:
    """HOST as its own scope, when no --scope is given: only an address can be (a name is never resolved)."""
    from fragileprobe._scope import _HOSTNAME_RE, _parse_address

    text = host.strip()
    if _parse_address(text) is not None:
        return text
    if _HOSTNAME_RE.match(text):
        raise ConfigError(
            f"host {text!r} is a host name: a name needs --scope (the authorized addresses) to be resolved "
            "and checked against; give its address instead, or add --scope"
        )
    raise ConfigError(f"host {text!r} is not an address or a host name")


def _recovery_hook(
    mode: str, cmd: str | None, url: str | None, *, bounds: RecoverySettings, interval_s: float
) -> Callable[..., Awaitable[Any]]:
    """The recovery hook the options ask for (ConfigError naming the option); ``bounds`` holds the checked
    recovery timeout the waiting hook uses.

    It is built, and so checked, before anything is sent: a program that cannot run, found out only after
    the load crashed the device, would leave it down.
    """
    from fragileprobe._recovery import command_recovery, manual_recovery, wait_for_recovery
    from fragileprobe.emulator import fleet_recovery

    try:
        if url is not None:
            return fleet_recovery(url)
        if cmd is not None:
            return command_recovery(shlex.split(cmd))
    except ConfigError as exc:
        option = "--recovery-url" if url is not None else "--recovery-cmd"
        raise ConfigError(f"{option}: {exc}", field=exc.field) from exc
    if mode == "manual":
        return manual_recovery(confirm=_confirm_on_stderr)
    return wait_for_recovery(timeout_s=bounds.timeout_s, interval_s=interval_s)


def _recovery_label(mode: str, cmd: str | None, url: str | None, timeout_s: float) -> str:
    if url is not None:
        return f"power cycle through the emulator fleet at {url}"
    if cmd is not None:
        return f"run {cmd!r}"
    if mode == "manual":
        return "ask you to power-cycle the device"
    return f"wait up to {timeout_s:g} s for it to come back by itself"


def _mark_interrupted(store: ProfileStore, host: str) -> int:
    """Mark the host's unfinished run as interrupted (resume still finds it); return its finished trials."""
    for run in reversed(store.runs()):
        if run.host == host and run.finished_at_s is None:
            store.mark_run(run.run_id, "interrupted")
            return sum(1 for t in run.trials if t.complete)
    return 0


_CHARACTERIZE_HELP = (
    "Measure how many simultaneous sessions a device survives, and recommend a safe scanner setting.\n\n"
    "The device is loaded step by step (the ladder) while a heartbeat checks that it still answers. "
    "The moment "
    "it stops answering, every session is cancelled at once, the device is recovered (--recovery, "
    "--recovery-cmd or --recovery-url) and the test goes on. Nothing outside --scope is ever contacted. Each "
    "finished trial is saved in --store at once; Ctrl-C stops cleanly and prints the command that resumes."
)


@app.command(help=_CHARACTERIZE_HELP, epilog=_EXIT_CODES_HELP)
def characterize(
    host: Annotated[str, typer.Argument(help="The device to measure (an address inside --scope).")],
    name: Annotated[
        str | None,
        typer.Option("--name", "--model", help="A name for the device model in reports and the profile."),
    ] = None,
    ports: Annotated[
        str | None,
        typer.Option(
            help="Service ports the sessions use, e.g. '21-23,8080' (default: the pump set "
            "21,22,23,8080, or the emulated device's ports with --recovery-url)."
        ),
    ] = None,
    ladder: Annotated[
        str,
        typer.Option(
            help="Levels to climb, lowest first. A level counts every session the device holds from us, "
            "the heartbeat's included (so the climb starts at 2; level 1 would be the heartbeat alone)."
        ),
    ] = "2,5,7,10,15,20,30,50",
    dwell: Annotated[float, typer.Option(help="Seconds each level is held.")] = 5.0,
    trials: Annotated[
        int,
        typer.Option(
            help="Passes up the ladder (fragile devices fail in slightly different places each time)."
        ),
    ] = 3,
    crash_budget: Annotated[
        int,
        typer.Option(
            help="Crashes allowed per trial: each one is a power cycle, "
            "maybe by hand. 1 means: climb one level at a time."
        ),
    ] = 2,
    time_budget: Annotated[
        float | None, typer.Option(help="Stop after this many seconds, keeping what was measured.")
    ] = None,
    heartbeat_port: Annotated[
        int | None, typer.Option(help="Web port the liveness heartbeat GETs (default 8080).")
    ] = None,
    heartbeat_path: Annotated[str, typer.Option(help="Path the heartbeat GETs.")] = "/",
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds without an answer after which the device counts as down.")
    ] = 2.0,
    interval: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 1.0,
    healthy_beats: Annotated[
        int, typer.Option(help="Good heartbeats in a row that count as 'recovered'.")
    ] = 3,
    hold: Annotated[float, typer.Option(help="Seconds each session stays open, like a scanner check.")] = 0.5,
    linger: Annotated[
        float | None,
        typer.Option(
            help="Seconds a session stays counted after our close while the device has not closed its side "
            "(default 5, and always longer than --interval plus --heartbeat-timeout). Raise it for devices "
            "that notice a close late."
        ),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(
            help="Authorized addresses/ranges (comma-separated). Default: only HOST. Nothing outside "
            "it is ever contacted."
        ),
    ] = None,
    store: StoreOpt = Path("fragileprobe.db"),
    resume: Annotated[
        bool, typer.Option(help="Continue the unfinished run for this device in --store (after Ctrl-C).")
    ] = False,
    early_warning: Annotated[
        float | None,
        typer.Option(
            help="Stop climbing when the heartbeat gets this many times slower than idle (e.g. 3): "
            "finds a ceiling without crashing devices that slow down before they die."
        ),
    ] = None,
    margin: Annotated[
        float,
        typer.Option(
            help="Safety margin below the first failing level, as a fraction (0.15 = 15%); never less "
            "than 3 levels."
        ),
    ] = 0.15,
    recovery: Annotated[
        str,
        typer.Option(
            help="After a crash: 'wait' for the device to come back by itself, or 'manual': "
            "ask you to power-cycle it and press Enter."
        ),
    ] = "wait",
    recovery_cmd: Annotated[
        str | None,
        typer.Option(
            help="After a crash run this command (no shell; {host} and {level} are filled in), "
            "e.g. a smart power strip's CLI."
        ),
    ] = None,
    recovery_url: Annotated[
        str | None,
        typer.Option(
            help="After a crash power-cycle the device through this emulator fleet control URL "
            "(printed by 'fragileprobe emulate')."
        ),
    ] = None,
    recovery_timeout: Annotated[
        float, typer.Option(help="Seconds a recovery may take before the run stops.")
    ] = 120.0,
    json_out: JsonOpt = False,
    log_level: LogLevelOpt = "error",
) -> None:
    """Measure how many simultaneous sessions a device survives (see _CHARACTERIZE_HELP)."""
    from fragileprobe._charsettings import CharacterizeSettings, RecoverySettings, TimingSettings
    from fragileprobe._heartbeat import HttpHeartbeat
    from fragileprobe._level_verdict import EarlyWarning
    from fragileprobe._progress import CharacterizeState, LogTap, TerminalCharacterizeView
    from fragileprobe._ramp import RampConfig
    from fragileprobe._report import settings_for_characterization
    from fragileprobe._scope import Scope, parse_ports

    level = _log_level(log_level)
    if recovery not in ("wait", "manual"):
        _fail(f"--recovery: {recovery!r} is not 'wait' or 'manual'")
    if sum(x is not None for x in (recovery_cmd, recovery_url)) + (recovery == "manual") > 1:
        _fail("--recovery manual, --recovery-cmd and --recovery-url: choose one")
    if recovery_cmd is not None and not shlex.split(recovery_cmd):
        _fail("--recovery-cmd: empty command")
    ramp_levels = _parse_ladder(ladder)
    console = _err if json_out else _out
    tap = LogTap()
    _configure_logging(level, tap=tap)
    try:
        authorized = Scope(scope if scope is not None else [_host_as_scope(host)])
        address = authorized.check(host)
        with _named_options(_HEARTBEAT_OPTIONS):  # checked on its default port; the real one may come later
            HttpHeartbeat(port=heartbeat_port or 8080, path=heartbeat_path, timeout_s=heartbeat_timeout)
        with _named_options(_CHARACTERIZE_OPTIONS):
            timing = TimingSettings(
                dwell_s=dwell,
                hold_s=hold,
                interval_s=interval,
                heartbeat_timeout_s=heartbeat_timeout,
                linger_s=linger,
                time_budget_s=time_budget,
            )
            bounds = RecoverySettings(healthy_beats=healthy_beats, timeout_s=recovery_timeout)
            hook = _recovery_hook(recovery, recovery_cmd, recovery_url, bounds=bounds, interval_s=interval)
            chosen = CharacterizeSettings(
                timing=timing,
                recovery=dataclasses.replace(bounds, hook=hook),
                ramp=RampConfig(
                    ladder=ramp_levels, trials=trials, crash_budget=crash_budget, margin_fraction=margin
                ),
                early_warning=None if early_warning is None else EarlyWarning(latency_factor=early_warning),
            )
        args = _CharacterizeArgs(
            host=host,
            name=name,
            ports=None if ports is None else parse_ports(ports),
            heartbeat_port=heartbeat_port,
            heartbeat_path=heartbeat_path,
            recovery_url=recovery_url,
            recovery_label=_recovery_label(recovery, recovery_cmd, recovery_url, recovery_timeout),
            settings=chosen,
        )
        db = _open_store(store)  # after every check: bad input leaves nothing behind
    except FragileProbeError as exc:
        _fail(str(exc))
    state = CharacterizeState(host=address, planned_trials=trials, ladder=ramp_levels, dwell_s=dwell)
    view = TerminalCharacterizeView(state, console)
    tap.sinks.append(view.on_log)
    try:
        try:
            char, interrupted = anyio.run(
                lambda: _interruptible(lambda: _characterize_run(args, authorized, db, resume, view))
            )
        except FragileProbeError as exc:
            partial = getattr(exc, "partial", None)
            if json_out and partial is not None:
                _print_json(
                    {"status": "recovery_failed", "error": str(exc), "characterization": partial.to_dict()}
                )
            _handle_library_error(exc)
        if interrupted:
            saved = _mark_interrupted(db, address)
            command = _resume_command()
            if json_out:
                _print_json(
                    {
                        "status": "interrupted",
                        "finished_trials_saved": saved,
                        "store": str(store),
                        "resume_command": command,
                    }
                )
            _err.print(
                f"[bold yellow]interrupted[/]: sessions closed; {saved} finished trial(s) saved in "
                f"{escape(str(store))}. Resume with:\n  {escape(command)}"
            )
            raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        db.close()
    settings = settings_for_characterization(char)
    if json_out:
        _print_json(
            {
                "status": char.stop_reason,
                "characterization": char.to_dict(),
                "summary": char.summary(),
                "settings": settings.to_dict() if settings else None,
                "store": str(store),
            }
        )
    else:
        _out.print()
        _out.print(f"[bold]{escape(char.summary())}[/]")
        _out.print()
        if settings is not None:
            _out.print("[bold cyan]Recommended scanner settings for this model[/]")
            _out.print(escape(settings.text()))
        _out.print(
            f"\nsaved in {escape(str(store))} (run {char.run_id}); HTML report: "
            f"fragileprobe report --store {escape(shlex.quote(str(store)))} --run {char.run_id}"
        )
    if char.safe_ceiling == 0:
        raise typer.Exit(EXIT_DEVICE_TROUBLE)


# --- discover -----------------------------------------------------------------------------------------
def _parse_aliases(items: list[str] | None) -> dict[int, int]:
    from fragileprobe._numbers import is_ascii_decimal, parse_field_int

    aliases: dict[int, int] = {}
    for item in items or []:
        bound, sep, known = item.partition("=")
        if not sep or not is_ascii_decimal(bound.strip()) or not is_ascii_decimal(known.strip()):
            _fail(f"--port-alias: {item!r} is not BOUND=WELLKNOWN like '10021=21'")
        try:
            port = parse_field_int(bound, field=f"--port-alias {item!r}", minimum=1, maximum=65535)
            aliases[port] = parse_field_int(known, field=f"--port-alias {item!r}", minimum=1, maximum=65535)
        except ConfigError as exc:
            _fail(str(exc))
    return aliases


def _check_alert_file(path: Path) -> None:
    """The alert file must be appendable, checked without creating it (it is created at the first run)."""
    import os

    if path.exists():
        if path.is_dir() or not os.access(path, os.W_OK):
            raise ConfigError(
                f"alert file {path}: cannot append to it: "
                + ("it is a directory" if path.is_dir() else "Permission denied")
            )
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"alert file {path}: cannot append to it: No such file or directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"alert file {path}: cannot append to it: Permission denied")


# ConfigError.field of a discovery setting -> the discover option that sets it (the error names the option).
_DISCOVER_OPTIONS = {
    "ports": "--ports",
    "udp_ports": "--udp-ports",
    "per_host_sessions": "--sessions-per-host",
    "rate_per_host": "--rate-per-host",
    "max_hosts_in_parallel": "--max-hosts",
    "global_rate": "--global-rate",
    "liveness_ports": "--liveness-ports",
    "connect_timeout_s": "--connect-timeout",
    "banner_timeout_s": "--banner-timeout",
    "snmp_community": "--snmp-community",
    "port_aliases": "--port-alias",
    "seed": "--seed",
    "webhook_url": "--webhook",
}


def _check_discover_args(
    options: dict[str, Any], *, webhook: str | None, alerts: Path | None
) -> DiscoverySettings:
    """The discovery settings of ``options`` (settings fields), and the alert outputs checked, before the
    store (or any other file) is created.

    Raises:
        ConfigError: A bad option, its message naming the option first (``--sessions-per-host: ...``).
    """
    from fragileprobe._discovery_settings import DiscoverySettings
    from fragileprobe._groups import WebhookAlertSink

    with _named_options(_DISCOVER_OPTIONS):
        settings = DiscoverySettings(**options)
        if webhook is not None:
            WebhookAlertSink(webhook)  # the URL (scheme, host, port range) is checked; nothing is sent
        if alerts is not None:
            _check_alert_file(alerts)
    return settings


@dataclass(frozen=True, slots=True)
class _DiscoverInputs:
    """What the discover command checked before anything was created (the store is opened last)."""

    hosts: list[str]
    scope: Scope
    settings: DiscoverySettings
    zones: Zones | None
    rules: Rules | None
    store: ProfileStore


def _discover_inputs(
    targets: list[str],
    *,
    scope: str | None,
    options: dict[str, Any],
    zones: Path | None,
    rules: Path | None,
    store: Path,
    webhook: str | None,
    alerts: Path | None,
) -> _DiscoverInputs:
    """Targets, scope, settings, zones and rules checked (a bad one fails the command), then the store."""
    from fragileprobe._groups import Rules, Zones
    from fragileprobe._scope import Scope, parse_targets

    try:
        hosts = parse_targets(targets)
        authorized = Scope(scope) if scope is not None else Scope(hosts)
        for address in hosts:  # before the store file is created: a scope error leaves nothing behind
            authorized.check(address)
        settings = _check_discover_args(options, webhook=webhook, alerts=alerts)
        zone_map = Zones.from_toml(zones) if zones is not None else None
        rule_set = Rules.from_toml(rules) if rules is not None else None
        return _DiscoverInputs(hosts, authorized, settings, zone_map, rule_set, _open_store(store))
    except FragileProbeError as exc:
        _fail(str(exc))


def _run_discovery(
    inputs: _DiscoverInputs,
    view: TerminalDiscoveryView,
    *,
    resume: bool,
    alerts: Path | None,
    webhook: str | None,
    json_out: bool,
    store: Path,
) -> tuple[DiscoveryReport, dict[str, GroupScanSettings]]:
    """Run the discovery (Ctrl-C: the resume command, exit 130); its report and the settings per group."""
    from fragileprobe._discovery_run import discover as run_discover
    from fragileprobe._report import discovery_settings

    db = inputs.store

    async def run() -> Any:
        with view:
            return await run_discover(
                inputs.hosts,
                scope=inputs.scope,
                settings=inputs.settings,
                zones=inputs.zones,
                rules=inputs.rules,
                store=db,
                resume=resume,
                alert_file=alerts,
                webhook_url=webhook,
                progress=view.on_progress,
            )

    try:
        try:
            report, interrupted = anyio.run(lambda: _interruptible(run))
        except FragileProbeError as exc:
            _handle_library_error(exc)
        if interrupted:
            command = _resume_command()
            if json_out:
                _print_json({"status": "interrupted", "store": str(store), "resume_command": command})
            _err.print(
                f"[bold yellow]interrupted[/]: hosts finished so far are saved in {escape(str(store))}. "
                f"Resume with:\n  {escape(command)}"
            )
            raise typer.Exit(EXIT_INTERRUPTED)
        return report, discovery_settings(report, db)
    finally:
        db.close()


def _print_discovery(
    report: DiscoveryReport, settings: dict[str, GroupScanSettings], *, json_out: bool
) -> None:
    """The report: JSON (with the scan settings per group), or the summary, the alerts and the settings."""
    if json_out:
        _print_json({**report.to_dict(), "scan_settings": {g: s.to_dict() for g, s in settings.items()}})
        return
    _out.print()
    _out.print(escape(report.summary()))
    for alert in report.alerts:
        _out.print(
            "[bold red]ALERT[/] "
            + escape(f"{alert.host} ({alert.model}) is in zone {alert.zone!r} ({alert.zone_kind}): ")
            + escape("; ".join(alert.evidence))
        )
    _out.print()
    _out.print("[bold cyan]Scanner settings per group[/] (fragileprobe report --store ... for details)")
    for group, s in sorted(settings.items()):
        limit = f"at most {s.sessions_per_host} session(s) per host" if s.sessions_per_host else "defaults"
        _out.print(f"  {escape(group)}: {limit}; " + escape(export_nmap_line(s)))


_DISCOVER_HELP = (
    "Gently find hosts, sort them into asset groups, and alert on medical devices in the wrong zone.\n\n"
    "Full TCP connects only (never half-open scans or OS-detection packets), one session per host at a time "
    "at a low connect rate, limits per host and not only in total, hosts in shuffled order. Hosts that stop "
    "answering are left alone; a port that never answers on a host that answers elsewhere is filtered, not "
    "hung. Ends with the safe scanner settings for every group found. Exit code 1 when an alert was raised "
    "or a host stopped answering.\n\n"
    "Defaults for networks where most addresses never answer (measured in benchmarks/bench_network.py, a /20 "
    "with 1.5 % live hosts; see docs/discovery.md): each address is first tried on 2 likely ports, and an "
    "address silent on both costs those two timeouts, not one per port; timeouts follow the measured round "
    "trips (RFC 6298, floor 0.5 s, ceilings --connect-timeout/--banner-timeout); as many hosts at once as "
    "the file-descriptor limit allows (at most 4,096), while a global rate of 1,000 new connections per "
    "second (runZero's total default) keeps a wide scan from being loud by surprise. With the old fixed "
    "64 hosts at once and 2 s timeouts on every port, that /20 was projected at ~770 s; now about 11 s, "
    "finding every live host: 3.9x faster than nmap -sT -n with its host discovery (2.9x than -T4), which "
    "missed the firewalled pumps."
)


@app.command(help=_DISCOVER_HELP, epilog=_EXIT_CODES_HELP)
def discover(
    targets: Annotated[
        list[str] | None, typer.Argument(help="Addresses, ranges or CIDR blocks to look at.")
    ] = None,
    ports: Annotated[
        str | None, typer.Option(help="Ports to look at (e.g. '21-23,80,443,8080' or 'hospital').")
    ] = None,
    zones: Annotated[
        Path | None, typer.Option(help="TOML file naming network zones (medical, general, guest ...).")
    ] = None,
    rules: Annotated[Path | None, typer.Option(help="TOML file of asset-group rules.")] = None,
    rate_per_host: Annotated[
        float, typer.Option(help="New connections per second per host (gentle by default).")
    ] = 10.0,
    global_rate: Annotated[
        float,
        typer.Option(
            help="New connections (and UDP datagrams) per second in total, all hosts together "
            "(runZero's default total is 1,000)."
        ),
    ] = 1000.0,
    liveness_ports: Annotated[
        int,
        typer.Option(
            help="Likely ports tried on each address before the others; an address silent on all of "
            "them is skipped (0: every port of every address)."
        ),
    ] = 2,
    sessions_per_host: Annotated[
        int,
        typer.Option(
            help="Connections held at once per host. A host whose model has a stored "
            "profile is never probed above its ceiling."
        ),
    ] = 1,
    max_hosts: Annotated[
        int | None,
        typer.Option(
            help="Hosts worked in parallel, each within its own limits (default: as many as the "
            "file-descriptor limit allows, at most 4,096)."
        ),
    ] = None,
    connect_timeout: Annotated[
        float, typer.Option(help="Most seconds a connect may take (ceiling of the adaptive timeout).")
    ] = 2.0,
    banner_timeout: Annotated[
        float,
        typer.Option(help="Most seconds to wait for a banner or a web answer (adaptive wait's ceiling)."),
    ] = 1.5,
    fixed_timeouts: Annotated[
        bool, typer.Option(help="Use --connect-timeout/--banner-timeout as fixed timeouts (no adaptation).")
    ] = False,
    udp_ports: Annotated[
        str,
        typer.Option(
            help="UDP ports that get one datagram per live host (161 SNMP, 123 NTP, 1900 SSDP), or 'none'."
        ),
    ] = "161,123,1900",
    snmp_community: Annotated[
        str, typer.Option(help="SNMP v2c community of the sysDescr request.")
    ] = "public",
    port_alias: Annotated[
        list[str] | None,
        typer.Option(help="BOUND=WELLKNOWN: a service on a moved port, e.g. '10021=21' (repeatable)."),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(help="Authorized addresses/ranges (comma-separated). Default: exactly the targets."),
    ] = None,
    store: StoreOpt = Path("fragileprobe.db"),
    resume: Annotated[bool, typer.Option(help="Continue the unfinished scan with the same targets.")] = False,
    alerts: Annotated[Path | None, typer.Option(help="Append alerts to this JSON-lines file.")] = None,
    webhook: Annotated[str | None, typer.Option(help="POST each alert as JSON to this URL.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the shuffled host order.")] = None,
    json_out: JsonOpt = False,
    log_level: LogLevelOpt = "error",
    sites: Annotated[
        Path | None,
        typer.Option(help="sites.toml: discover every site through its agents (docs/sites.md); no TARGETS."),
    ] = None,
) -> None:
    """Gently find hosts, group them, alert on misplaced medical devices (see _DISCOVER_HELP)."""
    if sites is not None:
        if targets:
            _fail("discover: give TARGETS or --sites FILE, not both")
        _discover_sites(sites, json_out=json_out, log_level=log_level)
        return
    if not targets:
        _fail("discover: give TARGETS (addresses, ranges, CIDR blocks) or --sites FILE")
    from fragileprobe._progress import LogTap, TerminalDiscoveryView

    tap = LogTap()
    _configure_logging(_log_level(log_level), tap=tap)
    options: dict[str, Any] = {
        "udp_ports": () if udp_ports.strip().lower() == "none" else udp_ports,
        "per_host_sessions": sessions_per_host,
        "rate_per_host": rate_per_host,
        "max_hosts_in_parallel": max_hosts,
        "global_rate": global_rate,
        "liveness_ports": liveness_ports,
        "connect_timeout_s": connect_timeout,
        "banner_timeout_s": banner_timeout,
        "adaptive_timeouts": not fixed_timeouts,
        "snmp_community": snmp_community,
        "port_aliases": _parse_aliases(port_alias),
        "seed": seed,
    }
    if ports is not None:
        options["ports"] = ports
    inputs = _discover_inputs(
        targets,
        scope=scope,
        options=options,
        zones=zones,
        rules=rules,
        store=store,
        webhook=webhook,
        alerts=alerts,
    )
    view = TerminalDiscoveryView(_err if json_out else _out)
    tap.sinks.append(view.on_log)
    report, settings = _run_discovery(
        inputs, view, resume=resume, alerts=alerts, webhook=webhook, json_out=json_out, store=store
    )
    _print_discovery(report, settings, json_out=json_out)
    if report.alerts or report.unresponsive:
        raise typer.Exit(EXIT_DEVICE_TROUBLE)


def _discover_sites(sites: Path, *, json_out: bool, log_level: str) -> None:
    """The --sites branch of discover: the coordinator of a multi-site run (fragileprobe.sites)."""
    from fragileprobe._progress import LogTap, TerminalDiscoveryView
    from fragileprobe.sites._cli import discover_sites

    level = _log_level(log_level)
    tap = LogTap()
    _configure_logging(level, tap=tap)
    view = TerminalDiscoveryView(_err if json_out else _out)
    try:
        with view:
            report = discover_sites(sites, progress=view.on_progress)
    except FragileProbeError as exc:
        _handle_library_error(exc)
    except KeyboardInterrupt:
        # The jobs are the agents' now: they finish (or are resumed) whether this coordinator waits or not.
        _err.print(
            "[bold yellow]interrupted[/]: submitted jobs keep running on the agents; every finished "
            "host is in the store. Run the same command again to discover anew."
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        _print_json(report.to_dict())
    else:
        _out.print()
        _out.print(escape(report.summary()))
    if report.alerts or report.unresponsive or report.held:
        raise typer.Exit(EXIT_DEVICE_TROUBLE)


# --- agent --------------------------------------------------------------------------------------------
_AGENT_HELP = (
    "Run a site agent: a Celery worker on the site's queue that discovers and characterizes devices inside "
    "this site's own networks only, writing every finished host and trial to the shared PostgreSQL store. "
    "Jobs outside --scope are refused whatever they say. Stop it with Ctrl-C (it finishes nothing halfway: "
    "a job cut short is resumed by the coordinator). See docs/sites.md."
)


@app.command(help=_AGENT_HELP)
def agent(
    site: Annotated[str, typer.Option(help="This agent's site (its queue: fragileprobe.site.NAME).")],
    broker: Annotated[str, typer.Option(help="The Celery broker, redis://HOST:PORT/DB.")],
    store: Annotated[str, typer.Option(help="The shared store, postgresql://USER@HOST/DB.")],
    scope: Annotated[
        str | None, typer.Option(help="The networks this site may reach (comma-separated CIDR blocks).")
    ] = None,
    sites: Annotated[
        Path | None, typer.Option(help="sites.toml: take the scope from this site's networks there.")
    ] = None,
    lease_ttl: Annotated[
        float,
        typer.Option(
            help="Seconds a device lease lives without renewal (a killed agent's devices "
            "are free again after it)."
        ),
    ] = 30.0,
    log_level: LogLevelOpt = "warning",
) -> None:
    """Run a site agent (see _AGENT_HELP)."""
    from fragileprobe.sites._cli import run_agent_command

    _configure_logging(_log_level(log_level))
    try:
        run_agent_command(
            site=site,
            broker=broker,
            store=store,
            scope=scope,
            sites_file=sites,
            lease_ttl_s=lease_ttl,
            loglevel=log_level,
        )
    except FragileProbeError as exc:
        _handle_library_error(exc)


def export_nmap_line(settings: GroupScanSettings) -> str:
    """The one-line nmap command for a group's settings."""
    from fragileprobe.export import nmap_args

    return nmap_args(settings).text().splitlines()[0]


# --- profiles -----------------------------------------------------------------------------------------
profiles_app = typer.Typer(
    help="List, show, export and import the stored device-model profiles (safe ceilings).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(profiles_app, name="profiles")


def _with_store(path: Path, fn: Callable[[ProfileStore], Any]) -> Any:
    if not path.exists():
        _fail(f"--store: {path} does not exist")
    try:
        with _open_store(path) as db:
            return fn(db)
    except FragileProbeError as exc:
        _fail(str(exc))


@profiles_app.command("list", epilog=_EXIT_CODES_HELP)
def profiles_list(store: StoreOpt = Path("fragileprobe.db"), json_out: JsonOpt = False) -> None:
    """One line per device model: its safe ceiling, devices measured, crashes."""
    profiles = _with_store(store, lambda db: db.profiles())
    if json_out:
        _print_json([{k: v for k, v in p.to_dict().items() if k != "characterizations"} for p in profiles])
        return
    if not profiles:
        _out.print("no profiles stored yet (fragileprobe characterize HOST --store ...)")
    for p in profiles:
        _out.print(escape(p.summary()))


@profiles_app.command("show", epilog=_EXIT_CODES_HELP)
def profiles_show(
    model_key: Annotated[str, typer.Argument(help="The model key (see 'profiles list').")],
    store: StoreOpt = Path("fragileprobe.db"),
    json_out: JsonOpt = False,
) -> None:
    """A model's profile: every characterization of it and the scanner settings it implies."""
    from fragileprobe.export import template_for_group

    def show(db: ProfileStore) -> Any:
        profile = db.profile(model_key)
        if profile is None:
            _fail(f"model_key: no profile {model_key!r} in {store} (see 'fragileprobe profiles list')")
        settings = template_for_group(model_key, db)
        return profile, settings

    profile, settings = _with_store(store, show)
    if json_out:
        _print_json({**profile.to_dict(), "settings": settings.to_dict()})
        return
    _out.print(f"[bold]{escape(profile.summary())}[/]")
    for char in profile.characterizations:
        _out.print()
        _out.print(escape(char.summary()))
    _out.print()
    _out.print(escape(settings.text()))


@profiles_app.command("export", epilog=_EXIT_CODES_HELP)
def profiles_export(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write here instead of stdout (with --format: the directory, default "
            "./fragileprobe-exports)."
        ),
    ] = None,
    store: StoreOpt = Path("fragileprobe.db"),
    export_format: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            help="Write files a scanner imports instead of the JSON document, from the stored ceilings and "
            "the inventory's asset groups: nessus (.nessus policies), gmp (Greenbone GMP commands), "
            "insightvm (scan template JSON bodies), nmap (one line per group), targets (target and "
            "exclusion lists, CSV). Repeat for several; 'all' for every one.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Every characterization, profile and inventory row as one JSON document (for 'profiles import'),
    or with --format the files each scanner imports, one set per asset group."""
    if export_format:
        _export_scanner_files(export_format, out or Path("fragileprobe-exports"), store, json_out)
        return
    text = _with_store(store, lambda db: db.export_json())
    if out is None:
        print(text)
        return
    try:
        out.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"--out: cannot write {out}: {exc.strerror or exc}")
    if json_out:
        _print_json({"exported_to": str(out), "bytes": len(text) + 1})
    else:
        _out.print(f"exported to {escape(str(out))}")


def _export_scanner_files(formats: list[str], out: Path, store: Path, json_out: bool) -> None:
    """``profiles export --format``: plan from the store, render, write, say where."""
    from fragileprobe import export

    chosen = [f.strip().lower() for part in formats for f in part.split(",") if f.strip()]
    if "all" in chosen:
        chosen = list(export.EXPORT_FORMATS)
    unknown = sorted(set(chosen) - set(export.EXPORT_FORMATS))
    if unknown:
        _fail(f"--format: unknown {', '.join(unknown)} (known: {', '.join(export.EXPORT_FORMATS)}, all)")
    plan = _with_store(store, lambda db: export.plan_exports(db.assets(), db.profiles()))
    try:
        written = export.write_exports(out, export.render_exports(plan, chosen))
    except FragileProbeError as exc:
        _fail(str(exc))
    if json_out:
        groups = {g.name: {"hosts": list(g.hosts), **g.settings.to_dict()} for g in plan.groups}
        _print_json(
            {"exported_to": str(out), "formats": chosen, "files": [str(p) for p in written], "groups": groups}
        )
        return
    if not plan.hosts:
        _out.print(
            f"no inventory in {escape(str(store))} yet (fragileprobe discover ... --store): only the "
            "shared files are written"
        )
    for g in plan.groups:
        s = g.settings
        limit = f"at most {s.sessions_per_host} session(s) per host" if s.sessions_per_host else "defaults"
        what = "DO NOT SCAN" if s.do_not_scan else limit
        _out.print(f"  {escape(g.name)}: {len(g.hosts)} host(s), {what}")
    _out.print(f"wrote {len(written)} file(s) ({', '.join(chosen)}) to {escape(str(out))}")


@profiles_app.command("import", epilog=_EXIT_CODES_HELP)
def profiles_import(
    source: Annotated[Path, typer.Argument(help="A file written by 'profiles export'.")],
    store: StoreOpt = Path("fragileprobe.db"),
    json_out: JsonOpt = False,
) -> None:
    """Add the characterizations of an export to --store (the ones already there are skipped)."""
    from fragileprobe._files import MAX_JSON_DOCUMENT_BYTES, read_bounded_text

    try:
        text = read_bounded_text(source, max_bytes=MAX_JSON_DOCUMENT_BYTES, label=f"source {source}")
        if not store.exists():
            # Validate the document before the store file is created: a bad import leaves nothing behind.
            with _open_store(Path(":memory:")) as scratch:
                scratch.import_json(text)
        with _open_store(store) as db:
            added = db.import_json(text)
    except FragileProbeError as exc:
        _fail(str(exc))
    if json_out:
        _print_json({"imported": added, "store": str(store)})
    else:
        _out.print(f"imported {added} characterization(s) into {escape(str(store))}")


# --- report -------------------------------------------------------------------------------------------
_REPORT_HELP = (
    "Write a self-contained HTML report (plots embedded, no external assets) and a Markdown report for a "
    "characterization or a discovery run: findings in plain language, the plot, the recommended settings "
    "per scanner, the alerts and the evidence, for the security and biomedical teams."
)


@app.command(help=_REPORT_HELP, epilog=_EXIT_CODES_HELP)
def report(
    source: Annotated[
        Path | None,
        typer.Argument(
            help="A JSON file: 'characterize --json' / 'discover --json' output, "
            "Characterization.to_json(), or a store export. Default: read --store."
        ),
    ] = None,
    store: StoreOpt = Path("fragileprobe.db"),
    run: Annotated[str | None, typer.Option(help="The characterization run id in --store.")] = None,
    model: Annotated[str | None, typer.Option(help="The latest characterization of this model key.")] = None,
    discovery: Annotated[
        bool, typer.Option(help="Report the discovery inventory of --store instead of a characterization.")
    ] = False,
    out: Annotated[
        Path, typer.Option(help="Output path without suffix: writes OUT.html, OUT.md and OUT.png.")
    ] = Path("fragileprobe-report"),
    plot: Annotated[bool, typer.Option(help="Include the plots (needs matplotlib).")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Write HTML and Markdown reports (see _REPORT_HELP)."""
    from fragileprobe import _report
    from fragileprobe._profile import Characterization

    subject: Characterization | dict[str, Any]
    try:
        if source is not None:
            subject = _report.load_report_source(str(source))
            settings_store = None
        else:
            if not store.exists():
                _fail(f"--store: {store} does not exist (or give a JSON file)")
            with _open_store(store) as db:
                subject = _subject_from_store(db, run=run, model=model, discovery=discovery)
            settings_store = store
    except FragileProbeError as exc:
        _fail(str(exc))
    try:
        if settings_store is not None and not isinstance(subject, Characterization):
            with _open_store(settings_store) as db:
                files = _report.write_report(subject, out, plot=plot, store=db)
        else:
            files = _report.write_report(subject, out, plot=plot)
    except ImportError as exc:
        _fail(f"plots need matplotlib (pip install 'fragileprobe[report]') or --no-plot: {exc}")
    except FragileProbeError as exc:
        _fail(str(exc))
    written = [str(p) for p in (files.html, files.markdown, files.png) if p is not None]
    if json_out:
        _print_json(
            {
                "kind": files.kind,
                "html": str(files.html),
                "markdown": str(files.markdown),
                "png": None if files.png is None else str(files.png),
            }
        )
    else:
        _out.print(f"{files.kind} report written: {', '.join(escape(w) for w in written)}")


def _subject_from_store(
    db: ProfileStore, *, run: str | None, model: str | None, discovery: bool
) -> Characterization | dict[str, Any]:
    from fragileprobe import _report

    if discovery:
        if not db.assets():
            _fail(f"--store: {db.path} holds no discovery inventory")
        return _report.discovery_dict_from_store(db)
    if run is not None:
        row = db.run(run)
        if row is None:
            _fail(f"--run: no run {run!r} in {db.path}")
        chars = [c for c in db.history(row.model_key) if c.run_id == run]
        if not chars:
            _fail(f"--run: run {run!r} did not finish (resume it with characterize --resume)")
        return chars[-1]
    history = db.history(model)
    if not history:
        if model is not None:
            _fail(f"--model: no characterization of {model!r} in {db.path}")
        if db.assets() or db.shield_sessions():
            return _report.discovery_dict_from_store(db)
        _fail(f"--store: {db.path} holds no characterization and no discovery inventory")
    return history[-1]


# --- shield --------------------------------------------------------------------------------------------
_SHIELD_HELP = """A SOCKS5 proxy that holds each device to its ceiling and trips it when it stops answering.

Point any scanner's SOCKS5 proxy at it, or run the tool behind it with --exec (proxychains-ng):

  fragileprobe shield --scope 10.20.0.0/24 --store fp.db --exec -- nmap -sT -sV -Pn -n --max-parallelism 1
      --max-hostgroup 1 10.20.0.0/24

Every CONNECT must be an IP literal in --scope; each destination host gets at most its ceiling of sessions
(its model's stored ceiling, 2 for unknown medical devices: one relayed session beside the heartbeat,
--default-ceiling otherwise); a device that fails
its heartbeat is tripped: its sessions are closed, new ones refused, an alert raised. Listens on loopback
unless --listen says otherwise, which then needs --user and --allow-client. As operator release
(--release operator), send SIGUSR1 to release every tripped device. Sessions and trips go to --store."""


def _parse_pairs(items: list[str] | None, option: str, sep: str = "=") -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        left, found, right = item.partition(sep)
        if not found or not left or not right:
            _fail(f"{option}: {item!r} is not LEFT{sep}RIGHT")
        pairs.append((left, right))
    return pairs


def _parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        _fail(f"--listen: {text!r} is not HOST:PORT (an IP literal, e.g. 127.0.0.1:1080)")
    return host, int(port)


@app.command(help=_SHIELD_HELP, epilog=_EXIT_CODES_HELP)
def shield(
    command: Annotated[
        list[str] | None, typer.Argument(help="With --exec: the command to run behind the shield (after --).")
    ] = None,
    scope: Annotated[str, typer.Option(help="Authorized destinations (comma-separated CIDRs).")] = "",
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen at (127.0.0.1:1080; a free port with --exec).")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Profile store: ceilings and inventory in, sessions and trips out.")
    ] = None,
    default_ceiling: Annotated[int, typer.Option(help="Ceiling of hosts not known to be fragile.")] = 4,
    medical_ceiling: Annotated[
        int,
        typer.Option(
            help="Ceiling of medical devices of unknown models (2: one relayed session and the heartbeat)."
        ),
    ] = 2,  # _shield.MEDICAL_CEILING (not imported: the CLI starts fast; a test checks)
    ceiling: Annotated[
        list[str] | None, typer.Option(help="HOST=N: a ceiling for one host (0 refuses it; repeatable).")
    ] = None,
    heartbeat: Annotated[
        list[str] | None, typer.Option(help="HOST=PORT: HTTP heartbeat on that port (repeatable).")
    ] = None,
    heartbeat_port: Annotated[
        int | None, typer.Option(help="HTTP heartbeat port for hosts without one from the inventory.")
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 1.0,
    release: Annotated[str, typer.Option(help="'auto' (healthy beats) or 'operator' (SIGUSR1).")] = "auto",
    release_beats: Annotated[int, typer.Option(help="Healthy beats in a row that end a trip.")] = 3,
    slot_wait: Annotated[float, typer.Option(help="Seconds a CONNECT over the ceiling waits.")] = 5.0,
    connect_timeout: Annotated[float, typer.Option(help="Seconds an upstream connect may take.")] = 2.0,
    idle_timeout: Annotated[float, typer.Option(help="Seconds of silence that close a session.")] = 300.0,
    total_timeout: Annotated[float, typer.Option(help="Longest relayed session, in seconds.")] = 3600.0,
    allow_printer_ports: Annotated[bool, typer.Option(help="Relay to ports 9100-9107 too.")] = False,
    user: Annotated[
        list[str] | None, typer.Option(help="NAME:PASSWORD for RFC 1929 login (repeatable; visible in ps).")
    ] = None,
    allow_client: Annotated[
        list[str] | None, typer.Option(help="Client address/CIDR allowed to connect (repeatable).")
    ] = None,
    alerts: Annotated[Path | None, typer.Option(help="Append trip alerts to this JSON-lines file.")] = None,
    webhook: Annotated[str | None, typer.Option(help="POST each trip alert as JSON to this URL.")] = None,
    exec_: Annotated[bool, typer.Option("--exec", help="Run COMMAND behind the shield, then stop.")] = False,
    preempt_idle: Annotated[
        float,
        typer.Option(
            help="Seconds after which a CONNECT waiting for a full host takes the slot "
            "of the same client's idle session there (0: never)."
        ),
    ] = 1.0,
    log_level: LogLevelOpt = "warning",
) -> None:
    """SOCKS5 shield (see _SHIELD_HELP)."""
    _configure_logging(_log_level(log_level))
    if not scope:
        _fail("--scope: give the authorized destinations, e.g. --scope 10.20.0.0/24")
    if command and not exec_:
        _fail("a command was given without --exec")
    host, port = _parse_listen(listen) if listen else ("127.0.0.1", 0 if exec_ else 1080)
    users = dict(_parse_pairs(user, "--user", ":"))
    db = None
    try:
        if exec_:
            from fragileprobe._shield import check_exec_command

            for warning in check_exec_command(command or [], root=_is_root()):
                _err.print(f"warning: {escape(warning)}")
        db = _open_store(store) if store is not None else None
        server = _shield_server(
            scope=scope,
            listen=(host, port),
            db=db,
            users=users,
            ceiling=ceiling,
            heartbeat=heartbeat,
            heartbeat_port=heartbeat_port,
            options={
                "default_ceiling": default_ceiling,
                "medical_ceiling": medical_ceiling,
                "heartbeat_interval_s": interval,
                "release": release,
                "release_beats": release_beats,
                "slot_wait_s": slot_wait,
                "preempt_idle_s": preempt_idle or None,
                "connect_timeout_s": connect_timeout,
                "idle_timeout_s": idle_timeout,
                "total_timeout_s": total_timeout,
                "allow_printer_ports": allow_printer_ports,
                "allow_clients": allow_client,
                "alert_file": str(alerts) if alerts else None,
                "webhook_url": webhook,
            },
        )
        login = next(iter(users.items()), (None, None))
        try:
            code, interrupted = anyio.run(
                lambda: _interruptible(
                    lambda: _serve_shield(server, scope, command if exec_ else None, login)
                )
            )
        except FragileProbeError as exc:
            _handle_library_error(exc)
        _shield_summary(server)
    except FragileProbeError as exc:
        _fail(str(exc))
    finally:
        if db is not None:
            db.close()
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if exec_:
        raise typer.Exit(int(code or 0))
    if server.trips:
        raise typer.Exit(EXIT_DEVICE_TROUBLE)


def _shield_server(
    *,
    scope: str,
    listen: tuple[str, int],
    db: ProfileStore | None,
    users: dict[str, str],
    ceiling: list[str] | None,
    heartbeat: list[str] | None,
    heartbeat_port: int | None,
    options: dict[str, Any],
) -> Shield:
    """The Shield the ``shield`` command's options describe (ConfigError naming a bad one)."""
    from fragileprobe._heartbeat import HttpHeartbeat
    from fragileprobe._scope import Scope
    from fragileprobe._shield import Shield

    ceilings = {h: _int_option("--ceiling", v) for h, v in _parse_pairs(ceiling, "--ceiling")}
    beats = {
        h: HttpHeartbeat(port=_int_option("--heartbeat", p), expect_status=None)
        for h, p in _parse_pairs(heartbeat, "--heartbeat")
    }
    default_beat = HttpHeartbeat(port=heartbeat_port, expect_status=None) if heartbeat_port else None
    return Shield(
        scope=Scope(scope),
        listen_host=listen[0],
        listen_port=listen[1],
        store=db,
        ceilings=ceilings,
        heartbeats=beats,
        default_heartbeat=default_beat,
        users=users or None,
        **options,
    )


async def _serve_shield(
    server: Shield, scope: str, command: list[str] | None, login: tuple[str | None, str | None]
) -> int:
    """Serve until interrupted (SIGUSR1 releases every tripped host), or run ``command`` behind it."""
    from fragileprobe._shield import run_behind

    async with server:
        h, p = server.address
        _err.print(f"shield listening on {escape(h)}:{p} (scope {escape(scope)})")
        if command is not None:
            return await run_behind(server, command, username=login[0], password=login[1])
        with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                blocked = [t.host for t in server.trips if t.released_at_s is None]
                released = [h for h in blocked if server.release(h)]
                _err.print(f"released: {', '.join(released) or 'nothing was blocked'}")
    return 0


def _shield_summary(server: Shield) -> None:
    stats = server.stats
    _err.print(
        f"shield: {stats.sessions} session(s), {stats.relayed} relayed, {stats.refused} refused, "
        f"{stats.trips} trip(s), {stats.bytes_up} bytes up, {stats.bytes_down} bytes down"
    )
    for trip in server.trips:
        _err.print(
            f"[bold red]TRIP[/] {escape(trip.host)}: {escape(str(trip.reason))}; "
            f"{trip.sessions_closed} session(s) closed"
        )


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _int_option(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        _fail(f"{option}: {text!r} is not an integer")


def main() -> None:
    """Console-script entry point (``fragileprobe``)."""
    # Before any command: library events stay off stdout (structlog's default prints there) even in
    # commands that do not configure logging themselves; the measuring commands refine this.
    _configure_logging(logging.ERROR)
    sys.exit(_run_app(sys.argv[1:]))


def _usage_error_types() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """The command-line parser's (ClickException, Abort) classes: the copy newer typer vendors, and click's
    own when it is installed too (Celery, in the sites extra, brings it), so either is caught."""
    import importlib

    errors: list[type[Exception]] = []
    aborts: list[type[Exception]] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.append(module.ClickException)
        aborts.append(getattr(module, "Abort", typer.Abort))
    return (tuple(errors) or (typer.Exit,)), tuple(aborts)


def _run_app(args: list[str]) -> int:
    """Run the app; a usage error (unknown option, a value the parser refuses) is one ``error:`` line, exit 2.

    The parser's own report is a framed box of several lines; scripts and people expect the one line every
    other bad input gets.
    """
    click_exception, abort = _usage_error_types()
    try:
        code = app(args=args, standalone_mode=False)
    except click_exception as exc:
        text = str(getattr(exc, "format_message", exc.__str__)())
        code = int(getattr(exc, "exit_code", EXIT_BAD_INPUT) or EXIT_BAD_INPUT)
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: the help is the answer, not an error
            if text.strip():  # (typer's rich help prints itself and leaves the message empty)
                print(text, file=sys.stderr)
            return code
        message = " ".join(text.split())
        _err.print(f"error: {escape(message)}")
        return code
    except abort:
        _err.print("aborted")
        return 1
    return int(code) if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    main()
