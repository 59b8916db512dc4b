"""The public API: one table of names, ``__all__`` honest, lazily loaded, ``import fragileprobe`` light."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pickle
import re
import subprocess
import sys
import traceback
import types
import typing

import pytest

import fragileprobe
import fragileprobe.emulator
from fragileprobe import _errors

# The names people meet in the README's tour and docs/ (``fp.<name>``): each must stay public.
_DOCS = pathlib.Path(__file__).resolve().parent.parent


def _python_in(markdown: str) -> str:
    """The Python a document shows: its ```python blocks and its inline `code` spans (not shell lines such
    as ``--store fp.db``)."""
    blocks = re.findall(r"```(?:python|py|pycon)\n(.*?)```", markdown, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", markdown, flags=re.S))
    return "\n".join([*blocks, *spans])


_TOUR_NAMES = sorted(
    {
        name
        for doc in [_DOCS / "README.md", *sorted((_DOCS / "docs").glob("*.md"))]
        for name in re.findall(r"\bfp\.([A-Za-z_]\w*)", _python_in(doc.read_text(encoding="utf-8")))
    }
)


def test_every_name_in_all_resolves() -> None:
    """Each name listed in ``__all__`` can be fetched from the package."""
    for name in fragileprobe.__all__:
        assert getattr(fragileprobe, name) is not None, name


def test_all_is_the_table_and_has_no_duplicates() -> None:
    """``__all__`` is made from the one table; ``dir()`` shows the same names."""
    assert fragileprobe.__all__ == ["__version__", *fragileprobe._PUBLIC]
    assert len(set(fragileprobe.__all__)) == len(fragileprobe.__all__)
    assert dir(fragileprobe) == sorted(fragileprobe.__all__)


def _defined_names(module: str) -> set[str]:
    """The names a module's source defines at top level (classes, functions, assignments), not imports."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_each_name_comes_from_the_module_that_defines_it() -> None:
    """The table names the defining module, not a module that re-exports the name."""
    for name, module in fragileprobe._PUBLIC.items():
        assert name in _defined_names(f"fragileprobe.{module}"), (name, module)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = fragileprobe.NoSuchThing  # type: ignore[attr-defined]
    assert not hasattr(fragileprobe, "_no_such_private")


@pytest.mark.parametrize("name", _TOUR_NAMES)
def test_the_documented_tour_names_are_public(name: str) -> None:
    """Nothing the README or docs call as ``fp.<name>`` is missing from ``__all__``."""
    assert name in fragileprobe.__all__


def test_the_whole_error_tree_is_public() -> None:
    """Every exception class of ``_errors`` is exported, and every exported exception is in the tree."""
    tree = {n for n, v in vars(_errors).items() if isinstance(v, type) and issubclass(v, BaseException)}
    tree -= {"Exception"}
    exported = {n for n in fragileprobe.__all__ if isinstance(getattr(fragileprobe, n), type)}
    assert tree <= exported
    for name in fragileprobe.__all__:
        obj = getattr(fragileprobe, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, fragileprobe.FragileProbeError), name


@pytest.mark.parametrize("package", [fragileprobe, fragileprobe.emulator], ids=lambda p: p.__name__)
def test_public_errors_and_functions_name_the_package(package: types.ModuleType) -> None:
    """A public exception class or function says ``fragileprobe.<Name>``, so tracebacks do; other classes
    keep their defining module, where their type hints resolve."""
    for name in package.__all__:
        value = getattr(package, name)
        is_error = isinstance(value, type) and issubclass(value, BaseException)
        if is_error or isinstance(value, types.FunctionType):
            # a name re-exported from a public subpackage ("emulator._recovery") is at home there
            sub = package._PUBLIC[name].split(".")[0]
            home = package.__name__ if sub.startswith("_") else f"{package.__name__}.{sub}"
            assert value.__module__ == home, name
        elif isinstance(value, type):
            assert value.__module__ == f"{package.__name__}.{package._PUBLIC[name]}", name
    assert repr(fragileprobe.DeviceDownError) == "<class 'fragileprobe.DeviceDownError'>"


def test_record_type_hints_still_resolve_after_loading() -> None:
    """``typing.get_type_hints`` on a public record (what the record codec does) works once it was fetched
    from the package: its ``__module__`` still names the module whose globals hold its annotations' names."""
    hints = typing.get_type_hints(fragileprobe.ProbeResult)
    assert hints["outcome"] is fragileprobe.Outcome


def test_a_traceback_names_the_public_error() -> None:
    """An error raised deep inside names itself ``fragileprobe.DeviceDownError`` in its traceback."""
    code = (
        "import fragileprobe._guard\n"  # a private module first: the package's error tree is already rehomed
        "from fragileprobe._errors import DeviceDownError\n"
        "raise DeviceDownError('127.0.0.9 stopped answering')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "fragileprobe.DeviceDownError: 127.0.0.9 stopped answering" in out.stderr
    lines = traceback.format_exception_only(fragileprobe.ScopeError("outside"))
    assert lines == ["fragileprobe.ScopeError: outside\n"]


@pytest.mark.parametrize(
    "value",
    [
        fragileprobe.ConfigError("dwell_s: must be a positive number, got 0", field="dwell_s"),
        fragileprobe.ScopeError("target 10.0.0.1 is outside the authorized scope"),
        fragileprobe.ProbeTimeoutError("connect to 127.0.1.5:23 timed out after 2.0 s"),
        fragileprobe.DeviceDownError("down"),
        fragileprobe.RampConfig(),
        fragileprobe.Target("127.0.1.5", ports="21,23", heartbeat=fragileprobe.TcpHeartbeat(21), name="pump"),
        fragileprobe.Scope("127.0.1.0/24"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_public_errors_and_records_survive_pickling(value: object) -> None:
    """Errors (rehomed to ``fragileprobe``) and records pickle and load back equal."""
    copy = pickle.loads(pickle.dumps(value))
    assert type(copy) is type(value)
    if isinstance(value, BaseException):
        assert copy.args == value.args
        assert getattr(copy, "field", None) == getattr(value, "field", None)
    else:
        assert copy == value


def test_pickle_loads_a_public_error_in_a_fresh_interpreter() -> None:
    """A pickled error loads where nothing of fragileprobe was imported yet (found through the package)."""
    error = fragileprobe.ConfigError("dwell_s: must be a positive number, got 0", field="dwell_s")
    data = pickle.dumps(error)
    code = "import pickle, sys; e = pickle.loads(sys.stdin.buffer.read()); print(type(e), e.field)"
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True)
    assert out.stdout.strip() == b"<class 'fragileprobe.ConfigError'> dwell_s"


def test_import_does_not_load_heavy_modules() -> None:
    """``import fragileprobe`` loads neither scapy, pandas, matplotlib nor the CLI libraries."""
    code = (
        "import sys, fragileprobe; "
        "heavy = ('scapy', 'pandas', 'matplotlib', 'typer', 'rich', 'sqlite3', 'anyio'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _type_checking_imports(package: types.ModuleType) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(package))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        assert node.module, ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"write `{alias.name} as {alias.name}` (an explicit re-export)"
            seen[alias.name] = node.module.removeprefix(package.__name__ + ".")
    return seen


@pytest.mark.parametrize("package", [fragileprobe, fragileprobe.emulator], ids=lambda p: p.__name__)
def test_type_checkers_see_every_public_name_from_its_module(package: types.ModuleType) -> None:
    """The ``if TYPE_CHECKING:`` imports name exactly the table's names, each from the table's module, so
    mypy and IDEs see the same API as the running code."""
    table: dict[str, str] = package._PUBLIC
    seen = _type_checking_imports(package)
    missing = [
        f"    from {package.__name__}.{m} import {n} as {n}" for n, m in table.items() if seen.get(n) != m
    ]
    assert not missing, "add to the TYPE_CHECKING block:\n" + "\n".join(missing)
    assert set(seen) == set(table), f"TYPE_CHECKING imports names the table lacks: {set(seen) - set(table)}"
