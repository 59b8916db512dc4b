"""Run fragileprobe's async entry points from synchronous code: scripts, REPLs and notebooks.

``run_sync(fn, *args, **kwargs)`` returns ``fn(*args, **kwargs)``'s result:

* from a plain script (no event loop running in this thread) it uses ``anyio.run`` on the asyncio backend;
* inside a running event loop (a Jupyter notebook cell, an async framework calling sync code) it cannot
  nest a second loop in the same thread, so it runs ``anyio.run`` in a fresh worker thread with its own loop
  and blocks until that finishes. The caller's loop is blocked meanwhile; in a notebook, prefer
  ``await fn(...)`` directly (IPython supports top-level ``await``) and keep ``run_sync`` for code that
  must stay synchronous.

Objects bound to one event loop (a Guard, an EmulatedPump) must be created and used inside ``fn``: they
cannot cross from the caller's loop into the worker's.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["run_sync"]

P = ParamSpec("P")
T = TypeVar("T")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the async callable ``fn`` to completion from synchronous code and return its result.

    Exceptions raised by ``fn`` propagate unchanged (also across the worker thread). ``KeyboardInterrupt``
    in a plain script cancels ``fn`` the way ``anyio.run`` does.
    """
    call: Callable[[], Awaitable[T]] = functools.partial(fn, *args, **kwargs)
    if not _loop_running():
        return anyio.run(call)

    values: list[T] = []  # what the worker thread returned, or raised: one of the two gets one item
    errors: list[Exception] = []

    def worker() -> None:
        try:
            values.append(anyio.run(call))
        except Exception as exc:  # handed back to the calling thread below, re-raised there
            errors.append(exc)

    thread = threading.Thread(target=worker, name="fragileprobe-run-sync", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return values[0]
