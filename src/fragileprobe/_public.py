"""How a package hands out its public names: one table, names imported on first use (PEP 562).

``fragileprobe``'s and ``fragileprobe.emulator``'s ``__init__`` each keep one table, public name -> the
private module that defines it, and answer a module ``__getattr__`` with :func:`load`.

A loaded exception class or function is given the package as its ``__module__`` (what trio's
``fixup_module_metadata`` does), so a traceback says ``fragileprobe.DeviceDownError``, not
``fragileprobe._errors.DeviceDownError``. Pickle finds such a name through the package too: its
``__getattr__`` loads it. Other classes (the records, Guard, the stores) keep the module that defines them:
``typing.get_type_hints`` and ``inspect.getsource`` look a class's names and source up through its
``__module__``, and the record codec reads the field types with ``get_type_hints``; a rehomed record would
send it to the package's namespace, where its annotations' names are not.
"""

from __future__ import annotations

import importlib
import itertools
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["load", "rehome"]


def rehome(value: object, package: str) -> None:
    """Make ``package`` the ``__module__`` of ``value``: an exception class or a function of a private module.

    Anything else (other classes, constants, objects from another package) is left alone (see the module
    docstring for why).
    """
    is_error = isinstance(value, type) and issubclass(value, BaseException)
    if not (is_error or isinstance(value, types.FunctionType)):
        return
    if not value.__module__.startswith(package + "."):
        return
    # the public home: the defining module's path up to its first private part ("fragileprobe._errors" ->
    # "fragileprobe"; "fragileprobe.emulator._recovery" -> "fragileprobe.emulator", whichever package
    # re-exports it, so the answer never depends on which one was imported first)
    parts = value.__module__.split(".")
    value.__module__ = ".".join(itertools.takewhile(lambda p: not p.startswith("_"), parts))


def load(package: str, table: Mapping[str, str], name: str) -> object:
    """Import public ``name`` of ``package`` from the module ``table`` names, rehomed (see :func:`rehome`).

    Raises:
        AttributeError: ``name`` is not in the table (what a missing module attribute raises).
    """
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(f"{package}.{module}"), name)
    rehome(value, package)
    return value
