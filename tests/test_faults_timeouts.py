"""Faults: timeouts — start_timeout, the call_timeout option and the per-call override (SPEC §3.9)."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time

import pytest

import spawnproxy
from tests.targets.parents import TARGET

pytestmark = pytest.mark.timeout(60)

# A timed-out call raises within its timeout plus this (thread wake-up, a loaded machine).
LATE = 0.5


def _timed_out(call, timeout: float) -> spawnproxy.CallTimeoutError:
    """Run `call`, expect CallTimeoutError, check it came on time; return it."""
    started = time.monotonic()
    with pytest.raises(spawnproxy.CallTimeoutError) as info:
        call()
    elapsed = time.monotonic() - started
    assert timeout - 0.05 <= elapsed < timeout + LATE, f"raised after {elapsed:.3f} s for a {timeout} s timeout"
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, spawnproxy.SpawnProxyError)
    return info.value


def test_start_timeout_is_a_start_error_on_time() -> None:
    """Past start_timeout while loading: DaemonStartError within start_timeout + 2 s, and no process left."""
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonStartError, match="1 s"):
        spawnproxy.run_script("import time\ntime.sleep(30)", start_timeout=1)
    assert time.monotonic() - started < 1 + 2


def test_start_timeout_of_an_executable_that_never_answers(tmp_path) -> None:
    """An executable that starts but never answers: DaemonStartError soon after start_timeout, nothing left."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonStartError, match=r"did not answer within 0\.5 s"):
        spawnproxy.run_script("x = 1", python_exe=str(fake), start_timeout=0.5)
    assert time.monotonic() - started < 0.5 + 2.5  # start_timeout + the shutdown ladder (1 s grace, 0.5 s, SIGTERM)


def test_call_timeout_option() -> None:
    """call_timeout= bounds every call; the error names the call; the proxy stays usable."""
    mod = spawnproxy.run_module(TARGET, call_timeout=0.3)
    try:
        error = _timed_out(lambda: mod.nap(1.0), 0.3)
        assert "nap()" in str(error) and "0.3 s" in str(error)
        assert spawnproxy.daemon_of(mod).is_alive()
        with spawnproxy.call_timeout(5):
            assert mod.ping("fresh") == "fresh"
        assert mod.ping("again") == "again"  # fast calls pass under the 0.3 s option
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_per_call_override() -> None:
    """`with spawnproxy.call_timeout(s):` overrides the option, both ways, and None lifts the limit."""
    mod = spawnproxy.run_module(TARGET, call_timeout=0.2)
    plain = spawnproxy.run_module(TARGET)
    try:
        with spawnproxy.call_timeout(3):
            assert mod.nap(0.4) == 0.4
        with spawnproxy.call_timeout(None):
            assert mod.nap(0.4) == 0.4
        with spawnproxy.call_timeout(0.2):
            _timed_out(lambda: plain.nap(0.6), 0.2)
            with spawnproxy.call_timeout(None):
                assert plain.ping(1) == 1  # waits until nap(1.0) is done, with no limit
            _timed_out(lambda: plain.nap(0.6), 0.2)  # the outer override is back
        with spawnproxy.call_timeout(5):
            assert plain.ping(2) == 2
        _timed_out(lambda: mod.nap(1.0), 0.2)  # the option applies again outside the block
    finally:
        mod.terminate_daemon(timeout=0.2)
        plain.terminate_daemon(timeout=0.2)


def test_override_is_per_thread() -> None:
    """A call_timeout block in one thread does not limit the calls of another thread."""
    mod = spawnproxy.run_module(TARGET)
    try:
        results: list[object] = []
        with spawnproxy.call_timeout(0.05):
            thread = threading.Thread(target=lambda: results.append(mod.nap(0.3)))
            thread.start()
            thread.join(5)
        assert results == [0.3]
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_late_answers_are_discarded() -> None:
    """After timed-out calls, each later call gets its own answer, never a stale one."""
    mod = spawnproxy.run_module(TARGET)
    try:
        for k in range(3):
            with spawnproxy.call_timeout(0.1):
                _timed_out(lambda k=k: mod.nap(0.3, f"stale {k}"), 0.1)
        with spawnproxy.call_timeout(5):
            for k in range(5):
                assert mod.ping(f"fresh {k}") == f"fresh {k}"
                assert mod.nap(0, k) == k
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_late_answer_does_not_lose_type_information() -> None:
    """A late answer that carried a type's first description does not spoil later proxies of that type."""
    mod = spawnproxy.run_module(TARGET)
    try:
        with spawnproxy.call_timeout(0.1):
            _timed_out(lambda: mod.function_after(0.3), 0.1)
        remote_ping = mod.function_after(0)
        assert callable(remote_ping)
        assert remote_ping("pong") == "pong"
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_next_call_waits_for_the_timed_out_one() -> None:
    """Calls run one at a time in the child: a call after a timed-out one waits until that one ends."""
    mod = spawnproxy.run_module(TARGET)
    try:
        started = time.monotonic()
        with spawnproxy.call_timeout(0.2):
            _timed_out(lambda: mod.nap(1.5), 0.2)
        assert mod.ping("after") == "after"
        waited = time.monotonic() - started
        assert 1.4 < waited < 1.5 + LATE, f"the next call came back after {waited:.3f} s"
        # ... and with a short timeout of its own, that next call times out too.
        with spawnproxy.call_timeout(0.2):
            _timed_out(lambda: mod.nap(1.0), 0.2)
            _timed_out(lambda: mod.ping("queued"), 0.2)
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_follower_thread_times_out_on_time() -> None:
    """A thread waiting behind another thread's long call times out on its own clock."""
    mod = spawnproxy.run_module(TARGET)
    try:
        results: list[object] = []
        leader = threading.Thread(target=lambda: results.append(mod.nap(1.0)))
        leader.start()
        time.sleep(0.1)
        with spawnproxy.call_timeout(0.2):
            _timed_out(lambda: mod.ping("behind"), 0.2)
        leader.join(5)
        assert results == [1.0]  # the leader got its own answer
        assert mod.ping("next") == "next"
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_timeout_bounds_sending_too() -> None:
    """A call whose argument cannot be written yet (the child is busy) still times out on time."""
    mod = spawnproxy.run_module(TARGET)
    try:
        with spawnproxy.call_timeout(0.1):
            _timed_out(lambda: mod.nap(2.0), 0.1)
        with spawnproxy.call_timeout(0.3):
            # More than the socket buffer holds, less than a frame sent out of band.
            _timed_out(lambda: mod.echo_len(b"x" * (512 * 1024)), 0.3)
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_large_late_answer_and_large_request_do_not_deadlock() -> None:
    """A large late answer still being written while the next call sends a large argument: no deadlock."""
    size = 512 * 1024  # more than the socket buffer, less than a frame sent out of band
    mod = spawnproxy.run_module(TARGET)
    daemon = spawnproxy.daemon_of(mod)
    try:
        with spawnproxy.call_timeout(0.1):
            _timed_out(lambda: mod.nap(0.3, b"y" * size), 0.1)
        time.sleep(0.5)  # the child is now blocked writing its late answer
        results: list[object] = []

        def call() -> None:
            try:
                results.append(mod.echo_len(b"x" * size))
            except spawnproxy.SpawnProxyError as exc:
                results.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(5)
        if thread.is_alive():
            os.kill(daemon.pid, signal.SIGKILL)  # break the deadlock: the parent's write fails
            thread.join(5)
        assert results == [size]
    finally:
        mod.terminate_daemon(timeout=0.2)


def test_timeouts_are_validated() -> None:
    """A timeout that is not a positive number is refused before anything starts."""
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="call_timeout"):
            spawnproxy.run_module(TARGET, call_timeout=bad)
        with pytest.raises(ValueError, match="call_timeout"), spawnproxy.call_timeout(bad):
            pass
    with pytest.raises(ValueError, match="start_timeout"):
        spawnproxy.run_module(TARGET, start_timeout=-2)
