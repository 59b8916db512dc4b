"""How a package hands out its public names: one table, names imported on first use (PEP 562).

``fragileprobe``'s and ``fragileprobe.emulator``'s ``__init__`` each keep one table, public name -> the
private module that defines it, and answer a module ``__getattr__`` with :func:`load`. A loaded class or
function is given the package as its ``__module__``, so a traceback or a ``repr`` says
``fragileprobe.DeviceDownError``, not ``fragileprobe._errors.DeviceDownError`` (what trio's
``fixup_module_metadata`` does). Pickle finds such a class by that name too: the package's ``__getattr__``
loads it.
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["load", "rehome"]


def rehome(value: object, package: str) -> None:
    """Make ``package`` the ``__module__`` of ``value``, when it is a class or function of a private module.

    Anything else (a constant, a mapping, an object from another package) is left alone.
    """
    if not isinstance(value, type | types.FunctionType):
        return
    if value.__module__.startswith(package + "._"):
        value.__module__ = package


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
