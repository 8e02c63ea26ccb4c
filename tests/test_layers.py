"""The allowed import arrows between spawnproxy's modules, read from their source (nothing is imported).

Every rule is a small pure function over the modules' parsed imports; the tables below say what
is allowed today.  Issue 16 (the restructure) tightens them: an entry of a KNOWN table that no
longer occurs fails the test too, so those tables can only shrink.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "spawnproxy"
PACKAGE_DIR = ROOT / PACKAGE

# ==== The rules' tables: tighten these as the restructure proceeds ==================================


# What a child-side module may import beyond the standard library, and only inside a function:
# dill, when a message needs it (the child fetches it from its parent if it lacks it).
CHILD_ON_DEMAND = {"dill"}

# Only these modules may import each of these (top-level names); CHILD_PACKAGE stands for every
# module of the child side, which is stdlib-only and so does its own pickling.  Issue 16 removes
# the parent-side modules marked below from "pickle" and "dill" (they go through _serialize).
CHILD_PACKAGE = "spawnproxy._child.*"
ONLY_THESE_IMPORT: dict[str, set[str]] = {
    "wrapt": {"spawnproxy._proxy"},
    "pickle": {
        "spawnproxy._serialize",
        "spawnproxy._serialize_errors",
        CHILD_PACKAGE,
    },
    "dill": {
        "spawnproxy._serialize",
        CHILD_PACKAGE,  # on demand (see CHILD_ON_DEMAND): loads what the parent sent with dill
    },
    "tblib": {"spawnproxy._serialize_errors"},
}

# Imports of another spawnproxy module's _private name (`from ._x import _y`) and reads of
# `module._private` where `module` is an imported spawnproxy module: none since issue 16.  The test
# fails on any new one, and on an entry here that no longer occurs (the table can only shrink).
KNOWN_PRIVATE_REACHES: set[tuple[str, str]] = set()

# Module-level statements that change another spawnproxy module's objects at import time
# (`other.NAME[...] = ...`, `other.NAME = ...`): none (a child's operations are passed to it).
KNOWN_IMPORT_PATCHES: set[tuple[str, str]] = set()

# spawnproxy modules that register an at-fork hook when `import spawnproxy` runs: none (importing
# spawnproxy has no side effects; a child registers its hook when it starts, a session its own).
AT_FORK_ALLOWED: set[str] = set()

# The parent side's layers, lowest first (docs/architecture.md says what each is for).  A module
# imports, at run time, only modules of its own layer or of a layer below (annotations may look
# up, under `if TYPE_CHECKING:`), and those imports form no cycle.  The child package (CHILD_PACKAGE)
# is at the bottom: it imports nothing of the parent's (rule (a)).
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"_errors", "_options", "_output", "_statefile", "_bootstrap", "_version", CHILD_PACKAGE}),
    (
        "values",
        {
            "_serialize",
            "_serialize_errors",
            "_signatures",
            "_exports",
            "_requests",
            "_lanes",
            "_peer",
            "_definitions",
            "_keys",
            "_addresses",
            "_slurm",
        },
    ),
    ("processes", {"_process", "_launch", "_ssh", "_zygote"}),
    ("session", {"_callbacks", "_router", "_receiver", "_flush", "_session"}),
    ("proxies", {"_proxy", "_streams", "_handle", "_daemon"}),
    ("network", {"_client", "_server", "_detach", "_supervisor"}),
    (
        "interface",
        {"__init__", "__main__", "_api", "_aio", "_values", "_cli", "_cli_args", "_pool", "_workers", "_ipython"},
    ),
]

# ==== Reading the modules ==========================================================================


@dataclass(frozen=True)
class Arrow:
    """One import: `importer` imports `module` (absolute), `name` from it if a from-import, at `line`
    (`nested`: inside a function, so it runs only when called)."""

    importer: str
    module: str
    name: str | None
    line: int
    nested: bool = False
    typing_only: bool = False  # under `if TYPE_CHECKING:`: never runs

    def where(self) -> str:
        what = self.module if self.name is None else f"{self.module}.{self.name}"
        return f"{self.importer} (line {self.line}) imports {what}"


def module_name(path: Path) -> str:
    """The dotted name of a source file of the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    """The syntax tree of a source file (nothing is run)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute module a (maybe relative) from-import names."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def arrows(importer: str, tree: ast.Module, is_package: bool, modules: Iterable[str]) -> list[Arrow]:
    """Every import of a module, at any depth (functions too); `from P import m` of a module m is an arrow to P.m."""
    known = set(modules)
    nested = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for inner in ast.walk(node)
    }
    typing = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        inside, only_typing = id(node) in nested, id(node) in typing
        if isinstance(node, ast.Import):
            found += [Arrow(importer, alias.name, None, node.lineno, inside, only_typing) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(importer, is_package, node.level, node.module)
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    found.append(Arrow(importer, f"{source}.{alias.name}", None, node.lineno, inside, only_typing))
                else:
                    found.append(Arrow(importer, source, alias.name, node.lineno, inside, only_typing))
    return found


def bound_modules(importer: str, tree: ast.Module, is_package: bool, modules: Iterable[str]) -> dict[str, str]:
    """Local names bound to spawnproxy modules by imports anywhere in the module: name -> module."""
    known = set(modules)
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(importer, is_package, node.level, node.module)
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
    return bound


@dataclass(frozen=True)
class Module:
    """A parsed module of the package."""

    name: str
    path: Path
    tree: ast.Module
    is_package: bool


def package_modules() -> dict[str, Module]:
    """Every module of the package, parsed."""
    files = module_files()
    return {name: Module(name, path, parse(path), path.name == "__init__.py") for name, path in sorted(files.items())}


def all_arrows(modules: dict[str, Module]) -> Iterator[Arrow]:
    """The imports of every module of the package."""
    for module in modules.values():
        yield from arrows(module.name, module.tree, module.is_package, modules)


def child_side(modules: dict[str, Module]) -> set[str]:
    """The modules shipped to the child: the child package."""
    prefix = f"{PACKAGE}._child"
    return {name for name in modules if name == prefix or name.startswith(prefix + ".")}


def is_private(name: str) -> bool:
    """One leading underscore, not a dunder."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# ==== The rules: each returns the messages of what breaks it ========================================


def child_imports_only_stdlib_and_itself(arrow: Arrow, child: set[str]) -> str | None:
    """Rule (a): a child-side module imports the standard library and other child-side modules only."""
    if arrow.importer not in child:
        return None
    top = arrow.module.split(".")[0]
    if top == PACKAGE:
        if arrow.module in child:
            return None
        return f"rule (a): {arrow.where()}: a child-side module imports a parent-side one"
    if top in sys.stdlib_module_names:
        return None
    if top in CHILD_ON_DEMAND and arrow.nested:
        return None
    return f"rule (a): {arrow.where()}: a child-side module imports outside the standard library"


def allowance(module: str) -> str:
    """The name a module has in the allowance table: the child package's modules share one."""
    package = CHILD_PACKAGE[: -len(".*")]
    return CHILD_PACKAGE if module == package or module.startswith(package + ".") else module


def only_allowed_importers(arrow: Arrow, allowed: dict[str, set[str]]) -> str | None:
    """Rule (b): wrapt, pickle, dill and tblib are imported only by the modules the table allows."""
    top = arrow.module.split(".")[0]
    if top in allowed and allowance(arrow.importer) not in allowed[top]:
        return f"rule (b): {arrow.where()}: only {sorted(allowed[top])} may import {top}"
    return None


def private_import(arrow: Arrow, modules: Iterable[str]) -> tuple[str, str] | None:
    """Rule (c), imports: `from .x import _y` of a _private name of another spawnproxy module."""
    if arrow.name is None or arrow.module == arrow.importer or arrow.module not in set(modules):
        return None
    if is_private(arrow.name):
        return arrow.importer, f"{arrow.module}.{arrow.name}"
    return None


def private_attribute_reads(module: Module, modules: Iterable[str]) -> set[tuple[str, str]]:
    """Rule (c), attributes: `x._y` where `x` names another spawnproxy module imported here."""
    bound = bound_modules(module.name, module.tree, module.is_package, modules)
    found = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and is_private(node.attr):
            target = bound.get(node.value.id)
            if target is not None and target != module.name:
                found.add((module.name, f"{target}.{node.attr}"))
    return found


def import_time_patches(module: Module, modules: Iterable[str]) -> set[tuple[str, str]]:
    """What a module's top-level statements assign into another spawnproxy module (`other.X = ...`, `other.X[k] = ...`)."""
    bound = bound_modules(module.name, module.tree, module.is_package, modules)
    found = set()
    for statement in module.tree.body:  # top level only: what runs at import
        targets: list[ast.expr] = []
        if isinstance(statement, ast.Assign):
            targets = list(statement.targets)
        elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
            targets = [statement.target]
        for target in targets:
            root = target
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                if isinstance(root.value, ast.Name) and root.value.id in bound and isinstance(root, ast.Attribute):
                    found.add((module.name, f"{bound[root.value.id]}.{root.attr}"))
                root = root.value
    return found


def shrink_only(found: set[tuple[str, str]], known: set[tuple[str, str]], what: str, rule: str) -> list[str]:
    """Messages for entries found but not known (new) and known but not found (remove them from the table)."""
    new = [
        f"{rule}: {importer} {what} {name} (new: not in the KNOWN table)" for importer, name in sorted(found - known)
    ]
    gone = [
        f"{rule}: {importer} no longer {what} {name}: remove it from the KNOWN table"
        for importer, name in sorted(known - found)
    ]
    return new + gone


# ==== The tests =====================================================================================


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    """Every module of the package, parsed once."""
    return package_modules()


def test_the_import_reader_sees_relative_and_nested_imports(modules: dict[str, Module]) -> None:
    """The reader resolves relative imports and finds imports inside functions (or the rules would see nothing)."""
    source = "from . import _lanes\nfrom ._errors import X\ndef f():\n    import dill\n    from .. import y\n"
    found = arrows("spawnproxy._a", ast.parse(source), False, modules)
    assert [(a.module, a.name, a.nested) for a in found] == [
        ("spawnproxy._lanes", None, False),
        ("spawnproxy._errors", "X", False),
        ("dill", None, True),
        ("", "y", True),
    ]
    package_arrows = arrows(
        "spawnproxy._child", ast.parse("from . import protocol\n"), True, ["spawnproxy._child.protocol"]
    )
    assert package_arrows[0].module == "spawnproxy._child.protocol"
    assert f"{PACKAGE}._session" in modules and len(modules) > 20


def test_child_side_imports_only_the_standard_library_and_itself(modules: dict[str, Module]) -> None:
    """Rule (a): the child-side modules import only the standard library and each other."""
    child = child_side(modules)
    assert any(name.startswith(f"{PACKAGE}._child.") for name in child)
    problems = [m for a in all_arrows(modules) if (m := child_imports_only_stdlib_and_itself(a, child))]
    assert not problems, "\n".join(problems)


def test_child_side_rule_catches_a_parent_import() -> None:
    """Rule (a) names a child module importing wrapt or a parent-side module."""
    child = {"spawnproxy._child.protocol"}
    assert child_imports_only_stdlib_and_itself(Arrow("spawnproxy._child.protocol", "wrapt", None, 3), child)
    assert child_imports_only_stdlib_and_itself(
        Arrow("spawnproxy._child.protocol", "spawnproxy._errors", "X", 3), child
    )
    assert child_imports_only_stdlib_and_itself(Arrow("spawnproxy._child.protocol", "pickle", None, 3), child) is None
    assert (
        child_imports_only_stdlib_and_itself(Arrow("spawnproxy._child.protocol", "dill", None, 3, nested=True), child)
        is None
    )
    assert child_imports_only_stdlib_and_itself(
        Arrow("spawnproxy._child.protocol", "dill", None, 3, nested=False), child
    )


def test_only_allowed_modules_import_wrapt_pickle_dill_tblib(modules: dict[str, Module]) -> None:
    """Rule (b): wrapt, pickle, dill and tblib are imported only where ONLY_THESE_IMPORT allows."""
    problems = [m for a in all_arrows(modules) if (m := only_allowed_importers(a, ONLY_THESE_IMPORT))]
    assert not problems, "\n".join(problems)


def test_allowances_are_all_used(modules: dict[str, Module]) -> None:
    """Every module ONLY_THESE_IMPORT allows does import that library (a stale allowance is removed)."""
    used = {(a.module.split(".")[0], allowance(a.importer)) for a in all_arrows(modules)}
    stale = [(lib, m) for lib, allowed in ONLY_THESE_IMPORT.items() for m in allowed if (lib, m) not in used]
    assert not stale, f"allowed but no longer importing (remove from ONLY_THESE_IMPORT): {sorted(stale)}"


def test_no_module_reaches_into_another_modules_private_names(modules: dict[str, Module]) -> None:
    """Rule (c): no `from ._x import _y` and no `_x._y` across modules beyond KNOWN_PRIVATE_REACHES, which only shrinks."""
    found = {p for a in all_arrows(modules) if (p := private_import(a, modules))}
    for module in modules.values():
        found |= private_attribute_reads(module, modules)
    problems = shrink_only(found, KNOWN_PRIVATE_REACHES, "reaches the private name", "rule (c)")
    assert not problems, "\n".join(problems)


def test_private_rule_catches_both_forms(modules: dict[str, Module]) -> None:
    """Rule (c) finds a private from-import and a private attribute read of an imported module, not a module import."""
    source = "from ._errors import _hidden, Public\nfrom . import _lanes\nx = _lanes._HIDDEN\ny = _lanes.Lanes\n"
    module = Module("spawnproxy._a", Path("_a.py"), ast.parse(source), False)
    found = {p for a in arrows(module.name, module.tree, False, modules) if (p := private_import(a, modules))}
    assert found == {("spawnproxy._a", "spawnproxy._errors._hidden")}
    assert private_attribute_reads(module, modules) == {("spawnproxy._a", "spawnproxy._lanes._HIDDEN")}


def test_no_module_patches_another_at_import(modules: dict[str, Module]) -> None:
    """No module's top-level code assigns into another spawnproxy module beyond KNOWN_IMPORT_PATCHES (only shrinks)."""
    found: set[tuple[str, str]] = set()
    for module in modules.values():
        found |= import_time_patches(module, modules)
    problems = shrink_only(found, KNOWN_IMPORT_PATCHES, "patches at import", "no patching")
    assert not problems, "\n".join(problems)


def test_patch_rule_catches_assignments_into_another_module(modules: dict[str, Module]) -> None:
    """The patch rule sees `other.X[k] = v` and `other.X = v` at top level, not inside a function."""
    source = "from . import _child\n_child.OPS['x'] = 1\n_child.Y = 2\ndef f():\n    _child.Z = 3\n"
    module = Module("spawnproxy._a", Path("_a.py"), ast.parse(source), False)
    assert import_time_patches(module, modules) == {
        ("spawnproxy._a", "spawnproxy._child.OPS"),
        ("spawnproxy._a", "spawnproxy._child.Y"),
    }


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a spawnproxy module (None for one no layer lists)."""
    short = allowance(module)
    if short != CHILD_PACKAGE:
        short = "__init__" if module == PACKAGE else module.rsplit(".", 1)[-1]
    for index, (_name, members) in enumerate(LAYERS):
        if short in members:
            return index
    return None


def imports_go_down(arrow: Arrow) -> str | None:
    """The layer rule: a run-time import never goes to a higher layer."""
    if arrow.typing_only or not (arrow.module == PACKAGE or arrow.module.startswith(PACKAGE + ".")):
        return None
    low, high = layer_of(arrow.importer), layer_of(arrow.module)
    if low is None or high is None or high <= low:
        return None
    return f"layers: {arrow.where()}: {LAYERS[low][0]} may not import from {LAYERS[high][0]}"


def runtime_cycle(modules: dict[str, Module]) -> list[str] | None:
    """A cycle of run-time imports between the parent side's modules, if there is one."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for arrow in all_arrows(modules):
        if not arrow.typing_only and arrow.module in graph and arrow.module != arrow.importer:
            graph[arrow.importer].add(arrow.module)
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name) :] + [name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            found = visit(target, path + [name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


def test_every_module_has_a_layer(modules: dict[str, Module]) -> None:
    """Every module of the package is in exactly one layer of LAYERS (a new module is placed on purpose)."""
    homeless = [name for name in modules if layer_of(name) is None]
    assert not homeless, f"modules in no layer of LAYERS: {homeless}"
    listed = [short for _name, members in LAYERS for short in members]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    shorts = {allowance(name) if allowance(name) == CHILD_PACKAGE else name.rsplit(".", 1)[-1] for name in modules}
    stale = set(listed) - shorts - {"__init__"}
    assert not stale, f"LAYERS lists modules that do not exist: {sorted(stale)}"


def test_imports_go_down_the_layers_and_form_no_cycle(modules: dict[str, Module]) -> None:
    """Layers: a run-time import goes to the importer's layer or below, and the run-time imports have no cycle."""
    problems = [m for a in all_arrows(modules) if (m := imports_go_down(a))]
    assert not problems, "\n".join(problems)
    cycle = runtime_cycle(modules)
    assert cycle is None, "run-time import cycle: " + " -> ".join(cycle)


def test_layer_rule_catches_an_upward_import_and_a_cycle(modules: dict[str, Module]) -> None:
    """The layer rule names an import from a higher layer, lets one under TYPE_CHECKING pass, and finds a cycle."""
    up = Arrow("spawnproxy._serialize", "spawnproxy._session", None, 1)
    assert imports_go_down(up) == (
        "layers: spawnproxy._serialize (line 1) imports spawnproxy._session: values may not import from session"
    )
    assert imports_go_down(Arrow("spawnproxy._serialize", "spawnproxy._session", None, 1, typing_only=True)) is None
    assert imports_go_down(Arrow("spawnproxy._session", "spawnproxy._serialize", None, 1)) is None
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import _session\n"
    assert all(
        a.typing_only for a in arrows("spawnproxy._flush", ast.parse(source), False, modules) if "_session" in a.module
    )
    looped = dict(modules)
    looped["spawnproxy._errors"] = Module(
        "spawnproxy._errors", Path("_errors.py"), ast.parse("from . import _cli\n"), False
    )
    assert runtime_cycle(looped) is not None


AT_FORK_PROBE = """
import os, sys, types
sys.path.insert(0, sys.argv[1])
calls = []
os.register_at_fork = lambda **hooks: calls.append(hooks)
before = {
    name: {key: id(value) for key, value in vars(module).items() if not isinstance(value, types.ModuleType)}
    for name, module in list(sys.modules.items())
    if module is not None and name != "__main__"
}
import spawnproxy
changed = sorted(
    "%s.%s" % (name, key)
    for name, old in before.items()
    for key in set(old) | set(vars(sys.modules[name]))
    if not isinstance(vars(sys.modules[name]).get(key), types.ModuleType)
    and old.get(key) != id(vars(sys.modules[name]).get(key))
    and (name, key) != ("os", "register_at_fork")
)
hooks = sorted({getattr(f, "__module__", "?") for hook in calls for f in hook.values()})
print(repr((hooks, changed)))
"""


def _probe_import() -> tuple[list[str], list[str]]:
    """In a fresh isolated interpreter: the modules whose at-fork hooks `import spawnproxy` registers,
    and the attributes of modules loaded before it that the import changed."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", AT_FORK_PROBE, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.returncode == 0, out.stderr
    hooks, changed = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    return hooks, changed


def test_importing_spawnproxy_registers_no_at_fork_hook() -> None:
    """`import spawnproxy` in a fresh interpreter registers no at-fork hook of its own (only AT_FORK_ALLOWED's)."""
    hooks, _changed = _probe_import()
    ours = {name for name in hooks if name == PACKAGE or name.startswith(PACKAGE + ".")}
    assert ours <= AT_FORK_ALLOWED, f"at-fork hooks registered at import by {sorted(ours - AT_FORK_ALLOWED)}"


def test_importing_spawnproxy_changes_no_other_modules_attributes() -> None:
    """`import spawnproxy` in a fresh interpreter rebinds no attribute of any module loaded before it."""
    _hooks, changed = _probe_import()
    assert changed == []
