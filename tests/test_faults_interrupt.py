"""Faults: Ctrl-C in the parent — forwarded to the call, abandoned on the second, never fatal to the child."""

from __future__ import annotations

import os
import signal
import time

import pytest

import spawnproxy
from tests.targets.parents import TARGET, Parent, gone

pytestmark = pytest.mark.timeout(60)

# A SIGINT turns into KeyboardInterrupt in the parent within this (seconds).
INTERRUPT_NOTICE = 1.0
# A parent whose remote call was abandoned exits within this, its busy child ended at exit.
EXIT_AFTER_ABANDON = 3.0


def test_first_sigint_interrupts_the_remote_call(parents, warm: bool) -> None:
    """One SIGINT: the remote call raises KeyboardInterrupt raised in the child; the child stays usable."""
    parent = Parent("sigint_once", warm=warm)
    parents.append(parent)
    time.sleep(0.5)  # the parent is inside mod.nap(30)
    parent.signal(signal.SIGINT)
    found = parent.results(timeout=10)
    assert found["exitcode"] == "0", parent.stderr
    assert float(found["INTERRUPTED_AFTER"]) < 0.5 + INTERRUPT_NOTICE
    assert found["REMOTE_FRAME"] == "True"  # the traceback shows the child's frame: it was raised there
    assert found["CHILD_ALIVE"] == "True"
    assert found["NEXT_CALL"] == "usable"
    assert gone(parent.children[0], 2)  # ended with its parent


def test_second_sigint_abandons_the_call(parents, warm: bool) -> None:
    """A call that ignores the forwarded SIGINT is abandoned by a second one; the parent does not hang."""
    parent = Parent("sigint_twice", warm=warm)
    parents.append(parent)
    time.sleep(0.5)
    parent.signal(signal.SIGINT)
    time.sleep(0.3)
    assert parent.popen.poll() is None  # the first one only interrupted the child's call, which ignores it
    parent.signal(signal.SIGINT)
    second = time.monotonic()
    found = parent.results(timeout=10)
    assert found["exitcode"] == "0", parent.stderr
    assert 0.5 + 0.3 - 0.1 < float(found["ABANDONED_AT"]) < 0.5 + 0.3 + INTERRUPT_NOTICE
    assert time.monotonic() - second < EXIT_AFTER_ABANDON
    assert gone(parent.children[0], 2)


@pytest.mark.parametrize("where", ["idle", "call"])
def test_sigint_to_the_parents_group_spares_the_child(parents, where: str, warm: bool) -> None:
    """Ctrl-C at the terminal (SIGINT to the parent's process group) never reaches the child directly."""
    parent = Parent("group_sigint", where, warm=warm)
    parents.append(parent)
    time.sleep(0.5)
    os.killpg(os.getpgid(parent.pid), signal.SIGINT)
    found = parent.results(timeout=10)
    assert found["exitcode"] == "0", parent.stderr
    assert found["INTERRUPTED"] == "1"
    assert found["CHILD_ALIVE"] == "True"  # with SIGINT at its default, the idle child would have died
    assert found["NEXT_CALL"] == "usable"


def test_child_runs_in_its_own_session(warm: bool) -> None:
    """The child is in a session and process group of its own, apart from the parent's terminal."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    try:
        pid = spawnproxy.daemon_of(mod).pid
        assert os.getsid(pid) == pid != os.getsid(0)
        assert os.getpgid(pid) == pid != os.getpgid(0)
    finally:
        mod.terminate_daemon()


def test_forwarded_sigint_between_calls_does_not_kill_the_child(warm: bool) -> None:
    """A SIGINT that reaches an idle child (the race of a Ctrl-C with the end of a call) is harmless."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    try:
        daemon = spawnproxy.daemon_of(mod)
        assert mod.ping(1) == 1
        os.kill(daemon.pid, signal.SIGINT)  # what Session forwards on Ctrl-C, arriving after the call ended
        time.sleep(0.3)
        assert daemon.is_alive()
        assert mod.ping(2) == 2
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_sigint_while_sending_keeps_the_channel_whole(parents, warm: bool) -> None:
    """Ctrl-C during a blocked send interrupts that call only: the next call gets its answer."""
    parent = Parent("sigint_during_send", warm=warm)
    parents.append(parent)
    time.sleep(0.3)  # the parent is blocked writing 512 KiB to a child busy for 2 s
    parent.signal(signal.SIGINT)
    found = parent.results(timeout=20)
    assert found.get("INTERRUPTED") == "1", parent.stderr
    assert found.get("NEXT_CALL") == "usable", found
