"""Threads (SPEC §3.10): one proxy used from many threads, each call with its own answer."""

from __future__ import annotations

import threading

import pytest

import spawnproxy
from tests.targets.sample import Service

pytestmark = pytest.mark.timeout(120)


def test_many_threads_one_proxy() -> None:
    """8 threads calling at once on one proxy each get their own answers."""
    service = spawnproxy.run_object(Service())
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(300):
                assert service.add(k, i) == k + i
                assert service.echo((k, i)) == (k, i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert not any(t.is_alive() for t in threads)
    finally:
        service.terminate_daemon()


def test_threads_waiting_on_a_dying_child_all_wake() -> None:
    """When the child dies, every thread waiting on it gets DaemonDiedError."""
    mod = spawnproxy.run_script("import time, os\ndef wait(s):\n    time.sleep(s)\ndef die():\n    os._exit(3)")
    results: list[BaseException | None] = []
    lock = threading.Lock()

    def waiter() -> None:
        try:
            mod.wait(0.5)
            outcome = None
        except BaseException as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    with pytest.raises(spawnproxy.DaemonDiedError):
        mod.die()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 4
    # A call answered before the death may have succeeded; none may hang or fail otherwise.
    assert all(r is None or isinstance(r, spawnproxy.DaemonDiedError) for r in results)
