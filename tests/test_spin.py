"""A wait for input watches for it on the CPU a moment before it sleeps (see channel.Channel._spin)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

import spawnproxy
from spawnproxy._child import channel

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts context switches in /proc"),
]

SCRIPT = """
import time

def add(a, b):
    return a + b

def sleep(seconds):
    time.sleep(seconds)
"""

CHILD_CPUS = """
import gc

def cpus():
    child = [o for o in gc.get_objects() if type(o).__name__ == "Child"][0]
    return child.channel._cpus
"""


def usable_cpus() -> set[int]:
    return os.sched_getaffinity(0)


def switches(pid: int, tid: int | None = None) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process's threads, or of one of them."""
    tids = [tid] if tid is not None else [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    voluntary = involuntary = 0
    for t in tids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{t}/status") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def sleeps_per_call(mod: object, pid: int, calls: int = 1000) -> tuple[float, float]:
    """How often the child and this thread fell asleep per call, over a run of calls."""
    me = threading.get_native_id()
    child, mine = switches(pid)[0], switches(os.getpid(), me)[0]
    for i in range(calls):
        assert mod.add(i, 1) == i + 1  # type: ignore[attr-defined]
    return (switches(pid)[0] - child) / calls, (switches(os.getpid(), me)[0] - mine) / calls


@contextlib.contextmanager
def on_one_cpu(pids: list[int]) -> Iterator[None]:
    """Pin every thread of these processes to one CPU; give back what they had after."""
    allowed = usable_cpus()
    one = {min(allowed)}

    def pin(cpus: set[int]) -> None:
        for pid in pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)

    pin(one)
    try:
        yield
    finally:
        pin(allowed)


@pytest.mark.skipif(len(usable_cpus()) < 2, reason="spinning pays only with two CPUs or more")
def test_a_run_of_calls_does_not_fall_asleep_between_them() -> None:
    # Sleeping and being woken again is what a spin saves: without it, the child falls
    # asleep once per call waiting for the next, and the caller once waiting for the answer.
    mod = spawnproxy.run_script(SCRIPT)
    try:
        pid = spawnproxy.daemon_of(mod).pid
        runs = [sleeps_per_call(mod, pid) for _ in range(5)]  # the best run: a loaded machine may interrupt some
        child, caller = min(runs, key=sum)
        assert child < 0.5, runs
        assert caller < 0.5, runs
    finally:
        mod.terminate_daemon()


@pytest.mark.skipif(len(usable_cpus()) < 2, reason="needs a second CPU to pin away from")
def test_on_one_cpu_nothing_spins() -> None:
    # On one CPU the other end cannot answer while a wait spins: both sides must notice
    # that they were pinned, and spin again once they are not.
    mod = spawnproxy.run_script(SCRIPT + CHILD_CPUS)
    try:
        pid = spawnproxy.daemon_of(mod).pid
        sleeps_per_call(mod, pid, 100)
        lane = spawnproxy.daemon_of(mod)._session.local.lane.channel  # type: ignore[attr-defined]
        assert lane._cpus >= 2 and mod.cpus() >= 2
        with on_one_cpu([os.getpid(), pid]):
            sleeps_per_call(mod, pid, 2 * channel._CPU_RECHECK)
            assert lane._cpus == 1 and mod.cpus() == 1
            assert lane._spin() is None  # nothing to time: it neither spins nor arms
        sleeps_per_call(mod, pid, 2 * channel._CPU_RECHECK)
        assert lane._cpus >= 2 and mod.cpus() >= 2
        child, caller = min((sleeps_per_call(mod, pid) for _ in range(5)), key=sum)
        assert child < 0.5 and caller < 0.5
    finally:
        mod.terminate_daemon()


def test_waiting_sleeps_after_the_spin() -> None:
    # A spin is bounded: an idle child and a caller waiting on a long call use no CPU.
    mod = spawnproxy.run_script(SCRIPT)
    try:
        child = psutil.Process(spawnproxy.daemon_of(mod).pid)
        me = psutil.Process()
        for i in range(2000):
            mod.add(i, 1)  # both sides hot
        before = child.cpu_times()
        time.sleep(0.5)
        after = child.cpu_times()
        assert (after.user + after.system) - (before.user + before.system) < 0.05

        for i in range(2000):
            mod.add(i, 1)
        mine, started = me.cpu_times(), time.monotonic()
        mod.sleep(0.5)
        spent = (me.cpu_times().user - mine.user) + (me.cpu_times().system - mine.system)
        assert time.monotonic() - started >= 0.5
        assert spent < 0.05
    finally:
        mod.terminate_daemon()


def test_spinning_keeps_death_and_timeouts() -> None:
    # A spin ends on the child's exit handle and on the deadline as the sleep did.
    mod = spawnproxy.run_script(SCRIPT + "\nimport os\ndef die():\n    os._exit(3)\n")
    try:
        for i in range(2000):
            mod.add(i, 1)
        with spawnproxy.call_timeout(0.2), pytest.raises(spawnproxy.CallTimeoutError):
            mod.sleep(1)
        assert mod.add(1, 2) == 3
        started = time.monotonic()
        with pytest.raises(spawnproxy.DaemonDiedError):
            mod.die()
        assert time.monotonic() - started < 1.0
    finally:
        with contextlib.suppress(spawnproxy.SpawnProxyError):
            mod.terminate_daemon()


def test_a_wait_that_always_sleeps_still_watches_now_and_then() -> None:
    # Both ends of a run of calls can fall asleep for good: woken from sleep on each side, every
    # wait outlasts the spin, so no wait ever judges that spinning would pay. A wait among a few
    # watches anyway (here the input is there already), and a watch that sees it arms the spin.
    mine, theirs = socket.socketpair()
    lane = channel.Channel(mine)
    try:
        theirs.send(b"x")
        lane._cpus, lane._cpu_countdown, lane._hot = 2, 10**6, False
        started = [lane._spin() for _ in range(64)]
        assert None in started, "no cold wait watched for its input"
        assert lane._hot
        assert all(isinstance(s, float) for s in started[: started.index(None)])
    finally:
        lane.close()
        theirs.close()
