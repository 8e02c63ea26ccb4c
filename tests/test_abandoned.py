"""An abandoned call stays abandoned: a later call never runs nested inside it (issue 14, item 3)."""

from __future__ import annotations

import asyncio
import time

import pytest

import spawnproxy
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import time

log = []
depth = [0]

def crunch(tag, n, cb):
    depth[0] += 1
    try:
        log.append((tag, depth[0]))
        for i in range(n):
            time.sleep(0.002)
            if cb is not None:
                cb(i)
        return tag
    finally:
        depth[0] -= 1

def stream(tag, n, cb):
    # Each item takes n steps, each calling back.
    depth[0] += 1
    try:
        log.append((tag, depth[0]))
        for item in range(3):
            for i in range(n):
                time.sleep(0.002)
                cb(i)
            depth[0] -= 1
            try:
                yield item
            finally:
                depth[0] += 1
    finally:
        depth[0] -= 1
"""


@pytest.fixture
def w():
    proxy = spawnproxy.run_script(SCRIPT)
    yield proxy
    proxy.terminate_daemon(timeout=0.5)


def test_a_call_after_a_timeout_does_not_run_inside_the_abandoned_one_serving_a_callback(w) -> None:
    """A call timed out while its callback ran: the next call waits for it, and its callbacks still run."""
    seen: list[int] = []
    with spawnproxy.call_timeout(0.2), pytest.raises(spawnproxy.CallTimeoutError):
        w.crunch("A", 200, spawnproxy.by_ref(seen.append))
    assert w.crunch("B", 1, None) == "B"
    assert list(w.log) == [("A", 1), ("B", 1)]
    assert seen == list(range(200))  # every callback of the abandoned call ran, before B did


def test_a_call_from_another_thread_waits_for_a_call_serving_a_callback(w) -> None:
    """Another thread's call waits while the child's call waits for its callback: never nested in it."""
    import threading

    results: list[object] = []

    def callback(i: int) -> None:
        if i == 0:
            other = threading.Thread(target=lambda: results.append(w.crunch("B", 1, None)))
            other.start()
            time.sleep(0.3)  # B's request reaches the child while A waits for this callback

    assert w.crunch("A", 3, spawnproxy.by_ref(callback)) == "A"
    assert wait_until(lambda: results == ["B"])
    assert list(w.log) == [("A", 1), ("B", 1)]


def test_a_call_after_an_abandoned_stream_does_not_run_inside_it(w) -> None:
    """A stream whose batch timed out while calling back: the next call waits for that batch."""
    seen: list[int] = []
    stream = w.stream("S", 200, spawnproxy.by_ref(seen.append))
    with spawnproxy.call_timeout(0.2), pytest.raises(spawnproxy.CallTimeoutError):
        for _ in stream:
            pass
    del stream
    assert w.crunch("B", 1, None) == "B"
    assert list(w.log) == [("S", 1), ("B", 1)]
    assert len(seen) >= 200  # the batch that timed out ran to its end, its callbacks served


def test_a_call_after_a_cancelled_aio_call_does_not_run_inside_it(w) -> None:
    """An aio call cancelled while it calls back: the next call (aio or not) waits for it."""
    seen: list[int] = []

    async def main() -> object:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(spawnproxy.aio(w).crunch("A", 200, spawnproxy.by_ref(seen.append)), 0.2)
        return await spawnproxy.aio(w).crunch("B", 1, None)

    assert asyncio.run(main()) == "B"
    assert w.crunch("C", 1, None) == "C"
    assert list(w.log) == [("A", 1), ("B", 1), ("C", 1)]
    assert seen == list(range(200))


def test_a_callback_whose_call_timed_out_calls_again_after_it_not_inside_it(w) -> None:
    """Inside a callback, a nested call times out: the callback's next call waits for it, one level up."""

    def callback(i: int) -> None:
        with spawnproxy.call_timeout(0.2), pytest.raises(spawnproxy.CallTimeoutError):
            w.crunch("A", 200, spawnproxy.by_ref(lambda i: None))
        assert w.crunch("B", 1, None) == "B"

    assert w.crunch("X", 1, spawnproxy.by_ref(callback)) == "X"
    assert list(w.log) == [("X", 1), ("A", 2), ("B", 2)]
