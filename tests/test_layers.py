"""The layers of fragileprobe, enforced: no module imports from a layer above its own.

The table :data:`LAYERS` is the one statement of the layering (``src/fragileprobe/__init__.py`` draws the
same order in its docstring). Every module of ``src/fragileprobe`` must be placed in it: a new module fails
:func:`test_every_module_has_a_layer` until it is added to the tuple of its layer below.

An import counts when it runs: ``import`` and ``from ... import`` at module level *and* inside functions (a
lazy import of a higher layer is still a dependency on it), plus ``importlib.import_module("<literal>")``.
Imports under ``if TYPE_CHECKING:`` do not run, so they do not count (annotations may name any layer).

Two more rules:

* the emulator (``fragileprobe.emulator``) is never imported by library code. ``cli`` and ``_demo`` are the
  programs built on the library, not the library: ``fragileprobe emulate`` serves emulated devices and the
  demo's whole point is to probe an emulated pump, so they may (:data:`EMULATOR_USERS`);
* the exceptions are few and written down with their reason (:data:`ALLOWED`). Faults found when this test
  was written, waiting for their owner's fix, are in :data:`KNOWN_VIOLATIONS`; an entry that no longer
  occurs fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
import pathlib
import re
from dataclasses import dataclass

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "fragileprobe"
PACKAGE = "fragileprobe"

# Bottom to top. A module may import from its own layer and the layers below it, never above. A name that is
# a subpackage ("fragileprobe.export") places the package and every module in it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # errors, configuration checks, numbers from device bytes, and tools that depend on nothing of ours
    ("foundation", ("_errors", "_validate", "_numbers", "_files", "_sync", "_public", "_codec")),
    # what names a device: address identity, port specs, the Target record, the authorized scope
    ("scope", ("_addresses", "_ports", "_target", "_scope")),
    ("network", ("_net",)),
    # probe records, error translation, banner and HTTP parsing, the probes themselves
    ("probes", ("_results", "_translate", "_http", "_probes", "_fingerprint", "_udp")),
    ("heartbeat", ("_heartbeat", "_raw")),
    ("sessions", ("_limiter", "_sessions")),
    ("watchdog", ("_watchdog",)),
    ("guard", ("_guard",)),
    ("ramp", ("_ramp", "_profile", "_recovery", "_level_verdict", "_charsettings")),
    ("store", ("_db", "_schema", "_repo_profiles", "_repo_inventory", "_store")),
    (
        "orchestrators",
        (
            "_characterize",
            "_discovery",
            "_discovery_settings",
            "_discovery_policy",
            "_discovery_run",
            "_groups",
            "_hostpolicy",
            "_timing",
        ),
    ),
    ("outputs", ("_report", "_progress", "export", "_shield", "_socks", "sites")),
    # programs and public support code: nothing in the library imports them
    ("top", ("cli", "__main__", "_demo", "testing", "emulator", "")),
)

EMULATOR = f"{PACKAGE}.emulator"

# Modules outside the emulator that may import it, and why.
EMULATOR_USERS: dict[str, str] = {
    f"{PACKAGE}.cli": "`fragileprobe emulate` and `demo` run emulated devices: a program, not the library",
    f"{PACKAGE}._demo": "the demo probes an emulated pump: it is the demo's subject",
}

# (importer, imported) -> why this upward import is right. Keep it short.
ALLOWED: dict[tuple[str, str], str] = {
    (f"{PACKAGE}._target", f"{PACKAGE}._heartbeat"): (
        "Target's default heartbeat is HttpHeartbeat() (public API since 0.1); imported only when a Target "
        "is made without one"
    ),
    (f"{PACKAGE}._profile", f"{PACKAGE}._report"): (
        "Characterization._repr_html_ (Jupyter looks the hook up on the object) and .plot() (the README tour "
        "and the notebook call it): thin delegations into the report layer, imported when called"
    ),
    (f"{PACKAGE}._discovery", f"{PACKAGE}._report"): (
        "DiscoveryReport._repr_html_: Jupyter looks the hook up on the object; a delegation, imported when "
        "called"
    ),
}

# Faults present when the layering test was written, each to be fixed by its module's owner (issue 14).
# When one is fixed, delete its entry: a stale entry fails the test.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True, slots=True)
class Edge:
    """One runtime import: ``importer`` imports ``imported`` at ``path:line``."""

    importer: str
    imported: str
    path: pathlib.Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line}: {self.importer} imports {self.imported}"


def _module_name(path: pathlib.Path) -> str:
    parts = (PACKAGE, *path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _all_modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _all_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target_of(base: str, name: str) -> str:
    """``from base import name``: the submodule when ``base.name`` is one, else ``base`` itself."""
    candidate = f"{base}.{name}"
    return candidate if candidate in MODULES else base


class _Imports(ast.NodeVisitor):
    """Collects the runtime imports of one module (everything but ``if TYPE_CHECKING:`` bodies)."""

    def __init__(self, module: str, path: pathlib.Path) -> None:
        self.module = module
        self.path = path
        self.is_package = path.name == "__init__.py"
        self.edges: list[Edge] = []

    def _add(self, imported: str, node: ast.AST) -> None:
        if imported == PACKAGE or imported.startswith(PACKAGE + "."):
            self.edges.append(Edge(self.module, imported, self.path, getattr(node, "lineno", 0)))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            anchor = self.module.split(".")
            keep = len(anchor) - node.level + (1 if self.is_package else 0)
            base = ".".join(anchor[:keep] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            self._add(_target_of(base, alias.name), node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        first = node.args[0] if node.args else None
        named = isinstance(func, ast.Attribute) and func.attr == "import_module"
        if named and isinstance(first, ast.Constant) and isinstance(first.value, str):
            self._add(first.value, node)
        self.generic_visit(node)


def _edges() -> list[Edge]:
    edges: list[Edge] = []
    for module, path in MODULES.items():
        visitor = _Imports(module, path)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges.extend(e for e in visitor.edges if e.imported != module)
    return edges


EDGES = _edges()


def _qualified(name: str) -> str:
    """A table entry's module name: ``""`` is the package itself (its ``__init__``)."""
    return f"{PACKAGE}.{name}" if name else PACKAGE


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in :data:`LAYERS` (its own entry, else its package's), or None."""
    ranks = {_qualified(name): rank for rank, (_, names) in enumerate(LAYERS) for name in names}
    probe = module
    while True:
        if probe in ranks:
            return ranks[probe]
        if probe == PACKAGE or "." not in probe:
            return None
        parent = probe.rsplit(".", 1)[0]
        # Only a subpackage placed as a whole places its modules; a top-level module must be placed itself.
        if parent == PACKAGE:
            return None
        probe = parent


def _violations() -> dict[tuple[str, str], list[Edge]]:
    found: dict[tuple[str, str], list[Edge]] = {}
    for edge in EDGES:
        low, high = layer_of(edge.importer), layer_of(edge.imported)
        if low is None or high is None:
            continue  # reported by test_every_module_has_a_layer
        in_emulator = edge.importer == EMULATOR or edge.importer.startswith(EMULATOR + ".")
        to_emulator = edge.imported == EMULATOR or edge.imported.startswith(EMULATOR + ".")
        emulator_fault = to_emulator and not in_emulator and edge.importer not in EMULATOR_USERS
        if high > low or emulator_fault:
            imported = EMULATOR if to_emulator else edge.imported
            found.setdefault((edge.importer, imported), []).append(edge)
    return found


def test_every_module_has_a_layer() -> None:
    """Each module of the package is placed in the table, so a new one fails here until it is placed."""
    missing = [m for m in MODULES if layer_of(m) is None]
    names = ", ".join(name for name, _ in LAYERS)
    assert not missing, (
        f"modules without a layer: {missing}. Add each to its layer's tuple in LAYERS in "
        f"tests/test_layers.py (layers, bottom to top: {names}), and to the layer drawing in the docstring "
        "of src/fragileprobe/__init__.py"
    )


def test_table_names_only_existing_modules_once() -> None:
    """The table has no stale or duplicate entries (a renamed module must be renamed here too)."""
    names = [_qualified(n) for _, group in LAYERS for n in group]
    assert len(names) == len(set(names))
    stale = [n for n in names if n not in MODULES]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_module_imports_a_higher_layer_or_the_emulator() -> None:
    """No runtime import goes up a layer, and library code never imports the emulator, but for the
    allow-list (each entry with its reason) and the known faults awaiting their fix."""
    found = _violations()
    new = {k: v for k, v in found.items() if k not in ALLOWED and k not in KNOWN_VIOLATIONS}
    lines = [edge.where() for edges in new.values() for edge in edges]
    assert not lines, "imports against the layers (see LAYERS in tests/test_layers.py):\n" + "\n".join(lines)


@pytest.mark.parametrize("pair", [*ALLOWED, *KNOWN_VIOLATIONS], ids="->".join)
def test_exceptions_are_not_stale(pair: tuple[str, str]) -> None:
    """Every allow-list entry and known fault still occurs: fixed faults are deleted from the lists."""
    assert pair in _violations(), f"{pair} no longer imports against the layers: delete its entry"


def test_the_walker_sees_lazy_imports_and_skips_type_checking() -> None:
    """The import walker counts function-level imports and ``import_module`` literals, not TYPE_CHECKING."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "if TYPE_CHECKING:\n"
        "    from fragileprobe._guard import Guard\n"
        "def f():\n"
        "    from fragileprobe import _probes\n"
        "    return importlib.import_module('fragileprobe._sync')\n"
    )
    visitor = _Imports(f"{PACKAGE}._scope", SRC / "_scope.py")
    visitor.visit(ast.parse(source))
    assert [e.imported for e in visitor.edges] == [f"{PACKAGE}._probes", f"{PACKAGE}._sync"]


def test_the_package_docstring_draws_the_same_layers() -> None:
    """``src/fragileprobe/__init__.py`` states the layers (as trio does): each layer and module of the table
    appears in its docstring, so the drawing cannot drift from what this test enforces."""
    import fragileprobe

    doc = fragileprobe.__doc__ or ""
    words = [n for layer, names in LAYERS for n in (layer, *names) if n]
    missing = [n for n in words if not re.search(rf"\b{n}\b", doc)]
    assert not missing, f"add to the layer drawing in src/fragileprobe/__init__.py's docstring: {missing}"
