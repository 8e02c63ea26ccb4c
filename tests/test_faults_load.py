"""Faults under load: many threads, many children, many references — right answers and nothing leaked."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import tempfile
import threading
import time

import psutil
import pytest

import spawnproxy
from spawnproxy._zygote import zygote_pids
from tests.targets.parents import TARGET, gone

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

# Once every child has ended, the background threads (reaper, output pumps) finish within this.
SETTLE = 5.0


def _objects(proxy: spawnproxy.ObjectProxy) -> int:
    """How many objects the child's table holds for the parent."""
    reply = spawnproxy.daemon_of(proxy)._session.request("stats", (), "stats")
    return int(reply[3]["objects"])


def test_eight_threads_five_thousand_calls_each() -> None:
    """8 threads x 5,000 calls on one proxy: every call gets its own, right answer."""
    mod = spawnproxy.run_module(TARGET)
    errors: list[BaseException] = []
    done = [0] * 8

    def work(k: int) -> None:
        try:
            for i in range(5000):
                if mod.ping((k, i)) != (k, i):
                    raise AssertionError(f"thread {k} call {i} got another answer")
                done[k] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "a thread is stuck"
        assert not errors, errors[:3]
        assert done == [5000] * 8
    finally:
        mod.terminate_daemon()


def _start_fifty(round_: int, stack: contextlib.ExitStack) -> list[tuple[str, int, object]]:
    """Fifty children alive at once, each to be ended one of four ways."""
    children: list[tuple[str, int, object]] = []
    for i in range(50):
        how = ENDINGS[(round_ + i) % len(ENDINGS)]
        if how == "context manager":
            daemon = stack.enter_context(spawnproxy.DaemonProxy(spawnproxy.ModuleDefinition(TARGET)))
            mod = daemon.proxy
        else:
            mod = spawnproxy.run_module(TARGET)
        assert mod.ping(i) == i
        children.append((how, spawnproxy.daemon_of(mod).pid, mod))
    return children


def _end_all(children: list[tuple[str, int, object]], stack: contextlib.ExitStack) -> list[int]:
    pids = []
    for how, pid, mod in children:
        pids.append(pid)
        if how == "terminate":
            mod.terminate_daemon()  # type: ignore[attr-defined]
        elif how == "SIGKILL":
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(spawnproxy.DaemonDiedError):
                mod.nap(5)  # type: ignore[attr-defined]
    stack.close()  # the context managers
    del children[:], mod
    gc.collect()  # GC, and the proxies of the killed ones
    return pids


ENDINGS = ["GC", "terminate", "context manager", "SIGKILL"]


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _children() -> list[psutil.Process]:
    # The zygotes that warm children of earlier tests left live until exit, by design.
    return [child for child in psutil.Process().children() if child.pid not in zygote_pids()]


def test_children_started_and_ended_many_times_leak_nothing(tmp_path, monkeypatch) -> None:
    """50 children alive at once, ended by GC, terminate, context manager or SIGKILL, 20 times over: nothing leaks."""
    # A temporary directory of this test's own, for the parent and (by inheritance) its children:
    # other processes on the machine may write to the shared one meanwhile.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with contextlib.ExitStack() as stack:
        _end_all(_start_fifty(-1, stack)[:4], stack)  # warm up: imports, the reaper's first start
    time.sleep(0.2)
    fds, threads = _fds(), _threads()
    pids = []
    for round_ in range(20):
        stack = contextlib.ExitStack()
        pids += _end_all(_start_fifty(round_, stack), stack)
    assert len(pids) == 1000
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline and (_fds() - fds or _threads() - threads or _children()):
        time.sleep(0.05)
    assert not _children(), "child processes are left (or zombies not reaped)"
    assert all(gone(pid, 0) for pid in pids)
    assert not _fds() - fds, f"file descriptors left open: {sorted(_fds() - fds)}"
    assert not _threads() - threads, f"threads left running: {[t.name for t in _threads() - threads]}"
    assert os.listdir(tmp_path) == []


def test_hundred_thousand_references_return_the_table_to_its_baseline() -> None:
    """100,000 remote references created and dropped: the child's object table goes back to its baseline."""
    mod = spawnproxy.run_module(TARGET)
    try:
        baseline = _objects(mod)
        for i in range(100_000):
            handle = mod.make_handle(i)
            del handle
            if i % 20_000 == 0:
                assert _objects(mod) <= baseline + 2  # released as they go, not piled up
        assert _objects(mod) == baseline
        kept = [mod.make_handle(i) for i in range(1000)]
        assert _objects(mod) == baseline + 1000
        same = [mod.same_handle() for _ in range(1000)]  # one object, a thousand references
        assert _objects(mod) == baseline + 1001
        assert kept[500].n == 500 and same[999].n == -1
        del kept[:500]
        assert _objects(mod) == baseline + 501
        del kept, same
        gc.collect()
        assert _objects(mod) == baseline
    finally:
        mod.terminate_daemon()


def test_late_reference_answers_are_released() -> None:
    """Objects returned by reference to calls that timed out are released: the table goes back to its baseline."""
    mod = spawnproxy.run_module(TARGET)
    try:
        baseline = _objects(mod)
        for i in range(3):
            with spawnproxy.call_timeout(0.1), pytest.raises(spawnproxy.CallTimeoutError):
                mod.make_handle_after(0.2, i)
        assert mod.ping("after") == "after"  # waits for the last one; the late answers are read and dropped
        assert _objects(mod) == baseline
    finally:
        mod.terminate_daemon()
