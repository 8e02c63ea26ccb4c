"""Lifetime (SPEC §3.7): GC, terminate_daemon, context manager, interpreter exit, parent death."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import spawnproxy
from spawnproxy._zygote import zygote_pids
from tests.conftest import gone, run_python, running

pytestmark = pytest.mark.timeout(60)


def test_gc_of_last_proxy_ends_the_child(warm: bool) -> None:
    """When no proxy is referenced any more, the child ends and is reaped."""
    mod = spawnproxy.run_script("x = [1]", warm=warm)
    nested = mod.x
    pid = spawnproxy.daemon_of(mod).pid
    del mod
    gc.collect()
    assert psutil.pid_exists(pid)  # the nested proxy still holds it
    assert nested == [1]
    del nested
    gc.collect()
    assert gone(pid, 5)


def test_terminate_daemon_from_nested_proxy_is_idempotent(warm: bool) -> None:
    """terminate_daemon() works from any proxy, twice, and later use raises DaemonTerminatedError."""
    mod = spawnproxy.run_script("x = 1\ndef f():\n    return 2", warm=warm)
    pid = spawnproxy.daemon_of(mod).pid
    f = mod.f
    mod.x.terminate_daemon()
    mod.terminate_daemon()
    assert gone(pid, 1)
    with pytest.raises(spawnproxy.DaemonTerminatedError, match=f"child {pid} was terminated"):
        f()


def test_context_manager_terminates(warm: bool) -> None:
    """The DaemonProxy context manager ends the child on exit, also on error."""
    with pytest.raises(RuntimeError), spawnproxy.DaemonProxy(spawnproxy.ScriptDefinition("x = 1"), warm=warm) as daemon:
        pid = daemon.pid
        raise RuntimeError("inside")
    assert gone(pid, 1)
    assert not daemon.is_alive()


def test_interpreter_exit_ends_children(warm: bool) -> None:
    """A parent that exits with children still referenced leaves none behind."""
    result = run_python(
        "import spawnproxy\n"
        f"mods = [spawnproxy.run_script('import time', warm={warm}) for _ in range(3)]\n"
        "print(' '.join(str(spawnproxy.daemon_of(m).pid) for m in mods), flush=True)\n"
    )
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 3
    for pid in pids:
        assert gone(pid, 2), f"child {pid} outlived its parent"


@pytest.mark.slow
@pytest.mark.parametrize("busy", ["time.sleep(1000)", "while True: pass"])
def test_parent_killed_child_ends_within_2s(busy: str, warm: bool) -> None:
    """A parent killed with SIGKILL takes its child down within 2 s, even a busy one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import spawnproxy, threading, sys\n"
        f"mod = spawnproxy.run_script('import time\\ndef busy():\\n    {busy}', warm={warm})\n"
        "print(spawnproxy.daemon_of(mod).pid, flush=True)\n"
        "mod.busy()\n"
    )
    env = dict(os.environ, PYTHONPATH=root)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        time.sleep(0.3)  # the child is now inside busy()
        assert psutil.pid_exists(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        started = time.monotonic()
        assert gone(pid, 2.0), "the child outlived its killed parent by more than 2 s"
        assert time.monotonic() - started < 2.0
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_no_zombie_or_fd_leak(warm: bool) -> None:
    """Starting and ending children leaves no zombie and no open file descriptor behind."""

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def children() -> list[int]:
        return [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in zygote_pids()]

    first = spawnproxy.run_script("x = 1", warm=warm)  # a zygote, if warm, starts here and lives on
    first.terminate_daemon()
    before = fds()
    for i in range(5):
        mod = spawnproxy.run_script("x = 1", warm=warm)
        assert mod.x == 1
        if i % 2:
            mod.terminate_daemon()
        del mod
        gc.collect()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (fds() > before or children()):
        time.sleep(0.05)
    assert fds() <= before
    assert not [
        p.pid for p in psutil.Process().children(recursive=True) if not running(p.pid) and psutil.pid_exists(p.pid)
    ]


def test_child_death_mid_call_raises_died_error(warm: bool) -> None:
    """A child that dies during a call makes it raise DaemonDiedError at once, with the exit code."""
    mod = spawnproxy.run_script(
        "import os, sys\ndef die():\n    sys.stderr.write('about to die\\n')\n    os._exit(7)", warm=warm
    )
    start = time.monotonic()
    with pytest.raises(spawnproxy.DaemonDiedError, match="exit code 7") as info:
        mod.die()
    assert time.monotonic() - start < 1.0
    assert info.value.exitcode == 7
    assert "about to die" in str(info.value)
    with pytest.raises(spawnproxy.DaemonDiedError):
        mod.die()


def test_child_killed_by_signal_is_named(warm: bool) -> None:
    """A child killed by SIGKILL during a call: DaemonDiedError names the signal."""
    mod = spawnproxy.run_script("import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)", warm=warm)
    with pytest.raises(spawnproxy.DaemonDiedError, match="SIGKILL"):
        mod.die()


def test_a_finalizer_run_while_the_registry_is_locked_does_not_deadlock() -> None:
    """GC may end a dropped handle inside the registry's own critical section (its WeakSet.add): reap_later must not block."""
    from spawnproxy import _process

    daemon = spawnproxy.DaemonProxy(spawnproxy.ScriptDefinition("x = 1"))
    pid = daemon.pid
    done = threading.Event()

    def finalizer_inside_the_lock() -> None:
        with _process._reaper_lock:  # as _register holds it when a collection runs a finalizer
            _process.reap_later(daemon._process)
        done.set()

    thread = threading.Thread(target=finalizer_inside_the_lock, daemon=True)
    thread.start()
    assert done.wait(5), "reap_later blocked on the registry's lock, held by its own thread"
    assert gone(pid, 5)
