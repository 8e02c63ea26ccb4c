"""Faults: bad input gets a clear error at once, and nothing already running is lost (SPEC §3.9)."""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import time

import pytest

import spawnproxy
from tests.conftest import START, interpreter_version
from tests.targets.faulty import Handle
from tests.targets.parents import TARGET

pytestmark = pytest.mark.timeout(60)


@functools.lru_cache(maxsize=1)
def old_pythons() -> dict[str, str]:
    """CPython (or Python 2) executables older than 3.8 on this machine: 'X.Y' -> path, found at run time."""
    candidates = []
    for root in filter(None, [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]):
        candidates += sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python[23].[0-9]")))
    candidates += filter(None, (shutil.which(f"python{v}") for v in ("2.7", "3.6", "3.7")))
    found: dict[str, str] = {}
    for exe in candidates:
        version = interpreter_version(exe)
        if version and tuple(map(int, version.split("."))) < (3, 8):
            found.setdefault(version, exe)
    return found


def _bad_executables(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (python_exe, text the DaemonStartError must contain)."""
    not_executable = tmp_path / "not_executable"
    not_executable.write_text("print('hi')\n")
    text_file = tmp_path / "text_file"
    text_file.write_text("this is not a program\n")
    text_file.chmod(0o755)
    shell = tmp_path / "shell_script"
    shell.write_text("#!/bin/sh\necho 'I am not Python' >&2\nexit 3\n")
    shell.chmod(0o755)
    empty_dir = tmp_path / "venv_without_python"
    empty_dir.mkdir()
    return {
        "missing": ("/no/such/dir/python3", "does not exist"),
        "not executable": (str(not_executable), "not executable"),
        "directory without python": (str(empty_dir), "directory"),
        "/bin/true": ("/bin/true", "not a usable Python"),
        "/bin/ls": ("/bin/ls", "not a usable Python"),
        "text file made executable": (str(text_file), "could not start"),
        "shell script": (str(shell), "I am not Python"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "missing",
        "not executable",
        "directory without python",
        "/bin/true",
        "/bin/ls",
        "text file made executable",
        "shell script",
    ],
)
def test_unusable_executable(tmp_path, name: str) -> None:
    """A python_exe that is missing, not executable or not Python: DaemonStartError within 2 s, naming it."""
    exe, text = _bad_executables(tmp_path)[name]
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonStartError) as info:
        spawnproxy.run_script("x = 1", python_exe=exe)
    assert time.monotonic() - started < START
    assert exe in str(info.value)
    assert text in str(info.value)


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7"])
def test_python_older_than_38(version: str) -> None:
    """A CPython older than 3.8 is refused with DaemonStartError within 2 s, saying so."""
    exe = old_pythons().get(version)
    if exe is None:
        pytest.skip(f"Python {version} is not installed here")
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonStartError, match=r"older than CPython 3\.8") as info:
        spawnproxy.run_script("x = 1", python_exe=exe)
    assert time.monotonic() - started < START
    assert f"Python {version}" in str(info.value)


def test_wrong_argument_types_are_type_errors() -> None:
    """A class instead of an instance, a script that is not a str, a bad python_exe or logger: TypeError."""
    with pytest.raises(TypeError, match="class Handle, not an instance"):
        spawnproxy.run_object(Handle)
    with pytest.raises(TypeError, match="run_script or run_module"):
        spawnproxy.run_object(spawnproxy.ScriptDefinition("x = 1"))
    for script in (b"x = 1", None, 42):
        with pytest.raises(TypeError, match="script must be a str"):
            spawnproxy.run_script(script)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="python_exe must be a path"):
        spawnproxy.run_script("x = 1", python_exe=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="logger"):
        spawnproxy.run_script("x = 1", logger="spawnproxy")  # type: ignore[arg-type]


def test_unknown_option_is_a_type_error() -> None:
    """An option that does not exist is a TypeError naming it and listing the real ones."""
    with pytest.raises(TypeError, match=r"'call_timout'.*call_timeout"):
        spawnproxy.run_script("x = 1", call_timout=1)
    with pytest.raises(TypeError, match="'bogus'"):
        spawnproxy.DaemonProxy(spawnproxy.ScriptDefinition("x = 1"), bogus=True)


def test_bad_module_path(tmp_path) -> None:
    """module_path not naming a .py file: ValueError at once; one missing in the child: DaemonStartError."""
    with pytest.raises(ValueError, match=r"not a \.py file"):
        spawnproxy.run_module("m", module_path=tmp_path)
    text = tmp_path / "m.txt"
    text.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"not a \.py file"):
        spawnproxy.run_module("m", module_path=text)
    with pytest.raises(spawnproxy.DaemonStartError, match=r"missing\.py' does not exist in the child"):
        spawnproxy.run_module("m", module_path=tmp_path / "missing.py")


def test_unserializable_argument_names_it_and_spares_the_child() -> None:
    """An argument nothing can serialize: SerializationError naming it, nothing sent, child state intact."""
    mod = spawnproxy.run_object(spawnproxy.InstanceDefinition("tests.targets.sample", "Service"))
    try:
        assert mod.bump(5) == 5
        generator = (i for i in range(3))
        with pytest.raises(spawnproxy.SerializationError, match=r"argument 1 \(<generator"):
            mod.add(1, generator)
        with pytest.raises(spawnproxy.SerializationError, match="keyword argument 'b'"):
            mod.add(1, b=generator)
        with pytest.raises(spawnproxy.SerializationError, match="the value"):
            mod.extra = generator
        assert spawnproxy.daemon_of(mod).is_alive()
        assert mod.bump(1) == 6  # the state before is still there: nothing was lost
        assert mod.add(2, 3) == 5
    finally:
        mod.terminate_daemon()


def test_remote_errors_leave_the_child_usable() -> None:
    """Calls that fail remotely (missing attribute, bad arguments) leave the child and its objects intact."""
    mod = spawnproxy.run_object(spawnproxy.InstanceDefinition("tests.targets.sample", "Service"))
    try:
        mod.bump(2)
        with pytest.raises(AttributeError):
            mod.no_such_method()
        with pytest.raises(TypeError):
            mod.add()
        with pytest.raises(ValueError, match="boom"):
            mod.fail()
        assert mod.bump(1) == 3
    finally:
        mod.terminate_daemon()


def test_result_the_parent_cannot_rebuild_comes_back_as_a_proxy() -> None:
    """A result that cannot travel (class only in the child, unpicklable) comes back as a working proxy."""
    mod = spawnproxy.run_script("class Local:\n    def twice(self, x):\n        return 2 * x\nmake = Local\n")
    faulty = spawnproxy.run_module(TARGET)
    try:
        local = mod.make()
        assert isinstance(local, spawnproxy.ObjectProxy)
        assert local.twice(21) == 42
        handle = faulty.make_handle(7)
        assert isinstance(handle, spawnproxy.ObjectProxy)
        assert handle.n == 7
    finally:
        mod.terminate_daemon()
        faulty.terminate_daemon()


def test_result_that_fails_to_unpickle_is_a_clear_error() -> None:
    """A result whose unpickling fails in the parent: SerializationError naming the call; child usable."""
    mod = spawnproxy.run_module(TARGET)
    try:
        with pytest.raises(spawnproxy.SerializationError, match=r"make_fragile\(\)"):
            mod.make_fragile()
        assert mod.ping("next") == "next"
    finally:
        mod.terminate_daemon()


def test_stale_answer_that_fails_to_unpickle_is_dropped() -> None:
    """A timed-out call's late answer is discarded even when it cannot be rebuilt: later calls are unaffected."""
    mod = spawnproxy.run_module(TARGET)
    try:
        with pytest.raises(spawnproxy.CallTimeoutError), spawnproxy.call_timeout(0.1):
            mod.make_fragile(0.3)
        with spawnproxy.call_timeout(5):
            for k in range(3):
                assert mod.ping(k) == k
    finally:
        mod.terminate_daemon()


def test_failing_log_handler_does_not_break_the_child() -> None:
    """A logger whose handler raises does not stop the child's output from being drained, nor its calls."""

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("handler failure")

    logger = logging.getLogger("tests.faults.broken")
    logger.propagate = False
    logger.addHandler(Broken())
    mod = spawnproxy.run_module(TARGET, logger=logger)
    try:
        for k in range(3):
            assert mod.nap(0.05, k) == k  # nap writes a line on stderr: the handler fails on each
        assert spawnproxy.daemon_of(mod).logs[-3:] == ["napping for 0.05 s"] * 3
    finally:
        mod.terminate_daemon()
