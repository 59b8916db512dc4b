"""Recovery hooks: how a crashed device is brought back between levels of a characterization.

A hook is any async callable. ``characterize()`` calls it with one :class:`RecoveryContext` argument (or
with none, if the callable takes no arguments), then waits for the device to answer ``healthy_beats``
heartbeats in a row. A hook reports failure by raising; anything but ``RecoveryError`` is wrapped in one.

Ready-made hooks (each function returns a hook):

* :func:`wait_for_recovery` - the device comes back by itself (a watchdog reboot); waits for one good beat.
* :func:`command_recovery` - runs a command, e.g. a smart power strip's CLI (``{host}`` is substituted).
* :func:`manual_recovery` - asks a person to power-cycle the device (terminal prompt; in a notebook a button).
* :func:`emulator_recovery` - power-cycles an in-process emulated device.
* ``fragileprobe.emulator.fleet_recovery`` - power-cycles a device of an emulated fleet through its HTTP
  control API (it lives with the emulator: the library never imports the emulator).
"""

from __future__ import annotations

import inspect
import math
import shutil
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio
import structlog

from fragileprobe import _validate
from fragileprobe._errors import ConfigError, RecoveryError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from fragileprobe._heartbeat import Heartbeat

__all__ = [
    "DEFAULT_RECOVERY_TIMEOUT_S",
    "STDERR_TAIL_BYTES",
    "RecoveryContext",
    "RecoveryHook",
    "call_recovery",
    "command_recovery",
    "emulator_recovery",
    "manual_recovery",
    "wait_for_recovery",
]

log = structlog.get_logger(__name__)

# A real infusion pump takes 30-90 s to boot after a power cycle; two minutes covers that with room.
DEFAULT_RECOVERY_TIMEOUT_S = 120.0
# How much of a failed command's stderr goes into the RecoveryError message: enough for the last few lines
# of a CLI's complaint, bounded so a chatty tool cannot blow up logs.
STDERR_TAIL_BYTES = 2000
# Output a recovery command may produce before it is cut off (anyio.run_process buffers all of it).
_MAX_COMMAND_OUTPUT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class RecoveryContext:
    """What a recovery hook is told.

    Attributes:
        host: The device's address.
        heartbeat: The heartbeat the watchdog uses (a hook may beat it to see whether the device is back).
        trial: 0-based trial in which the crash happened.
        level: The level that crashed the device.
        attempt: 1 for the first recovery of this run, 2 for the second, ...
    """

    host: str
    heartbeat: Heartbeat
    trial: int
    level: int
    attempt: int


class RecoveryHook(Protocol):
    """An async callable that brings the device back (see the module docstring)."""

    def __call__(self, ctx: RecoveryContext, /) -> Awaitable[None]: ...


def _takes_context(fn: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and C callables without a signature: assume the protocol
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


async def call_recovery(hook: Callable[..., Awaitable[object]], ctx: RecoveryContext) -> None:
    """Run a hook with or without the context, translating its failure into ``RecoveryError``.

    Cancellation passes through untouched.
    """
    try:
        if _takes_context(hook):
            await hook(ctx)
        else:
            await hook()
    except RecoveryError:
        raise
    except Exception as exc:
        raise RecoveryError(f"recovery of {ctx.host} failed: {type(exc).__name__}: {exc}") from exc


def wait_for_recovery(
    *, timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S, interval_s: float = 1.0
) -> Callable[[RecoveryContext], Awaitable[None]]:
    """A hook that waits for the device to come back by itself.

    Args:
        timeout_s: Give up (``RecoveryError``) after this long without a good heartbeat.
        interval_s: Time between heartbeats while waiting.
    """
    limit = _validate.positive("timeout_s", timeout_s)
    pause = _validate.positive("interval_s", interval_s)

    async def hook(ctx: RecoveryContext) -> None:
        with anyio.move_on_after(limit):
            while True:
                try:
                    ok = (await ctx.heartbeat.beat(ctx.host)).ok
                except Exception as exc:  # a heartbeat's own bug is a failed beat here, as in the watchdog
                    log.info("recovery.beat_error", host=ctx.host, error=repr(exc))
                    ok = False
                if ok:
                    return
                await anyio.sleep(pause)
        raise RecoveryError(f"{ctx.host} did not come back by itself within {limit:g} s")

    return hook


def command_recovery(
    argv: Sequence[str], *, timeout_s: float = 60.0
) -> Callable[[RecoveryContext], Awaitable[None]]:
    """A hook that runs a command (no shell), e.g. a smart power strip's CLI.

    Every ``{host}`` in the arguments is replaced by the device's address, ``{level}`` by the level
    that crashed it.

    Args:
        argv: Program and arguments, e.g. ``["pdu-ctl", "cycle", "--outlet", "7"]``.
        timeout_s: Kill the command and raise ``RecoveryError`` after this long.

    Raises:
        ConfigError: ``argv`` is empty or not a sequence of strings, or its program is not found or not
            executable (checked now: finding out after the device crashed would leave it down).
    """
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise _validate.fail("argv", "a non-empty list of strings (no shell)", argv)
    limit = _validate.positive("timeout_s", timeout_s)
    template = tuple(argv)
    program = template[0]
    if "{host}" not in program and "{level}" not in program and shutil.which(program) is None:
        raise ConfigError(
            f"recovery command {program!r}: not found or not executable"
            + ("" if "/" in program else " (looked on PATH)"),
            field="argv",
        )

    async def hook(ctx: RecoveryContext) -> None:
        args = [a.replace("{host}", ctx.host).replace("{level}", str(ctx.level)) for a in template]
        log.info("recovery.command", host=ctx.host, argv=args)
        try:
            with anyio.fail_after(limit):
                done = await anyio.run_process(args, check=False)
        except TimeoutError as exc:
            raise RecoveryError(
                f"recovery command {args[0]!r} for {ctx.host} timed out after {limit:g} s"
            ) from exc
        except OSError as exc:
            raise RecoveryError(f"recovery command {args[0]!r} for {ctx.host} could not run: {exc}") from exc
        if done.returncode != 0:
            tail = done.stderr[-STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
            raise RecoveryError(
                f"recovery command {args[0]!r} for {ctx.host} exited with {done.returncode}: {tail}"
            )

    return hook


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(shell, "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


def manual_recovery(
    prompt: str | None = None, *, timeout_s: float | None = None, confirm: Callable[[str], str] | None = None
) -> Callable[[RecoveryContext], Awaitable[None]]:
    """A hook that asks a person to power-cycle the device and waits for their confirmation.

    In a terminal the prompt is read with ``input()`` in a worker thread (the event loop, and so any other
    work, keeps running). In a Jupyter notebook with ipywidgets installed, a button is shown instead; the
    kernel must be able to process widget messages while the cell runs (run the characterization in a
    background task, e.g. ``asyncio.create_task``, rather than awaiting it at the top of the cell).

    Args:
        prompt: Text shown to the person (``{host}`` and ``{level}`` are substituted).
        timeout_s: Give up after this long (None: wait as long as it takes).
        confirm: Replaces ``input`` (for tests and custom front ends); called in a worker thread.
    """
    limit = _validate.optional_positive("timeout_s", timeout_s)
    text = prompt or "{host} stopped answering at {level} sessions. Power-cycle it, then press Enter: "

    async def hook(ctx: RecoveryContext) -> None:
        message = text.replace("{host}", ctx.host).replace("{level}", str(ctx.level))
        with anyio.move_on_after(limit if limit is not None else math.inf):
            if confirm is None and _in_notebook() and _has_ipywidgets():
                await _notebook_button(message)
            else:
                await _ask_in_daemon_thread(confirm or input, message, host=ctx.host)
            return
        raise RecoveryError(f"nobody confirmed the power cycle of {ctx.host} within {limit:g} s")

    return hook


# How often the event loop looks whether the person has answered: a person needs seconds, not milliseconds.
_PROMPT_POLL_S = 0.1


async def _ask_in_daemon_thread(ask: Callable[[str], str], message: str, *, host: str) -> None:
    """Call ``ask(message)`` in a daemon thread and wait (cancellably) until it returns.

    A blocked ``input()`` cannot be interrupted. In one of anyio's worker threads, abandoned at the timeout,
    it kept the interpreter from exiting for as long as stdin stayed open and silent (the run reported its
    failed recovery and then never ended); a daemon thread dies with the process.

    Raises:
        RecoveryError: ``ask`` raised (``input()`` at the end of stdin: nobody can ever confirm).
    """
    done = threading.Event()
    failure: list[Exception] = []

    def run() -> None:
        try:
            ask(message)
        except Exception as exc:
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="fragileprobe-manual-recovery", daemon=True).start()
    while not done.is_set():  # noqa: ASYNC110 - a threading.Event set from a foreign thread is polled
        await anyio.sleep(_PROMPT_POLL_S)
    if failure:
        exc = failure[0]
        what = "stdin is closed" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
        raise RecoveryError(f"nobody can confirm the power cycle of {host}: {what}") from exc


def _has_ipywidgets() -> bool:
    import importlib.util

    # find_spec, not import: only to choose the notebook form (importing ipywidgets is slow).
    return importlib.util.find_spec("ipywidgets") is not None


async def _notebook_button(message: str) -> None:
    import ipywidgets  # type: ignore[import-not-found, unused-ignore]  # optional (fragileprobe[notebook])
    from IPython.display import display

    clicked = threading.Event()
    button = ipywidgets.Button(description="Device power-cycled", button_style="warning")
    label = ipywidgets.Label(value=message)

    def on_click(_: object) -> None:
        clicked.set()
        button.disabled = True

    button.on_click(on_click)
    display(ipywidgets.VBox([label, button]))  # type: ignore[no-untyped-call, unused-ignore]
    # The click handler runs on whatever thread the kernel dispatches widget messages on, so a thread-safe
    # flag is polled rather than an anyio.Event set from a foreign thread.
    while not clicked.is_set():  # noqa: ASYNC110
        await anyio.sleep(0.2)


class _PowerCyclable(Protocol):
    """What :func:`emulator_recovery` needs: a device it can power-cycle (``EmulatedDevice`` is one)."""

    def power_cycle(self) -> Awaitable[object]: ...


def emulator_recovery(device: _PowerCyclable) -> Callable[[RecoveryContext], Awaitable[None]]:
    """A hook that power-cycles an in-process emulated device (``device.power_cycle()``)."""
    if not callable(getattr(device, "power_cycle", None)):
        raise _validate.fail("device", "an object with a power_cycle() method", device)

    async def hook(ctx: RecoveryContext) -> None:
        log.info("recovery.emulator_power_cycle", host=ctx.host)
        await device.power_cycle()

    return hook
