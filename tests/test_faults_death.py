"""Faults: a child that dies during a call (SPEC §3.9) — never a hang, and an error that says why."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import spawnproxy
from tests.conftest import DEATH_NOTICE
from tests.targets.parents import TARGET, gone

pytestmark = pytest.mark.timeout(60)

# How each way of dying shows in DaemonDiedError: (what the child does, exit code, text in the message).
DEATHS = {
    "os._exit": (lambda mod: mod.die(7, "last words: os._exit"), 7, "exit code 7"),
    "segfault": (lambda mod: mod.segfault("last words: segfault"), -signal.SIGSEGV, "signal SIGSEGV"),
    "sys.exit": (lambda mod: mod.exit_from_method("last words: sys.exit"), 1, "exit code 1"),
}


def _kill_later(pid: int, delay: float, sig: int = signal.SIGKILL) -> list[float]:
    """Send `sig` to `pid` from another thread after `delay`; the list receives the moment it was sent."""
    sent: list[float] = []

    def kill() -> None:
        time.sleep(delay)
        sent.append(time.monotonic())
        os.kill(pid, sig)

    threading.Thread(target=kill, daemon=True).start()
    return sent


def test_sigkill_from_outside_mid_call(warm: bool) -> None:
    """A child SIGKILLed during a call: the call raises DaemonDiedError within 1 s, naming signal, call and stderr."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    daemon = spawnproxy.daemon_of(mod)
    sent = _kill_later(daemon.pid, 0.3)
    with pytest.raises(spawnproxy.DaemonDiedError) as info:
        mod.nap(30)
    noticed = time.monotonic() - sent[0]
    assert noticed < DEATH_NOTICE, f"the death was noticed after {noticed:.3f} s"
    message = str(info.value)
    assert f"child {daemon.pid}" in message
    assert "signal SIGKILL" in message
    assert "nap()" in message  # the call in flight
    assert "napping for 30 s" in message  # the last line the child wrote on stderr
    assert info.value.exitcode == -signal.SIGKILL
    assert daemon.exitcode == -signal.SIGKILL and not daemon.is_alive()


@pytest.mark.parametrize("how", sorted(DEATHS))
def test_child_ending_itself_mid_call(how: str, warm: bool) -> None:
    """os._exit(n), a segfault and sys.exit() in a method: DaemonDiedError within 1 s, with code and stderr."""
    die, code, text = DEATHS[how]
    mod = spawnproxy.run_module(TARGET, warm=warm)
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonDiedError, match=text) as info:
        die(mod)
    assert time.monotonic() - started < DEATH_NOTICE
    assert info.value.exitcode == code
    assert f"last words: {how}" in str(info.value)
    assert "()" in str(info.value)  # names the call: "... during module tests.targets.faulty.die()"
    if how == "segfault":
        # faulthandler in the child: the crash's Python stack is among the quoted stderr lines.
        assert "Segmentation fault" in str(info.value) and "in segfault" in str(info.value)


def test_every_other_proxy_fails_at_once(warm: bool) -> None:
    """After the death, root, nested and result proxies all raise the same DaemonDiedError at once."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    handle = mod.make_handle(3)  # a result that came back as a proxy
    nested = mod.ping  # a first-level attribute
    daemon = spawnproxy.daemon_of(mod)
    _kill_later(daemon.pid, 0.2)
    with pytest.raises(spawnproxy.DaemonDiedError):
        mod.nap(30)
    for use in (lambda: mod.ping(1), lambda: nested(2), lambda: handle.n, lambda: len(handle), lambda: str(mod)):
        started = time.monotonic()
        with pytest.raises(spawnproxy.DaemonDiedError, match="SIGKILL") as info:
            use()
        assert time.monotonic() - started < 0.1
        assert info.value.exitcode == -signal.SIGKILL
    # Never an AttributeError: hasattr must not turn a dead child into False.
    with pytest.raises(spawnproxy.DaemonDiedError):
        hasattr(mod, "anything")


def test_all_waiting_threads_wake_on_death(warm: bool) -> None:
    """Threads queued behind a call on a child that is killed all wake with DaemonDiedError within 1 s."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    handle = mod.make_handle(1)
    woke: dict[int, tuple[float, BaseException | None]] = {}

    def caller(k: int) -> None:
        try:
            if k % 2:
                handle.n  # noqa: B018  a nested proxy of the same child
            mod.nap(30)
            outcome = None
        except BaseException as exc:
            outcome = exc
        woke[k] = (time.monotonic(), outcome)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # one call runs in the child, the others wait behind it
    sent = _kill_later(spawnproxy.daemon_of(mod).pid, 0.0)
    for t in threads:
        t.join(DEATH_NOTICE + 2)
    assert not any(t.is_alive() for t in threads), "a thread is still waiting on the dead child"
    assert len(woke) == 6
    for when, outcome in woke.values():
        assert isinstance(outcome, spawnproxy.DaemonDiedError), outcome
        assert when - sent[0] < DEATH_NOTICE


def test_death_between_calls_is_reported_on_next_call(warm: bool) -> None:
    """A child killed while idle: the next call raises DaemonDiedError naming the signal, within 1 s."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    daemon = spawnproxy.daemon_of(mod)
    assert mod.ping(1) == 1
    os.kill(daemon.pid, signal.SIGKILL)
    assert gone(daemon.pid, 2)
    started = time.monotonic()
    with pytest.raises(spawnproxy.DaemonDiedError, match=r"signal SIGKILL.*ping\(\)|ping\(\).*signal SIGKILL"):
        mod.ping(2)
    assert time.monotonic() - started < DEATH_NOTICE


def test_sys_exit_zero_in_a_method_is_still_a_death(warm: bool) -> None:
    """sys.exit(0) inside a method ends the child: the call raises DaemonDiedError with exit code 0."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    with pytest.raises(spawnproxy.DaemonDiedError, match="exit code 0") as info:
        mod.exit_from_method(0)
    assert info.value.exitcode == 0


def test_terminate_after_death_is_quiet(warm: bool) -> None:
    """terminate_daemon() on a child that already died returns at once and does not raise."""
    mod = spawnproxy.run_module(TARGET, warm=warm)
    with pytest.raises(spawnproxy.DaemonDiedError):
        mod.die(3, "bye")
    started = time.monotonic()
    mod.terminate_daemon()
    mod.terminate_daemon()
    assert time.monotonic() - started < 0.5
    with pytest.raises(spawnproxy.DaemonDiedError):
        mod.ping(1)
