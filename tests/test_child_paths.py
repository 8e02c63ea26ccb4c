"""Paths are the child's: module_path and cwd are checked where the child runs, env names are checked at
once, and nothing is imported from a child's (or a supervisor's) working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import spawnproxy
from spawnproxy import DaemonStartError, ModuleDefinition, ScriptDefinition

pytestmark = pytest.mark.timeout(60)

# Modules a child could import from its working directory: every standard module name, and the
# ones CPython imports on its own (3.13 imports linecache for `python -c` before running the code).
PLANTED = sorted(set(sys.stdlib_module_names) | {"linecache", "traceback", "_colorize", "sitecustomize"})


def plant(directory: Path, marker: Path) -> None:
    """Fill `directory` with a module of every standard name that records its import in `marker`."""
    for name in PLANTED:
        (directory / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write('%s imported in pid %s\\n' % (__name__, __import__('os').getpid()))\n"
        )


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A directory of planted standard-library modules, and the file they write to when imported."""
    directory = tmp_path / "hostile"
    directory.mkdir()
    marker = tmp_path / "imported.txt"
    plant(directory, marker)
    return directory, marker


# -- A: module_path and cwd are the child's -------------------------------------------------------


def test_missing_module_path_is_a_start_error_naming_it(tmp_path: Path) -> None:
    """A module_path that does not exist: DaemonStartError naming the path (the child's finding), not FileNotFoundError."""
    missing = tmp_path / "missing.py"
    with pytest.raises(DaemonStartError, match=re.escape(str(missing))):
        spawnproxy.run_module("m", module_path=missing)
    folder = tmp_path / "folder.py"
    folder.mkdir()
    with pytest.raises(DaemonStartError, match=re.escape(str(folder))):
        spawnproxy.run_module("m", module_path=folder)


def test_relative_module_path_is_found_from_the_childs_directory(tmp_path: Path) -> None:
    """A relative module_path is the child's: found from its cwd, though the parent cannot see it from its own."""
    (tmp_path / "only_there.py").write_text("VALUE = 5\n")
    assert not os.path.exists("only_there.py")
    mod = spawnproxy.run_module("only_there", module_path="only_there.py", cwd=tmp_path)
    try:
        assert mod.VALUE == 5
    finally:
        mod.terminate_daemon()


def test_missing_cwd_is_a_start_error_naming_it(tmp_path: Path) -> None:
    """A cwd that does not exist, or is a file: DaemonStartError naming it, before the definition loads."""
    loaded = tmp_path / "loaded.txt"
    script = f"open({str(loaded)!r}, 'w').close()"
    file = tmp_path / "file"
    file.write_text("")
    for bad in (tmp_path / "no_such_dir", file):
        with pytest.raises(DaemonStartError, match=rf"cwd '{re.escape(str(bad))}'"):
            spawnproxy.run_script(script, cwd=bad)
    assert not loaded.exists()


def test_cwd_is_the_working_directory_while_the_definition_loads(tmp_path: Path) -> None:
    """The definition loads with cwd= as its working directory (the child changed to it first)."""
    mod = spawnproxy.run_script("import os\nwhere = os.getcwd()", cwd=str(tmp_path))
    try:
        assert os.path.samefile(str(mod.where), tmp_path)
    finally:
        mod.terminate_daemon()


def test_path_types_and_forms_are_checked_in_the_parent(tmp_path: Path) -> None:
    """module_path and cwd of a wrong type or form: TypeError or ValueError at once, naming the option."""
    with pytest.raises(TypeError, match="module_path"):
        ModuleDefinition("m", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="module_path"):
        ModuleDefinition("m", b"/tmp/m.py")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"module_path .* not a \.py file"):
        ModuleDefinition("m", tmp_path / "m.txt")
    with pytest.raises(ValueError, match=r"module_path .*NUL"):
        ModuleDefinition("m", "/tmp/m\0.py")
    with pytest.raises(TypeError, match="cwd"):
        spawnproxy.run_script("x = 1", cwd=3)
    with pytest.raises(TypeError, match="cwd"):
        spawnproxy.run_script("x = 1", cwd=b"/tmp")
    with pytest.raises(ValueError, match=r"cwd .*empty"):
        spawnproxy.run_script("x = 1", cwd="")
    with pytest.raises(ValueError, match=r"cwd .*NUL"):
        spawnproxy.run_script("x = 1", cwd="/tmp\0x")


# -- C: env names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"A=B": "1"}, r"env key 'A=B'"),
        ({"": "1"}, r"env key ''"),
        ({"A\0B": "1"}, r"env key 'A\\x00B'"),
        ({"GOOD": "x\0y"}, r"env value of 'GOOD' .*NUL"),
    ],
)
def test_env_that_no_process_can_hold_is_a_value_error_naming_the_key(env: dict[str, str], message: str) -> None:
    """An env key with '=' or NUL, an empty key, or a value with NUL: one-line ValueError naming the key."""
    with pytest.raises(ValueError, match=message) as caught:
        spawnproxy.run_script("x = 1", env=env)
    assert "\n" not in str(caught.value)


# -- B: nothing imported from the working directory -----------------------------------------------


def test_children_import_nothing_from_their_working_directory(
    child_python: str, hostile: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child of every interpreter, started in a directory of planted stdlib modules, imports none of them."""
    directory, marker = hostile
    monkeypatch.chdir(directory)
    for python_exe in (child_python, None):  # another interpreter, and the parent's own
        mod = spawnproxy.run_script("import colorsys, json, os\nfound = colorsys.__file__", python_exe=python_exe)
        try:
            assert mod.json.dumps([1]) == "[1]"
            assert str(directory) not in str(mod.found)
            # The means to that end is not passed on to the child's own subprocesses.
            assert mod.os.environ.get("PYTHONSAFEPATH") is None
        finally:
            mod.terminate_daemon()
    assert not marker.exists(), marker.read_text()


def test_a_pythonsafepath_of_the_users_own_is_kept() -> None:
    """PYTHONSAFEPATH set in the child's env by the user stays in the child's environment."""
    mod = spawnproxy.run_script(
        "import os\nvalue = os.environ.get('PYTHONSAFEPATH')", env={**os.environ, "PYTHONSAFEPATH": "1"}
    )
    try:
        assert mod.value == "1"
    finally:
        mod.terminate_daemon()


def test_other_working_directory_is_not_searched_either(hostile: tuple[Path, Path]) -> None:
    """A child given cwd= a directory of planted modules imports none of them."""
    directory, marker = hostile
    mod = spawnproxy.run_script("import colorsys\nfound = colorsys.__file__", cwd=directory)
    try:
        assert str(directory) not in str(mod.found)
    finally:
        mod.terminate_daemon()
    assert not marker.exists(), marker.read_text()


def test_parent_sys_path_still_reaches_its_own_interpreters_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory on the parent's own sys.path is searched by its children, as before."""
    (tmp_path / "from_parent_path.py").write_text("VALUE = 11\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = spawnproxy.run_module("from_parent_path")
    try:
        assert mod.VALUE == 11
    finally:
        mod.terminate_daemon()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_detached_supervisor_imports_nothing_from_its_working_directory(
    hostile: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve(detach=True) from a directory of planted modules: supervisor and daemon import none of them."""
    directory, marker = hostile
    monkeypatch.chdir(directory)
    server = spawnproxy.serve(ScriptDefinition("x = 3"), detach=True, state_file=tmp_path / "state.json")
    try:
        assert spawnproxy.connect(server.address, authkey=server.authkey).x + 0 == 3
    finally:
        server.terminate()
    assert not marker.exists(), marker.read_text()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_detached_daemon_sees_its_starters_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A detached daemon of the parent's interpreter gets the starter's sys.path, as a child does."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "starter_only.py").write_text("VALUE = 13\n")
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.chdir(tmp_path)
    server = spawnproxy.serve(ModuleDefinition("starter_only"), detach=True, state_file=tmp_path / "state.json")
    try:
        assert spawnproxy.connect(server.address, authkey=server.authkey).VALUE + 0 == 13
    finally:
        server.terminate()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_cli_daemon_imports_nothing_from_the_current_directory(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    """`spawnproxy serve script.py --detach` run in a directory of planted modules: none is imported, ever."""
    script = Path(sys.executable).with_name("spawnproxy")
    if not script.exists():
        pytest.skip("the spawnproxy console script is not installed next to this interpreter")
    directory, marker = hostile
    (directory / "served.py").write_text("import colorsys\nfound = colorsys.__file__\n")
    state = str(tmp_path / "state.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = subprocess.run(
        [str(script), "serve", "served.py", "--detach", "--state-file", state],
        cwd=directory, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        served = spawnproxy.connect(state_file=state)  # the daemon's handshake imports more modules
        assert str(directory) not in str(served.found)
    finally:
        subprocess.run([str(script), "stop", "--state-file", state], env=env, capture_output=True, timeout=60)
    assert not marker.exists(), marker.read_text()
