"""Lanes: each calling thread reads its answers on a socket of its own (see spawnproxy._lanes)."""

from __future__ import annotations

import gc
import os
import select
import signal
import threading
import time
from typing import Any

import pytest

import spawnproxy
from spawnproxy._child import protocol
from tests.conftest import DEATH_NOTICE

pytestmark = pytest.mark.timeout(120)

LANES_IN_CHILD = """
import gc, os, signal, time

def lanes():
    return [sorted(o._lanes) for o in gc.get_objects() if type(o).__name__ == "Outbox"][0]

def fds():
    return len(os.listdir("/proc/self/fd"))

def add(a, b):
    return a + b

def fork_then_die(path):
    pid = os.fork()
    if pid == 0:  # the grandchild: outlives the child, with whatever descriptors it kept
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(30)
        os._exit(0)
    while not os.path.exists(path):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def session_of(proxy: object) -> object:
    return spawnproxy.daemon_of(proxy)._session  # type: ignore[attr-defined]


def call_in_threads(mod: object, count: int) -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            assert mod.add(k, 1) == k + 1  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]


def test_each_thread_has_a_lane_and_a_finished_thread_gives_it_back() -> None:
    """Threads come and go: the child holds the lanes of the threads alive, not one per thread ever."""
    mod = spawnproxy.run_script(LANES_IN_CHILD)
    try:
        assert mod.lanes() == [1]  # the main thread's
        fds = mod.fds()
        for _ in range(20):
            call_in_threads(mod, 10)  # 200 threads in all
        gc.collect()
        mod.add(0, 0)  # the closes go to the child before this request
        assert mod.lanes() == [1]
        assert mod.fds() == fds
    finally:
        mod.terminate_daemon()


def test_a_lane_number_is_reused_only_after_the_child_closed_it() -> None:
    """A reused number never mixes two threads up: each of 50 threads gets its own answer."""
    mod = spawnproxy.run_script(LANES_IN_CHILD)
    try:
        for _ in range(5):
            call_in_threads(mod, 10)
            gc.collect()
        assert max(mod.lanes()) <= 11
    finally:
        mod.terminate_daemon()


def test_without_a_free_lane_a_thread_reads_the_channel() -> None:
    """When every lane number is taken, calls still get their answers (on the channel)."""
    mod = spawnproxy.run_script(LANES_IN_CHILD)
    try:
        lanes = session_of(mod)._lanes  # type: ignore[attr-defined]
        lanes._count = protocol.LANE_MASK
        call_in_threads(mod, 4)
        assert mod.lanes() == [1]
    finally:
        mod.terminate_daemon()


def test_a_grandchild_keeps_no_lane_open(tmp_path) -> None:
    """The child forks and dies: its thread's call raises DaemonDiedError at once, although the
    grandchild lives on (it closed the lanes it inherited)."""
    path = str(tmp_path / "grandchild")
    mod = spawnproxy.run_script(LANES_IN_CHILD)
    try:
        start = time.monotonic()
        with pytest.raises(spawnproxy.DaemonDiedError):
            mod.fork_then_die(path)
        assert time.monotonic() - start < DEATH_NOTICE
    finally:
        mod.terminate_daemon()
        if os.path.exists(path):
            with open(path) as f:
                os.kill(int(f.read()), signal.SIGKILL)


def test_a_lane_given_up_is_drained_then_closed() -> None:
    """A call that timed out leaves its lane to the reader, which takes the late answer and closes it."""
    mod = spawnproxy.run_script("import time\ndef slow(s):\n    time.sleep(s)\n    return threading\nimport threading")
    try:
        with spawnproxy.call_timeout(0.1), pytest.raises(spawnproxy.CallTimeoutError):
            mod.slow(0.5)
        assert mod.slow(0) is not None  # a new lane; the old one still waits for its answer
        session = session_of(mod)
        deadline = time.monotonic() + 5
        while session._retired and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert not session._retired  # type: ignore[attr-defined]
    finally:
        mod.terminate_daemon()


def test_a_retired_lane_drained_by_a_caller_meanwhile_is_not_taken_for_the_child_ending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader's wait over retired lanes ignores a lane a caller drained and closed after it looked: the child lives."""
    mod = spawnproxy.run_script(LANES_IN_CHILD)
    session: Any = session_of(mod)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x")  # readable, as a retired lane with an answer on it
        session._retired[read_end] = (None, 0)
        real_poll = select.poll

        class CallerDrainsMeanwhile:
            """A poll during which a caller drains the retired lane and forgets it (as _lane_exchange does)."""

            def __init__(self) -> None:
                self._poller = real_poll()

            def register(self, fd: int, events: int) -> None:
                self._poller.register(fd, events)

            def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
                found = self._poller.poll(timeout)
                session._retired.pop(read_end, None)
                return found

        monkeypatch.setattr(select, "poll", CallerDrainsMeanwhile)
        assert session._wait_retired() is None  # the channel itself has nothing
        monkeypatch.undo()
        assert mod.add(1, 2) == 3
    finally:
        session._retired.pop(read_end, None)
        os.close(read_end)
        os.close(write_end)
        mod.terminate_daemon()
