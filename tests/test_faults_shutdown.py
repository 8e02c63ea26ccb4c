"""Faults: ending a hung child — bounded, escalating, never a hang (STYLE: Lifecycle)."""

from __future__ import annotations

import gc
import signal
import threading
import time

import pytest

import spawnproxy
from tests.targets.parents import TARGET, gone

pytestmark = pytest.mark.timeout(60)

# terminate(timeout=t) on a child that ignores everything returns within t + ESCALATION:
# closing the lifeline, 0.5 s; SIGTERM, 0.5 s; SIGKILL, immediate (spawnproxy._process.STEP).
ESCALATION = 1.0
SLACK = 0.5


def _hung(call: str, deaf: bool = False) -> tuple[spawnproxy.ObjectProxy, threading.Thread, list[object]]:
    """A child busy in `call` (made from a thread), optionally deaf to SIGTERM; and what that call ended with."""
    mod = spawnproxy.run_module(TARGET)
    if deaf:
        mod.ignore_sigterm()
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(getattr(mod, call)(1000))
        except BaseException as exc:
            outcome.append((time.monotonic(), exc))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)  # the call is running in the child
    return mod, thread, outcome


@pytest.mark.parametrize(
    ("call", "deaf", "exitcode"),
    [
        ("nap", False, 0),  # GIL free: the lifeline watchdog exits it
        ("nap", True, 0),  # deaf to SIGTERM, but the watchdog still runs
        ("hold_gil", False, -signal.SIGTERM),  # stuck in C: the watchdog cannot run, SIGTERM ends it
        ("hold_gil", True, -signal.SIGKILL),  # stuck in C and deaf to SIGTERM: SIGKILL
    ],
)
def test_terminate_escalates_within_its_bound(call: str, deaf: bool, exitcode: int) -> None:
    """terminate(timeout=t) ends a hung child within t + 1 s, escalating as far as needed."""
    mod, thread, outcome = _hung(call, deaf)
    daemon = spawnproxy.daemon_of(mod)
    started = time.monotonic()
    code = daemon.terminate(timeout=0.5)
    took = time.monotonic() - started
    assert took < 0.5 + ESCALATION + SLACK, f"terminate took {took:.2f} s"
    assert code == exitcode
    assert gone(daemon.pid, 0)
    thread.join(2)
    assert not thread.is_alive()
    when, error = outcome[0]  # type: ignore[misc]
    assert isinstance(error, spawnproxy.DaemonTerminatedError)
    assert when - started < SLACK  # the waiting call was woken at once, not after the escalation


@pytest.mark.slow
def test_terminate_daemon_default_grace_is_bounded() -> None:
    """terminate_daemon() with its default 5 s grace ends the worst child (in C, deaf) within 5 + 1 s."""
    mod, thread, _ = _hung("hold_gil", deaf=True)
    started = time.monotonic()
    mod.terminate_daemon()
    took = time.monotonic() - started
    assert 5.0 <= took < 5.0 + ESCALATION + SLACK, f"terminate_daemon took {took:.2f} s"
    thread.join(2)
    assert not thread.is_alive()


def test_concurrent_terminates_all_return() -> None:
    """terminate_daemon() from several threads at once on a hung child: all return, none hangs."""
    mod, thread, _ = _hung("hold_gil", deaf=True)
    times: list[float] = []

    def end() -> None:
        started = time.monotonic()
        mod.terminate_daemon(timeout=0.2)
        times.append(time.monotonic() - started)

    enders = [threading.Thread(target=end) for _ in range(4)]
    for t in enders:
        t.start()
    for t in enders:
        t.join(10)
    assert len(times) == 4
    assert max(times) < 0.2 + ESCALATION + SLACK
    thread.join(2)
    assert not thread.is_alive()


def test_gc_of_a_hung_childs_proxy_never_blocks() -> None:
    """Dropping the last proxy of a hung child returns at once; the reaper ends the child in the background."""
    mod = spawnproxy.run_module(TARGET)
    mod.ignore_sigterm()
    pid = spawnproxy.daemon_of(mod).pid
    with spawnproxy.call_timeout(0.2), pytest.raises(spawnproxy.CallTimeoutError):
        mod.hold_gil(1000)  # the child is now stuck in C, deaf to SIGTERM
    started = time.monotonic()
    del mod
    gc.collect()
    assert time.monotonic() - started < 0.2
    # The reaper's ladder: 1 s of grace, then the lifeline, SIGTERM and SIGKILL.
    assert gone(pid, 1.0 + ESCALATION + SLACK)


def test_terminate_is_idempotent_and_later_use_fails_at_once() -> None:
    """A second terminate returns at once with the same code; every use then raises DaemonTerminatedError."""
    mod, thread, _ = _hung("nap")
    daemon = spawnproxy.daemon_of(mod)
    first = daemon.terminate(timeout=0.2)
    started = time.monotonic()
    assert daemon.terminate() == first
    mod.terminate_daemon()
    with pytest.raises(spawnproxy.DaemonTerminatedError, match="terminated on purpose"):
        mod.ping(1)
    assert time.monotonic() - started < 0.1
    thread.join(2)
