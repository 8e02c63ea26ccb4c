"""launcher=: a child behind a command prefix (env, sh, setpriv, bwrap, nice, unshare), over its stdin/stdout."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spawnproxy
from tests.conftest import child_interpreters, gone, run_python, running, wait_until

pytestmark = pytest.mark.timeout(60)

PYTHON = sys.executable  # as seen through these launchers: they run on this machine

# Launchers found on every POSIX machine: they pass stdin and stdout through untouched.
TRIVIAL = {
    "env": ["env"],
    "sh-exec": ["sh", "-c", 'exec "$@"', "sh"],
    "sh-child": ["sh", "-c", '"$@"', "sh"],  # the shell stays, as the interpreter's parent
}

SCRIPT = """
import os, sys, time
print("loaded behind the launcher")

class Vector:
    def __init__(self, x):
        self.x = x
    def __add__(self, other):
        return Vector(self.x + other)
    def __eq__(self, other):
        return isinstance(other, Vector) and other.x == self.x
    def __len__(self):
        return self.x

def add(a, b):
    return a + b

def inner():
    raise KeyError("deep down")

def outer():
    inner()

def each(items, callback):
    return [callback(item * 10) for item in items]

def numbers(n):
    for i in range(n):
        yield i

def shout(text):
    print(text)
    print("err: " + text, file=sys.stderr)

def busy():
    while True:
        pass
"""


@pytest.fixture(params=sorted(TRIVIAL))
def launched(request: pytest.FixtureRequest) -> Iterator[Any]:
    mod = spawnproxy.run_script(SCRIPT, python_exe=PYTHON, launcher=TRIVIAL[request.param])
    yield mod
    mod.terminate_daemon()


def _runs_as(user: str, exe: str) -> bool:
    """Whether `user` can run `exe` the way a launched child is run: through `env` (which finds
    root's pyenv shims and venv links unreadable where a direct exec may not)."""
    try:
        done = subprocess.run(
            ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", "env", exe, "-c", "pass"],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


# -- SPEC §3 through a launcher -----------------------------------------------------------------


def test_calls_operators_exceptions_and_large_data(launched: Any) -> None:
    """Calls, operators, an exception with the child's frames, and 8 MiB each way, through the launcher."""
    assert launched.add(2, 3) == 5
    vector = launched.Vector(2)
    assert (vector + 3).x == 5 and len(vector + 3) == 5
    with pytest.raises(KeyError, match="deep down") as info:
        launched.outer()
    text = "".join(traceback.format_exception(info.value))
    assert "in outer" in text and "in inner" in text and 'raise KeyError("deep down")' in text
    blob = os.urandom(8 << 20)
    assert launched.add(blob, b"!") == blob + b"!"


def test_callbacks_and_streaming(launched: Any) -> None:
    """A callback passed by_ref runs here; a remote generator streams all its items."""
    seen: list[int] = []

    def note(value: int) -> int:
        seen.append(value)
        return value + 1

    assert launched.each([1, 2, 3], spawnproxy.by_ref(note)) == [11, 21, 31]
    assert seen == [10, 20, 30]
    assert sum(launched.numbers(20000)) == sum(range(20000))


def test_the_child_is_behind_the_launcher(launched: Any) -> None:
    """The child's interpreter is the python_exe given, and DaemonProxy.pid is the launcher's process."""
    daemon = spawnproxy.daemon_of(launched)
    assert launched.sys.executable == PYTHON
    assert daemon.pid != os.getpid() and daemon.is_alive()
    assert wait_until(lambda: "loaded behind the launcher" in daemon.logs)


def test_output_is_forwarded_per_stream_and_kept_in_logs(capfd: pytest.CaptureFixture[str]) -> None:
    """The child's stdout and stderr reach the parent's, line by line (no PYTHONUNBUFFERED), and .logs."""
    mod = spawnproxy.run_script(SCRIPT, python_exe=PYTHON, launcher=["env", "-u", "PYTHONUNBUFFERED"])
    try:
        assert "PYTHONUNBUFFERED" not in mod.os.environ
        mod.shout("hello")
        mod.shout("done")
        daemon = spawnproxy.daemon_of(mod)
        # One thread forwards both streams in order: once "err: done" is in the logs, the lines
        # before it have been written out.  capfd is read once, after: a readouterr while another
        # thread writes can lose what lands between its read and its reset.
        assert wait_until(lambda: "err: done" in daemon.logs, 5)
        captured = capfd.readouterr()
        out, err = captured.out, captured.err
        assert "hello" in out and "err: hello" in err
        assert "err: hello" not in out
        logs = daemon.logs
        assert "loaded behind the launcher" in logs and "hello" in logs and "err: hello" in logs
    finally:
        mod.terminate_daemon()


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_another_python_version_behind_a_launcher(version: str) -> None:
    """The interpreter behind a launcher may be another CPython: the child side travels as source."""
    exe = child_interpreters().get(version)
    if exe is None:
        pytest.skip(f"CPython {version} is not installed here")
    mod = spawnproxy.run_script(SCRIPT, python_exe=exe, launcher=TRIVIAL["sh-exec"])
    try:
        assert tuple(spawnproxy.daemon_of(mod).python_version[:2]) == tuple(map(int, version.split(".")))
        assert (mod.Vector(1) + 2).x == 3
    finally:
        mod.terminate_daemon()


def test_terminate_ends_the_launcher_and_the_child() -> None:
    """terminate() ends the child (exit code 0) and reaps the launcher; the proxies then say so."""
    mod = spawnproxy.run_script(SCRIPT, python_exe=PYTHON, launcher=TRIVIAL["sh-child"])
    daemon = spawnproxy.daemon_of(mod)
    child_pid = mod.os.getpid()
    assert child_pid != daemon.pid  # the shell stayed, between us and the interpreter
    assert daemon.terminate() == 0
    assert gone(child_pid, 2) and gone(daemon.pid, 1)
    with pytest.raises(spawnproxy.DaemonTerminatedError):
        mod.add(1, 1)


# A parent that starts a child behind the launcher given in its arguments, and keeps it busy.
BUSY_PARENT = """
import sys
import spawnproxy
mod = spawnproxy.run_script(sys.argv[1], python_exe=sys.executable, launcher=sys.argv[2:])
print("PIDS", mod.os.getpid(), spawnproxy.daemon_of(mod).pid, flush=True)
mod.busy()
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["env", "sh-child"])
def test_parent_killed_child_behind_a_launcher_ends_within_2s(name: str) -> None:
    """A parent killed with SIGKILL takes its busy child down within 2 s, through the launcher too."""
    argv = [sys.executable, "-c", BUSY_PARENT, SCRIPT, *TRIVIAL[name]]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as parent:
        try:
            child, launcher = _pids_from(parent)
            time.sleep(0.3)  # the child is now inside busy()
            assert running(child)
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(5)
            assert gone(child, 2.0), "the child outlived its killed parent by more than 2 s"
            assert gone(launcher, 1.0), "the launcher outlived its child"
        finally:
            parent.kill()


def _pids_from(parent: subprocess.Popen[str]) -> tuple[int, int]:
    """The `PIDS child launcher` line a parent prints (the child's own output comes to its stdout too)."""
    assert parent.stdout is not None
    for line in parent.stdout:
        if line.startswith("PIDS"):
            child, launcher = map(int, line.split()[1:])
            return child, launcher
    raise AssertionError("the parent ended before it started its child")


# -- launchers that change something: fewer privileges, a sandbox, a priority, a namespace ----------


def test_setpriv_runs_the_child_with_fewer_privileges() -> None:
    """Behind `setpriv --reuid=nobody`, the child runs as nobody and cannot read root's private files."""
    if os.geteuid() != 0:
        pytest.skip("setpriv --reuid needs root to switch users (this test runs as another user)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    candidates = [shutil.which("python3") or "", "/usr/bin/python3", *child_interpreters().values()]
    exe = next((exe for exe in candidates if exe and _runs_as("nobody", exe)), None)
    if exe is None:
        pytest.skip("no CPython here that the user nobody may run (they live in root's home)")
    mod = spawnproxy.run_script(
        "import os", python_exe=exe, launcher=["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    )
    try:
        assert mod.os.getuid() == pwd.getpwnam("nobody").pw_uid != os.getuid()
        assert mod.os.getgroups() == []
        with pytest.raises(PermissionError):
            mod.os.listdir("/root")
    finally:
        mod.terminate_daemon()


BWRAP = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--die-with-parent"]


def test_bwrap_sandbox_is_read_only_and_has_its_own_processes(tmp_path: Path) -> None:
    """Behind bwrap, the child sees a read-only file system and a process namespace of its own."""
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap (bubblewrap) is not installed; .ci/run installs it with apt")
    probe = subprocess.run([*BWRAP, "true"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.skip(f"bwrap cannot make a sandbox here: {probe.stderr.strip()}")
    mod = spawnproxy.run_script(SCRIPT, python_exe=PYTHON, launcher=BWRAP)
    try:
        assert mod.add(2, 3) == 5
        assert mod.os.getpid() < 10  # the first processes of a fresh namespace
        with pytest.raises(OSError, match="Read-only file system"):
            mod.os.open(str(tmp_path / "written"), os.O_WRONLY | os.O_CREAT)
        assert not (tmp_path / "written").exists()
        blob = os.urandom(4 << 20)
        assert mod.add(blob, b"") == blob
    finally:
        mod.terminate_daemon()


def test_nice_lowers_the_child_priority() -> None:
    """Behind `nice -n 5`, the child runs 5 steps nicer than this process."""
    mod = spawnproxy.run_script("import os", python_exe=PYTHON, launcher=["nice", "-n", "5"])
    try:
        assert mod.os.nice(0) == min(19, os.nice(0) + 5)
    finally:
        mod.terminate_daemon()


def test_unshare_pid_namespace() -> None:
    """Behind `unshare --pid --fork`, the child is process 1 of a namespace of its own."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("unshare --pid needs root (and util-linux's unshare)")
    mod = spawnproxy.run_script("import os", python_exe=PYTHON, launcher=["unshare", "--pid", "--fork"])
    try:
        assert mod.os.getpid() == 1
    finally:
        mod.terminate_daemon()


# -- every way of starting a child takes it --------------------------------------------------------


def test_every_entry_point_takes_a_launcher() -> None:
    """run_module, run_object, DaemonProxy and serve start their child behind the launcher."""
    marker = {"SP_BEHIND": "yes"}
    launcher = ["env", "SP_LAUNCHED=1"]
    mod = spawnproxy.run_module("os", python_exe=PYTHON, launcher=launcher, env=marker)
    try:
        assert mod.environ["SP_LAUNCHED"] == "1" and mod.environ["SP_BEHIND"] == "yes"
    finally:
        mod.terminate_daemon()
    obj = spawnproxy.run_object([1, 2], python_exe=PYTHON, launcher=launcher)
    try:
        obj.append(3)
        assert obj == [1, 2, 3]
    finally:
        obj.terminate_daemon()
    with spawnproxy.DaemonProxy(spawnproxy.ModuleDefinition("os"), PYTHON, launcher=launcher) as daemon:
        assert daemon.proxy.environ["SP_LAUNCHED"] == "1"
    server = spawnproxy.serve(spawnproxy.ModuleDefinition("os"), python_exe=PYTHON, launcher=launcher)
    try:
        client = spawnproxy.connect(server.address, authkey=server.authkey)
        assert client.environ["SP_LAUNCHED"] == "1"
        client.terminate_daemon()
    finally:
        server.terminate()


def test_a_callable_launcher_is_called_with_index_0() -> None:
    """Outside a Pool, a callable launcher is called once, with 0, and its command is used."""
    calls: list[int] = []

    def launcher(index: int) -> list[str]:
        calls.append(index)
        return ["env", f"SP_WORKER={index}"]

    mod = spawnproxy.run_module("os", python_exe=PYTHON, launcher=launcher)
    try:
        assert calls == [0] and mod.environ["SP_WORKER"] == "0"
    finally:
        mod.terminate_daemon()


def test_default_python_exe_is_python3_on_the_launcher_path() -> None:
    """Without python_exe, the launcher runs `python3` (as found on its PATH)."""
    if shutil.which("python3") is None:
        pytest.skip("no python3 on PATH here")
    mod = spawnproxy.run_module("sys", launcher=["env"], start_timeout=30)
    try:
        assert mod.version_info[0] == 3
    finally:
        mod.terminate_daemon()


def test_env_values_reach_the_child_verbatim_and_names_are_checked(tmp_path: Path) -> None:
    """env values arrive as given (never run); a name the `env` command could take for an option is refused."""
    values = {"SP_QUOTES": 'it\'s "quoted"', "SP_SUBST": "$(echo no) `echo no`", "SP_DASH": "--split-string=x"}
    mod = spawnproxy.run_module("os", python_exe=PYTHON, launcher=["env"], env=values)
    try:
        assert {name: mod.environ.get(name) for name in values} == values
    finally:
        mod.terminate_daemon()
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="env key '--split-string'") as info:
        spawnproxy.run_script(
            "x = 1", python_exe=PYTHON, launcher=["env"], env={"--split-string": f"sh -c 'touch {marker}' #"}
        )
    assert "\n" not in str(info.value) and not marker.exists()


# -- launchers that fail: a one-line DaemonStartError within start_timeout, their stderr in it -----------


FAILING = {
    "missing": (["spawnproxy-no-such-launcher"], r"could not start the launcher .*No such file"),
    "false": (["false"], r"the launcher \['false'\] exited with exit code 1 before the child answered"),
    "says why": (["sh", "-c", "echo nope >&2; exit 3", "sh"], r"exited with exit code 3 .*nope"),
    "never starts it": (
        ["sh", "-c", "sleep 30", "sh"],
        r"did not answer within 1 s.*start the interpreter, or buffers",
    ),
    "junk on stdout": (
        ["sh", "-c", 'echo "junk from the launcher"; exec "$@"', "sh"],
        r"wrote b'junk from the launcher\\n' to its stdout, not the child's",
    ),
    "buffers": (["sh", "-c", '"$@" | dd bs=1M iflag=fullblock 2>/dev/null', "sh"], r"buffers its output"),
    "no such python": (["env"], r"exited with exit code 127 .*No such file or directory"),
}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_a_failing_launcher_raises_one_line_within_start_timeout(case: str) -> None:
    """A launcher that is missing, fails, says why, never starts the interpreter, writes junk or buffers: one clear line."""
    launcher, expected = FAILING[case]
    python = "/no/such/python" if case == "no such python" else PYTHON
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonStartError, match=expected) as info:
        spawnproxy.run_script("x = 1", python_exe=python, launcher=launcher, start_timeout=1)
    assert time.monotonic() - started < 2.5, "a failing launcher took well past start_timeout"
    assert "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("launcher", "error", "expected"),
    [
        ("docker exec -i box", TypeError, r"launcher must be a list of str .*not the str 'docker exec -i box'"),
        ([], ValueError, r"launcher must not be empty"),
        (["env", 3], TypeError, r"launcher\[1\] must be a str, not int"),
        ([""], ValueError, r"launcher\[0\] is empty"),
        (["env", "a\0b"], ValueError, r"launcher\[1\] holds a NUL"),
        (iter(["env"]), TypeError, r"launcher must be a list of str .*not list_iterator"),
        (lambda index: 5, TypeError, r"launcher\(0\) returned int 5, not a list of str"),
        (lambda index: "env", TypeError, r"launcher\(0\) returned the str 'env', not a list of str"),
    ],
)
def test_bad_launcher_values_are_refused_before_anything_starts(launcher: Any, error: type, expected: str) -> None:
    """A launcher that is not a non-empty list of str (or a callable returning one): TypeError/ValueError naming it."""
    with pytest.raises(error, match=expected) as info:
        spawnproxy.run_script("x = 1", python_exe=PYTHON, launcher=launcher)
    assert "\n" not in str(info.value)


def test_ssh_url_with_a_launcher_is_refused() -> None:
    """python_exe="ssh://..." already has ssh for launcher: giving another is a ValueError."""
    with pytest.raises(ValueError, match=r"launcher cannot be combined with python_exe='ssh://host/usr/bin/python3'"):
        spawnproxy.run_script("x = 1", python_exe="ssh://host/usr/bin/python3", launcher=["env"])
    with pytest.raises(TypeError, match=r"python_exe must be a path"):
        spawnproxy.run_script("x = 1", python_exe=3, launcher=["env"])  # type: ignore[arg-type]


def test_a_launcher_dying_mid_call_fails_the_call_at_once() -> None:
    """Killing the launcher (the shell between us and the child) fails a running call with DaemonDiedError."""
    mod = spawnproxy.run_script(SCRIPT, python_exe=PYTHON, launcher=TRIVIAL["sh-child"])
    daemon = spawnproxy.daemon_of(mod)
    child = mod.os.getpid()
    errors: list[tuple[BaseException, float]] = []

    def call() -> None:
        try:
            mod.busy()
        except BaseException as exc:
            errors.append((exc, time.monotonic()))

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    killed = time.monotonic()
    os.kill(daemon.pid, signal.SIGKILL)
    thread.join(5)
    assert not thread.is_alive() and errors and isinstance(errors[0][0], spawnproxy.DaemonDiedError), errors
    assert errors[0][1] - killed < 1.0
    assert re.search("SIGKILL", str(errors[0][0]))
    assert gone(child, 2), "the child outlived its launcher's death"  # its pipes' other end is closed
    daemon.terminate()


def test_a_launcher_in_a_parent_that_exits_leaves_nothing_behind() -> None:
    """A parent that exits with launched children still referenced leaves no process behind."""
    result = run_python(
        "import spawnproxy, sys\n"
        f"mods = [spawnproxy.run_script('import os', python_exe={PYTHON!r}, launcher={TRIVIAL['sh-child']!r})"
        " for _ in range(2)]\n"
        "print(' '.join(str(m.os.getpid()) for m in mods), flush=True)\n"
    )
    assert result.returncode == 0, result.stderr
    for pid in map(int, result.stdout.split()):
        assert gone(pid, 2), f"child {pid} outlived its parent"
