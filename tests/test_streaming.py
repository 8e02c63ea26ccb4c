"""Streaming: iterating a remote iterator goes in batches read ahead, not one round trip per item."""

from __future__ import annotations

import gc
import itertools
import threading
import time

import pytest

import spawnproxy
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import threading, time

closed = []
made = []

def numbers(n):
    try:
        for i in range(n):
            made.append(i) if len(made) < 100000 else None
            yield i
    finally:
        closed.append(n)
        print("closed %d" % n)

def forever():
    try:
        for i in __import__("itertools").count():
            yield i
    finally:
        closed.append("forever")
        print("closed forever")

def fails_at(k):
    for i in range(k):
        yield i
    raise ValueError("broken at item %d" % k)

def locks(n):
    for i in range(n):
        yield i
        yield threading.Lock()

def slow(n, pause):
    for i in range(n):
        time.sleep(pause)
        yield i

def reset():
    del closed[:]
    del made[:]

data = list(range(1000))
mapping = {"a": 1, "b": 2}
number = 7
"""


@pytest.fixture
def mod():
    proxy = spawnproxy.run_script(SCRIPT)
    yield proxy
    proxy.terminate_daemon()


def requests_sent(proxy) -> int:
    """How many requests the parent has sent to the child so far (its request ids count up)."""
    session = spawnproxy.daemon_of(proxy)._session
    return next(session._ids) - 1


def child_objects(proxy) -> int:
    return spawnproxy.daemon_of(proxy)._session.request("stats", (), "stats")[3]["objects"]


def test_all_items_in_order(mod) -> None:
    assert list(mod.numbers(10_000)) == list(range(10_000))
    assert sum(mod.numbers(100_000)) == sum(range(100_000))
    assert list(mod.numbers(0)) == []


def test_items_come_in_batches(mod) -> None:
    """20,000 items take a handful of requests, not one per item."""
    before = requests_sent(mod)
    assert sum(1 for _ in mod.numbers(20_000)) == 20_000
    assert requests_sent(mod) - before < 20


def test_break_closes_the_remote_generator_at_once(mod) -> None:
    """Breaking out of the loop releases the generator: its finally runs in the child, without
    waiting for the next call."""
    daemon = spawnproxy.daemon_of(mod)
    for x in mod.numbers(1_000_000):
        if x == 5:
            break
    assert wait_until(lambda: "closed 1000000" in daemon.logs), daemon.logs
    assert list(mod.closed) == [1_000_000]
    assert len(mod.made) < 20_000  # it ran ahead by a batch or two, not to the end


def test_infinite_generator(mod) -> None:
    """An infinite generator streams; taking a slice and dropping it closes it."""
    assert list(itertools.islice(mod.forever(), 50_000))[-1] == 49_999
    assert wait_until(lambda: "closed forever" in spawnproxy.daemon_of(mod).logs)
    assert mod.number + 1 == 8  # the child goes on


def test_exception_arrives_at_the_right_item(mod) -> None:
    """The items before the exception are handed out, then the exception is raised, with its type."""
    got = []
    with pytest.raises(ValueError, match="broken at item 2500"):
        for x in mod.fails_at(2500):
            got.append(x)
    assert got == list(range(2500))
    with pytest.raises(ValueError, match="item 0"):
        next(iter(mod.fails_at(0)))


def test_exhausted_stream_stays_exhausted(mod) -> None:
    it = iter(mod.numbers(3))
    assert list(it) == [0, 1, 2]
    assert list(it) == []
    with pytest.raises(StopIteration):
        next(it)


def test_unpicklable_items_come_as_proxies(mod) -> None:
    """Items that cannot travel by value come as proxies, in their place among the others."""

    def check() -> None:
        items = list(mod.locks(3))
        assert items[0::2] == [0, 1, 2]
        assert all(isinstance(lock, spawnproxy.ObjectProxy) for lock in items[1::2])
        assert [lock.locked() for lock in items[1::2]] == [False] * 3

    baseline = child_objects(mod)
    check()
    # A proxy whose method was called sits in a reference cycle (its method cache): the GC frees it.
    assert wait_until(lambda: gc.collect() >= 0 and child_objects(mod) == baseline)


def test_next_and_for_share_the_same_items(mod) -> None:
    """next(g) and a loop over g take from the same read-ahead: nothing is skipped or repeated."""
    g = mod.numbers(100)
    assert next(g) == 0
    assert next(g) == 1
    assert iter(g) is iter(g)
    rest = []
    for x in g:
        rest.append(x)
        if x == 50:
            break
    assert next(g) == 51
    assert list(g) == list(range(52, 100))


def test_slow_generator_hands_out_items_as_they_come(mod) -> None:
    """A batch ends after a few milliseconds: a slow generator's first item is not held back."""
    started = time.monotonic()
    it = iter(mod.slow(100, 0.1))
    assert next(it) == 0
    assert time.monotonic() - started < 2.0
    del it


def test_explicit_close_runs_finally(mod) -> None:
    it = iter(mod.numbers(1000))
    assert next(it) == 0
    it.close()
    assert list(mod.closed) == [1000]
    assert list(it) == []


def test_remote_containers_iterate(mod) -> None:
    """A remote list or dict iterates in batches too; the iterator made in the child is released."""
    baseline = child_objects(mod)
    assert list(mod.data) == list(range(1000))
    assert sorted(mod.mapping) == ["a", "b"]
    assert [x for x in mod.data if x % 100 == 0] == list(range(0, 1000, 100))
    assert wait_until(lambda: child_objects(mod) == baseline)


def test_iterating_a_non_iterable_raises_type_error(mod) -> None:
    with pytest.raises(TypeError):
        iter(mod.number)
    with pytest.raises(TypeError):
        next(mod.number)


def test_timeout_while_waiting_for_a_batch(mod) -> None:
    """A batch that does not come in time raises CallTimeoutError; the stream can go on afterwards."""
    it = iter(mod.slow(4, 0.5))
    assert next(it) == 0
    with spawnproxy.call_timeout(0.1), pytest.raises(spawnproxy.CallTimeoutError):
        next(it)
    with spawnproxy.call_timeout(10):
        assert list(it) == [1, 2, 3]  # nothing lost: the batch that was late is still taken


def test_streams_from_several_threads(mod) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            assert sum(mod.numbers(n)) == sum(range(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(5000 + k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_streaming_with_each_child_version(child_python: str) -> None:
    mod = spawnproxy.run_script(SCRIPT, python_exe=child_python)
    try:
        assert sum(mod.numbers(20_000)) == sum(range(20_000))
        with pytest.raises(ValueError):
            list(mod.fails_at(10))
        for x in mod.forever():
            if x == 3:
                break
        assert wait_until(lambda: "closed forever" in spawnproxy.daemon_of(mod).logs)
    finally:
        mod.terminate_daemon()


def test_send_steps_one_item_without_reading_ahead(mod) -> None:
    """g.send(None) is a plain method call: the generator advances by exactly one item."""
    mod.reset()
    g = mod.numbers(1000)
    assert [g.send(None) for _ in range(3)] == [0, 1, 2]
    assert list(mod.made) == [0, 1, 2]
