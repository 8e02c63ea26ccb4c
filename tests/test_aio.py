"""aio(proxy): awaitable calls, attribute reads and async iteration that never block the loop."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time

import pytest

import spawnproxy
from spawnproxy import aio

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import os, sys, threading, time

value = 41
data = [1, 2, 3]

class Box:
    def __init__(self):
        self.content = "inside"
    def get(self):
        return self.content

box = Box()

def slow(seconds, result=None):
    time.sleep(seconds)
    return result

def add(a, b):
    return a + b

def fail():
    raise KeyError("no such key")

def make_lock(seconds=0):
    time.sleep(seconds)
    return threading.Lock()

def count(n):
    try:
        yield from range(n)
    finally:
        print("count closed")

def apply(f, x):
    return f(x)

def die():
    os._exit(5)

class Unloadable:
    # Pickles fine in the child; loading it in the parent raises ValueError.
    def __reduce__(self):
        return (int, ("not a number",))

Unloadable.__module__ = "json"  # so that the child believes the parent can load it

def unloadables():
    yield Unloadable()

class Exits:
    # Loading it in the parent calls sys.exit.
    def __reduce__(self):
        return (sys.exit, ("loaded",))

Exits.__module__ = "json"
"""


@pytest.fixture
def mod():
    proxy = spawnproxy.run_script(SCRIPT)
    yield proxy
    proxy.terminate_daemon()


def child_objects(proxy) -> int:
    return spawnproxy.daemon_of(proxy)._session.request("stats", (), "stats")[3]["objects"]


def test_ticking_goes_on_during_a_slow_call(mod) -> None:
    """A task ticking every 10 ms keeps ticking while a 0.5 s remote call is awaited."""

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await aio(mod).slow(0.5, "done")
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == "done"
    assert ticks >= 15  # ~50 when nothing else runs; a blocked loop would give 0 or 1


def test_thousand_concurrent_awaits(mod) -> None:
    """1,000 awaits at once on one child each get their own answer."""

    async def main() -> list[int]:
        return await asyncio.gather(*(aio(mod).add(i, 1000) for i in range(1000)))

    assert asyncio.run(main()) == [i + 1000 for i in range(1000)]


def test_attributes_values_and_proxies(mod) -> None:
    async def main() -> None:
        assert await aio(mod).value == 41
        data = await aio(mod).data
        assert isinstance(data, spawnproxy.ObjectProxy) and data == [1, 2, 3]
        assert await aio(mod).box.get() == "inside"
        assert await aio(mod).box.content == "inside"
        box = await aio(mod).box
        assert await aio(box).get() == "inside"
        lock = await aio(mod).make_lock()
        assert isinstance(lock, spawnproxy.ObjectProxy)
        assert await aio(lock).locked() is False
        assert await aio(mod.add)(2, 3) == 5

    asyncio.run(main())


def test_remote_exception_is_raised_with_its_type(mod) -> None:
    async def main() -> None:
        with pytest.raises(KeyError, match="no such key"):
            await aio(mod).fail()
        assert await aio(mod).add(1, 1) == 2

    asyncio.run(main())


def test_a_result_that_cannot_be_rebuilt_raises_serialization_error(mod) -> None:
    """As in a blocking call or loop: SerializationError naming the call, and the child stays usable."""
    with pytest.raises(spawnproxy.SerializationError, match="cannot be rebuilt"):
        list(mod.unloadables())

    async def main() -> None:
        with pytest.raises(spawnproxy.SerializationError, match="cannot be rebuilt"):
            await aio(mod).Unloadable()
        with pytest.raises(spawnproxy.SerializationError, match="cannot be rebuilt"):
            [x async for x in aio(mod).unloadables()]
        assert await aio(mod).add(1, 1) == 2

    asyncio.run(main())


def test_a_result_that_raises_system_exit_when_loaded_is_an_error_not_an_exit(mod) -> None:
    """Loading a reply runs code the child chose (sys.exit here): that is the call's error, whether
    the caller reads the reply or the reader thread does (which must not die of it)."""
    with pytest.raises(spawnproxy.SerializationError, match="SystemExit: loaded"):
        mod.Exits()

    async def main() -> None:
        with pytest.raises(spawnproxy.SerializationError, match="SystemExit: loaded"):
            await asyncio.wait_for(aio(mod).Exits(), 10)
        assert await aio(mod).add(1, 1) == 2

    asyncio.run(main())


def test_cancelling_abandons_the_call_and_the_child_stays_usable(mod) -> None:
    """asyncio.timeout and wait_for cancel the await: the call is abandoned like a timeout, its
    late answer (a reference) is dropped and released, and the child answers the next call."""
    baseline = child_objects(mod)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aio(mod).make_lock(0.3), 0.05)
        if sys.version_info >= (3, 11):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await aio(mod).make_lock(0.3)
        task = asyncio.ensure_future(aio(mod).slow(0.3, "late"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await aio(mod).add(2, 2) == 4  # answered after the abandoned calls, not mixed up

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while child_objects(mod) != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child_objects(mod) == baseline  # the late locks were released


def test_a_reply_for_a_closed_loop_is_dropped_and_released(mod) -> None:
    """The loop was closed while a call was awaited: its late answer (a reference) is released."""
    baseline = child_objects(mod)
    loop = asyncio.new_event_loop()

    async def awaited() -> object:
        return await aio(mod).make_lock(0.2)

    task = loop.create_task(awaited())  # held: its coroutine still waits when the answer comes
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()
    deadline = time.monotonic() + 5
    while child_objects(mod) != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child_objects(mod) == baseline
    assert not task.done()
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # on purpose: its loop is gone


def test_call_timeout_applies_to_awaits(mod) -> None:
    """The call_timeout option (or block) raises CallTimeoutError from the await."""

    async def main() -> None:
        with spawnproxy.call_timeout(0.1), pytest.raises(spawnproxy.CallTimeoutError):
            await aio(mod).slow(0.5)
        assert await aio(mod).add(1, 2) == 3

    asyncio.run(main())


def test_async_iteration_streams_and_break_closes(mod) -> None:
    async def main() -> None:
        assert [x async for x in aio(mod).count(10_000)] == list(range(10_000))
        async for x in aio(mod).count(1_000_000):
            if x == 3:
                break
        assert [x async for x in aio(mod).data] == [1, 2, 3]
        proxy = mod.count(5)
        assert [x async for x in aio(proxy)] == [0, 1, 2, 3, 4]

    asyncio.run(main())
    daemon = spawnproxy.daemon_of(mod)
    deadline = time.monotonic() + 5
    while daemon.logs.count("count closed") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert daemon.logs.count("count closed") >= 3


def test_an_async_iterator_never_iterated_leaves_nothing_behind(mod) -> None:
    """No request is made, and no coroutine is left never awaited (a RuntimeWarning)."""
    unused = [aio(mod).count(3).__aiter__(), aio(mod).data.__aiter__()]
    del unused
    gc.collect()
    assert mod.add(1, 1) == 2


def test_blocking_and_async_on_the_same_child_at_once(mod) -> None:
    """Threads make blocking calls while the loop awaits: every answer is right."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def blocking(k: int) -> None:
        try:
            while not stop.is_set():
                assert mod.add(k, 1) == k + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=blocking, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()

    async def main() -> None:
        for _ in range(5):
            assert await asyncio.gather(*(aio(mod).add(i, -1) for i in range(100))) == [i - 1 for i in range(100)]

    try:
        asyncio.run(main())
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:2]
    assert mod.add(1, 1) == 2


def test_a_dying_child_fails_every_await(mod) -> None:
    """The child is killed while calls are awaited: each await raises DaemonDiedError within a second."""

    async def main() -> float:
        waiting = [asyncio.ensure_future(aio(mod).slow(5)) for _ in range(3)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        os.kill(spawnproxy.daemon_of(mod).pid, signal.SIGKILL)
        for task in waiting:
            with pytest.raises(spawnproxy.DaemonDiedError):
                await asyncio.wait_for(task, 5)
        with pytest.raises(spawnproxy.DaemonDiedError):
            await aio(mod).add(1, 2)
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0


def test_terminated_child(mod) -> None:
    mod.terminate_daemon()

    async def main() -> None:
        with pytest.raises(spawnproxy.DaemonTerminatedError):
            await aio(mod).add(1, 2)

    asyncio.run(main())


def test_callbacks_in_awaited_calls(mod) -> None:
    """A by_ref callback of an awaited call runs in the parent (on spawnproxy's worker thread)."""
    ran_on: list[int] = []

    def callback(x: int) -> int:
        ran_on.append(threading.get_ident())
        return x * 2

    async def main() -> int:
        return await aio(mod).apply(spawnproxy.by_ref(callback), 21)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == 42
    assert ran_on and ran_on[0] != threading.get_ident()


def test_the_reader_thread_ends_when_not_needed(mod) -> None:
    """No thread is left reading once nothing is awaited and the child holds no parent object."""

    async def main() -> None:
        await aio(mod).add(1, 2)

    asyncio.run(main())
    session = spawnproxy.daemon_of(mod)._session
    deadline = time.monotonic() + 5
    while session._reader is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    assert session._reader is None


def test_a_remote_name_never_shadows_the_proxys_own() -> None:
    """aio reads `terminate_daemon` of the remote module (caching its proxy); the proxy's own
    method of that name stays what `mod.terminate_daemon` gives."""
    mod = spawnproxy.run_script("terminate_daemon = 'remote'\nadd = lambda a, b: a + b\n")
    try:

        async def main() -> str:
            return await aio(mod).terminate_daemon  # type: ignore[no-any-return]

        assert asyncio.run(main()) == "remote"
        assert mod.add(1, 2) == 3  # a remote name read again comes from the cache
        assert mod.add is mod.add
        assert callable(mod.terminate_daemon) and mod.terminate_daemon.__self__ is mod
    finally:
        mod.terminate_daemon()
    assert not spawnproxy.daemon_of(mod).is_alive()
