"""The ``fragileprobe`` command line.

Commands print; the work happens in the library (``fragileprobe._demo``, ``fragileprobe.emulator``). Bad
input is reported as one line on stderr with exit code 2, never a traceback. typer and rich are imported
here only, so ``import fragileprobe`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from pathlib import Path  # noqa: TC003 - typer reads the annotation at runtime
from typing import TYPE_CHECKING, Annotated, NoReturn

import anyio
import structlog
import typer
from rich.console import Console
from rich.markup import escape

from fragileprobe._errors import FragileProbeError

if TYPE_CHECKING:
    from fragileprobe._demo import DemoEvent
    from fragileprobe.emulator._fleet import Fleet, FleetConfig

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


def _configure_logging(level: int) -> None:
    # The CLI is an application: it (and only it) decides where library log events go: stderr, so stdout
    # stays for results that other programs parse.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


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
    prefix: Annotated[str, typer.Option(help="First three octets of the hospital fleet.")] = "127.77.0",
    control_port: Annotated[int, typer.Option(help="Port of the control API on 127.0.0.1 (0: any).")] = 0,
    quiet: Annotated[bool, typer.Option(help="Do not list every device.")] = False,
    list_models: Annotated[bool, typer.Option(help="List the built-in models and exit.")] = False,
) -> None:
    """Run an emulated device (or a fleet) on loopback until interrupted."""
    from fragileprobe.emulator._fleet import FleetConfig
    from fragileprobe.emulator._fleet import hospital_fleet as make_hospital
    from fragileprobe.emulator._models import MODELS

    if list_models:
        for name, m in MODELS.items():
            print(f"{name:16} {len(m.services):2} ports  {m.product}")
        return
    _configure_logging(logging.INFO)
    try:
        if fleet is not None and hospital_fleet:
            _fail("--fleet and --hospital-fleet: choose one")
        if fleet is not None:
            config = FleetConfig.from_toml(fleet)
        elif hospital_fleet:
            config = make_hospital(prefix, seed=seed or 0, boot_delay_s=boot_delay, port_offset=port_offset)
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
                    ]
                }
            )
        if not 0 <= control_port <= 65535:
            _fail(f"--control-port: {control_port} out of range 0-65535")
        anyio.run(_run_fleet, config, control_port, quiet)
    except FragileProbeError as exc:
        _fail(str(exc))


# --- demo ----------------------------------------------------------------------------------------------
_STYLES = {"section": "bold cyan", "info": "", "ok": "green", "warn": "bold red", "row": ""}


def _print_event(event: DemoEvent) -> None:
    text = escape(event.text)
    if event.kind == "section":
        _out.print()
        _out.print(f"[bold cyan]== {text}[/]")
    elif event.kind == "row":
        _out.print(f"   {text}")
    else:
        style = _STYLES.get(event.kind, "")
        _out.print(f"[{style}]{text}[/]" if style else text)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the pump's threshold draws.")] = 2026,
    host: Annotated[
        str | None, typer.Option(help="Loopback address (default: a random 127.200.x.y).")
    ] = None,
    boot_delay: Annotated[
        float, typer.Option(help="Seconds the pump takes to boot after a power cycle.")
    ] = 1.0,
) -> None:
    """Show what happens to an emulated infusion pump: services, slowdown, crash, power cycle."""
    from fragileprobe._demo import run_demo

    _configure_logging(logging.ERROR)
    try:
        result = anyio.run(lambda: run_demo(emit=_print_event, host=host, seed=seed, boot_delay_s=boot_delay))
    except FragileProbeError as exc:
        _fail(str(exc))
    _out.print()
    _out.print(
        f"demo finished in {result.wall_time_s:.1f} s: hung at {result.hung_at_sessions} concurrent sessions "
        f"(T = {result.threshold}), recovered after power cycle: {'yes' if result.recovered else 'NO'}"
    )
    if not result.recovered or result.hung_at_sessions is None:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point (``fragileprobe``)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
