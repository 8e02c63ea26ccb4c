"""The package's shape: public names, docstrings with examples, a stdlib-only child side, its metadata."""

from __future__ import annotations

import ast
import configparser
import inspect
import re
import subprocess
import sys
from pathlib import Path

import spawnproxy
from spawnproxy import _bootstrap

PUBLIC = {
    "AuthenticationError",
    "CallTimeoutError",
    "ConnectError",
    "DaemonDiedError",
    "DaemonProxy",
    "DaemonStartError",
    "DaemonTerminatedError",
    "InstanceDefinition",
    "ModuleDefinition",
    "ObjectProxy",
    "Pool",
    "RemoteError",
    "ScriptDefinition",
    "SerializationError",
    "Server",
    "SpawnProxyError",
    "__version__",
    "aio",
    "by_ref",
    "call_timeout",
    "connect",
    "daemon_of",
    "is_proxy",
    "obtain",
    "run_module",
    "run_object",
    "run_script",
    "serve",
    "slurm",
}


def test_all_is_pinned() -> None:
    """__all__ lists exactly the documented public names."""
    assert set(spawnproxy.__all__) == PUBLIC


def test_every_public_name_has_a_docstring_with_an_example() -> None:
    """Each public function and class documents itself with a runnable example."""
    for name in PUBLIC - {"__version__"}:
        doc = inspect.getdoc(getattr(spawnproxy, name))
        assert doc and ">>>" in doc, f"{name} has no docstring with an example"


def test_child_side_needs_only_the_standard_library() -> None:
    """The child-side modules import nothing outside the standard library (checked in a fresh interpreter)."""
    code = (
        "import sys, types\n"
        "before = set(sys.modules)\n"
        "pkg = types.ModuleType('_spawnproxy_child'); pkg.__path__ = []; sys.modules['_spawnproxy_child'] = pkg\n"
        f"for name, source in {list(_bootstrap.child_sources())!r}:\n"
        "    m = types.ModuleType('_spawnproxy_child.' + name); m.__package__ = '_spawnproxy_child'\n"
        "    sys.modules[m.__name__] = m; setattr(pkg, name, m); exec(compile(source, name, 'exec'), m.__dict__)\n"
        "new = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "std = set(sys.stdlib_module_names) | {'_spawnproxy_child'}\n"
        "print(sorted(new - std))\n"
    )
    # On standard input: the sources are past what one command-line argument may hold (128 KiB).
    out = subprocess.run([sys.executable, "-I", "-"], input=code, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


ROOT = Path(__file__).resolve().parent.parent


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _parent_pythons() -> list[str]:
    """noxfile.py's PARENT_PYTHONS, read without importing nox."""
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PARENT_PYTHONS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("noxfile.py defines no PARENT_PYTHONS")


def test_classifiers_and_python_requires_match_the_supported_parents() -> None:
    """The version classifiers are exactly noxfile's PARENT_PYTHONS, python_requires starts at the first."""
    metadata, options = _setup_cfg()["metadata"], _setup_cfg()["options"]
    classifiers = [c.strip() for c in metadata["classifiers"].splitlines() if c.strip()]
    versions = [
        c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    parents = _parent_pythons()
    assert versions == parents
    assert options["python_requires"].strip() == ">=" + parents[0]
    assert "Typing :: Typed" in classifiers and (ROOT / "spawnproxy" / "py.typed").is_file()


def test_description_and_readme_name_the_oldest_child() -> None:
    """The one-line description and the README say which CPython a child can be (MIN_CHILD_VERSION up)."""
    oldest = "CPython %d.%d" % _bootstrap.MIN_CHILD_VERSION
    assert f"{oldest}+ as the child" in _setup_cfg()["metadata"]["description"]
    assert oldest in (ROOT / "README.md").read_text(encoding="utf-8")


def test_changelog_has_an_entry_for_the_version() -> None:
    """docs/changelog.md (the changelog the sdist ships) has a section for the package's version."""
    changelog = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    heading = re.compile(r"^## %s(\s|$)" % re.escape(spawnproxy.__version__), re.MULTILINE)
    assert heading.search(changelog), f"docs/changelog.md has no '## {spawnproxy.__version__}' section"


def test_license_is_the_mit_license_the_metadata_names() -> None:
    """LICENSE holds the MIT license of the spawnproxy developers, and setup.cfg names it and its SPDX id."""
    metadata = _setup_cfg()["metadata"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "The spawnproxy developers" in text
    assert metadata["license_expression"].strip() == "MIT"
    assert metadata["license_files"].split() == ["LICENSE"]
