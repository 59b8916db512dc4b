"""The public API: ``__all__`` is honest and ``import fragileprobe`` stays light."""

from __future__ import annotations

import subprocess
import sys

import fragileprobe


def test_every_name_in_all_resolves() -> None:
    """Each name listed in ``__all__`` can be fetched from the package."""
    for name in fragileprobe.__all__:
        assert getattr(fragileprobe, name) is not None, name


def test_all_has_no_duplicates() -> None:
    assert len(set(fragileprobe.__all__)) == len(fragileprobe.__all__)


def test_import_does_not_load_heavy_modules() -> None:
    """``import fragileprobe`` loads neither scapy, pandas, matplotlib nor the CLI libraries."""
    code = (
        "import sys, fragileprobe; "
        "heavy = ('scapy', 'pandas', 'matplotlib', 'typer', 'rich', 'sqlite3'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_errors_share_one_root() -> None:
    """Every exported exception derives from FragileProbeError."""
    for name in fragileprobe.__all__:
        obj = getattr(fragileprobe, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, fragileprobe.FragileProbeError), name


def test_type_checkers_see_every_lazy_name_from_its_module() -> None:
    """The ``if TYPE_CHECKING:`` imports in ``__init__.py`` name exactly the lazy names, each from the module
    ``_LAZY`` loads it from, so mypy and IDEs see the same API as the running code."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(fragileprobe))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen = {
        alias.name: node.module.removeprefix("fragileprobe.")
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    assert seen == fragileprobe._LAZY
