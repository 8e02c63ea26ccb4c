"""Child interpreters (SPEC §3.6): every CPython 3.8-3.13 installed, virtual environments, no installs."""

from __future__ import annotations

import os
import subprocess
import sys
import venv

import pytest

import spawnproxy
from tests.conftest import child_interpreters

pytestmark = pytest.mark.timeout(120)


def test_child_of_each_version(child_python: str, warm: bool) -> None:
    """A child of each installed version runs a script, a module and an object."""
    mod = spawnproxy.run_script(
        "evaluate = eval\nimport sys\nversion = tuple(sys.version_info[:2])\ndef add(a, b):\n    return a + b",
        python_exe=child_python,
        warm=warm,
    )
    try:
        daemon = spawnproxy.daemon_of(mod)
        expected = daemon.python_version[:2]
        assert mod.version == expected
        assert mod.add(2, 3) == 5
        assert mod.sys.executable != sys.executable or expected == sys.version_info[:2]
        with pytest.raises(ZeroDivisionError):
            mod.evaluate("1/0")
    finally:
        mod.terminate_daemon()


def test_remote_exception_from_each_version(child_python: str, warm: bool) -> None:
    """Exceptions and their remote frames come back from every child version."""
    mod = spawnproxy.run_script(
        "evaluate = eval\ndef f():\n    raise KeyError('k')", python_exe=child_python, warm=warm
    )
    try:
        with pytest.raises(KeyError):
            mod.f()
        gen_proxy = mod.evaluate("(i for i in range(3))")
        assert list(gen_proxy) == [0, 1, 2]
    finally:
        mod.terminate_daemon()


def test_lambda_to_other_version_says_why(child_python: str, warm: bool) -> None:
    """A lambda goes through dill to a child of the same version, and fails clearly otherwise."""
    mod = spawnproxy.run_script("def apply(f, x):\n    return f(x)", python_exe=child_python, warm=warm)
    try:
        version = spawnproxy.daemon_of(mod).python_version[:2]
        if version == sys.version_info[:2]:
            assert mod.apply(lambda x: x * 2, 21) == 42
        else:
            with pytest.raises(spawnproxy.SerializationError, match="code objects do not carry over"):
                mod.apply(lambda x: x * 2, 21)
            assert mod.apply(abs, -3) == 3
    finally:
        mod.terminate_daemon()


def _make_venv(path: str, python: str) -> str:
    subprocess.run([python, "-m", "venv", "--without-pip", path], check=True, timeout=120)
    exe = os.path.join(path, "bin", "python")
    site = subprocess.run(
        [exe, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(site, "only_in_venv.py"), "w") as f:
        f.write("WHERE = 'venv'\n")
    # A module of the same name as one in the parent's site-packages: the child's copy must win.
    os.makedirs(os.path.join(site, "tblib"))
    with open(os.path.join(site, "tblib", "__init__.py"), "w") as f:
        f.write("WHERE = 'venv copy'\n")
    return exe


def test_venv_keeps_its_own_environment(tmp_path, warm: bool) -> None:
    """A package only in the child's venv imports there; the parent's site-packages do not shadow it."""
    exe = _make_venv(str(tmp_path / "env"), sys.executable)
    mod = spawnproxy.run_script(
        "evaluate = eval\nimport only_in_venv, tblib, sys\nprefix = sys.prefix", python_exe=exe, warm=warm
    )
    try:
        assert mod.only_in_venv.WHERE == "venv"
        assert mod.tblib.WHERE == "venv copy"
        assert mod.prefix == str(tmp_path / "env")
        # The venv has no dill: it is brought along from the parent when a lambda needs it.
        assert mod.evaluate("__import__('importlib.util').util.find_spec('dill')") is None
        apply = mod.evaluate("lambda f, x: f(x)")
        assert apply(lambda x: x + 1, 3) == 4
    finally:
        mod.terminate_daemon()


def test_venv_given_as_a_directory(tmp_path) -> None:
    """python_exe may be the virtual environment's directory."""
    _make_venv(str(tmp_path / "env"), sys.executable)
    mod = spawnproxy.run_script("import sys\nprefix = sys.prefix", python_exe=str(tmp_path / "env"))
    try:
        assert mod.prefix == str(tmp_path / "env")
    finally:
        mod.terminate_daemon()


def test_default_child_sees_parent_sys_path(tmp_path, monkeypatch, warm: bool) -> None:
    """With the parent's own interpreter, modules importable in the parent are importable in the child."""
    (tmp_path / "parent_only_mod.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = spawnproxy.run_module("parent_only_mod", warm=warm)
    try:
        assert mod.VALUE == 7
    finally:
        mod.terminate_daemon()


def test_other_executable_does_not_see_parent_sys_path(tmp_path, monkeypatch, warm: bool) -> None:
    """Another executable (a venv of the same Python included) keeps its own sys.path."""
    (tmp_path / "parent_only_mod2.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    exe = _make_venv(str(tmp_path / "env"), sys.executable)
    with pytest.raises(spawnproxy.DaemonStartError, match="parent_only_mod2"):
        spawnproxy.run_module("parent_only_mod2", python_exe=exe, cwd=str(tmp_path / "env"), warm=warm)


def test_interpreters_found() -> None:
    """At least the parent's own version is found by the interpreter discovery."""
    found = child_interpreters()
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in found or not found
    assert venv  # the venv module is available for the tests above
