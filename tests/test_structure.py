"""The package's shape: public names, docstrings with examples, a stdlib-only child side."""

from __future__ import annotations

import inspect
import subprocess
import sys

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
