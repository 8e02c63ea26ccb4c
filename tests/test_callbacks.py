"""Callbacks (SPEC §5 by_ref): local objects passed by reference, called from the child."""

from __future__ import annotations

import gc
import threading
import traceback

import pytest

import spawnproxy
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import threading, time

def apply(f, *args, **kwargs):
    return f(*args, **kwargs)

def each(f, n):
    for i in range(n):
        f(i)

def bounce(cb, n):
    # One level of the ping-pong: the parent's cb calls bounce again.
    return 0 if n <= 0 else 1 + cb(n - 1)

def in_thread(f, *args):
    out = []
    t = threading.Thread(target=lambda: out.append(f(*args)))
    t.start()
    t.join()
    return out[0]

kept = []

def keep(f):
    kept.append(f)

def call_kept(*args):
    return [f(*args) for f in kept]

def forget(f=None):
    if f is None:
        del kept[:]
    else:
        kept.remove(f)

def catch(f):
    try:
        f()
    except Exception as exc:
        return type(exc).__name__, str(exc)

def fail_through(f):
    return f()

def child_fails():
    raise LookupError("raised in the child")

def ticker(f, n, period):
    def run():
        for i in range(n):
            f(i)
            time.sleep(period)
    threading.Thread(target=run, daemon=True).start()

def make_lock():
    return threading.Lock()

def give_lock(f):
    return f(threading.Lock())

def same(a, b):
    return a == b, hash(a) == hash(b), a is b

def use_object(obj):
    obj.add(3)
    obj.note = "set by the child"
    return obj.total, len(obj), str(obj)

def bool_of(f):
    return bool(f)

class Unloadable:
    # Pickles fine in the child; loading it in the parent raises ValueError.
    def __reduce__(self):
        return (int, ("not a number",))

Unloadable.__module__ = "json"  # so that the child believes the parent can load it

def send_unloadable(f):
    try:
        f(Unloadable())
    except ValueError as exc:
        return "the child got: %s" % exc
"""


@pytest.fixture
def mod():
    proxy = spawnproxy.run_script(SCRIPT)
    yield proxy
    proxy.terminate_daemon()


def exports(proxy) -> int:
    """How many of the parent's objects the child holds references to."""
    return len(spawnproxy.daemon_of(proxy)._session.exports)


def test_callback_runs_in_the_parent_with_its_state(mod) -> None:
    """A bound method passed by reference changes the parent's own list."""
    seen: list[int] = []
    mod.each(spawnproxy.by_ref(seen.append), 5)
    assert seen == [0, 1, 2, 3, 4]
    assert mod.apply(spawnproxy.by_ref(lambda x, y=1: x * 10 + y), 4, y=2) == 42


def test_without_by_ref_a_function_goes_by_value(mod) -> None:
    """A lambda sent without by_ref runs in the child: the parent's list stays empty."""
    seen: list[int] = []
    assert mod.apply(lambda: seen.append(1) or len(seen)) == 1
    assert seen == []


def test_reentrancy_twenty_levels(mod) -> None:
    """parent -> child -> parent -> ... 20 levels deep, and back."""
    depths: list[int] = []

    def down(n: int) -> int:
        depths.append(n)
        return mod.bounce(spawnproxy.by_ref(down), n)

    assert down(20) == 20
    assert depths == list(range(20, -1, -1))
    assert mod.apply(spawnproxy.by_ref(abs), -3) == 3  # still usable


def test_parent_exception_reaches_the_child_with_its_type(mod) -> None:
    """An exception raised in the callback is raised in the child with its type and message."""

    def boom() -> None:
        raise KeyError("missing here")

    assert mod.catch(spawnproxy.by_ref(boom)) == ("KeyError", "'missing here'")


def test_exception_round_trip_keeps_every_hop(mod) -> None:
    """Parent callback raises, the child does not catch: the parent gets its type back, with the
    callback's frames (as the cause) and the child's frames in one traceback."""

    def failing_callback() -> None:
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback") as info:
        mod.fail_through(spawnproxy.by_ref(failing_callback))
    text = "".join(traceback.format_exception(info.value))
    assert "failing_callback" in text  # the parent's frame, relayed through the child
    assert "fail_through" in text  # the child's frame
    assert "Traceback in the parent" in text


def test_child_exception_inside_a_callback(mod) -> None:
    """A callback that calls the child, which raises: the child's type reaches the callback, and out."""

    def callback() -> None:
        mod.child_fails()

    with pytest.raises(LookupError, match="raised in the child") as info:
        mod.fail_through(spawnproxy.by_ref(callback))
    text = "".join(traceback.format_exception(info.value))
    assert "child_fails" in text and "callback" in text and "fail_through" in text
    assert mod.apply(spawnproxy.by_ref(len), "abc") == 3


def test_callback_from_a_child_thread_during_the_call(mod) -> None:
    """A callback invoked from a thread the child started, while the call waits for it."""
    caller = []
    result = mod.in_thread(spawnproxy.by_ref(lambda x: caller.append(threading.get_ident()) or x * 2), 21)
    assert result == 42
    assert caller  # it ran here


def test_callback_from_a_child_thread_while_the_parent_is_idle(mod) -> None:
    """A child thread keeps calling back after the call that set it up returned; the parent makes no call."""
    seen: list[int] = []
    mod.ticker(spawnproxy.by_ref(seen.append), 5, 0.02)
    assert wait_until(lambda: len(seen) == 5), seen
    assert seen == [0, 1, 2, 3, 4]


def test_thread_callback_calls_back_into_the_busy_child(mod) -> None:
    """The child's main thread joins a thread whose callback calls the child again: the nested call
    runs on that thread (it waits for the answer), so nothing deadlocks."""

    def callback(x: int) -> int:
        return mod.apply(spawnproxy.by_ref(lambda y: y + 1), x) * 2

    with spawnproxy.call_timeout(20):
        assert mod.in_thread(spawnproxy.by_ref(callback), 20) == 42


def test_references_are_released_when_the_child_drops_them(mod) -> None:
    """The parent's table of exported objects returns to its baseline."""
    assert exports(mod) == 0
    mod.each(spawnproxy.by_ref(lambda i: None), 3)
    assert exports(mod) == 0  # dropped by the child before it answered
    seen: list[int] = []
    callback = spawnproxy.by_ref(seen.append)
    mod.keep(callback)
    mod.keep(callback)
    assert exports(mod) == 1
    assert mod.call_kept(7) == [None, None]
    assert seen == [7, 7]
    mod.forget()
    assert exports(mod) == 0


def test_identity_of_a_parent_object_in_the_child(mod) -> None:
    """The same object sent twice is equal, with equal hashes, in the child: list.remove works."""

    def f() -> None:
        pass

    assert mod.same(spawnproxy.by_ref(f), spawnproxy.by_ref(f))[:2] == (True, True)
    mod.keep(spawnproxy.by_ref(f))
    mod.forget(spawnproxy.by_ref(f))
    assert mod.kept == []
    assert exports(mod) == 0


def test_objects_by_reference_have_attributes_and_operators(mod) -> None:
    """Method calls, attribute writes and operators on a by_ref object run in the parent."""

    class Counter:
        def __init__(self) -> None:
            self.total = 0

        def add(self, n: int) -> None:
            self.total += n

        def __len__(self) -> int:
            return self.total * 2

        def __str__(self) -> str:
            return f"Counter({self.total})"

    counter = Counter()
    assert mod.use_object(spawnproxy.by_ref(counter)) == (3, 6, "Counter(3)")
    assert counter.total == 3
    assert counter.note == "set by the child"  # type: ignore[attr-defined]
    assert mod.bool_of(spawnproxy.by_ref(print)) is True


def test_weak_reference_to_a_gone_object_fails_clearly(mod) -> None:
    """by_ref(weak=True): once the parent's object is gone, the child gets ReferenceError."""

    class Widget:
        def ping(self) -> str:
            return "pong"

    widget = Widget()
    mod.keep(spawnproxy.by_ref(widget.ping, weak=True))
    assert mod.call_kept() == ["pong"]
    del widget
    gc.collect()
    with pytest.raises(ReferenceError, match="no longer exists"):
        mod.call_kept()
    with pytest.raises(TypeError, match="weakly referenced"):
        spawnproxy.by_ref(3, weak=True)


def test_values_that_cannot_travel_go_by_reference_both_ways(mod) -> None:
    """A callback's unpicklable result reaches the child as a stand-in; the child's unpicklable
    argument reaches the callback as a proxy."""
    lock = threading.Lock()
    assert mod.apply(spawnproxy.by_ref(lambda: lock)) is lock  # sent back: the parent's own object

    def inspect_lock(child_lock):
        assert isinstance(child_lock, spawnproxy.ObjectProxy)
        return child_lock.locked()  # a call into the child, from inside the callback

    assert mod.give_lock(spawnproxy.by_ref(inspect_lock)) is False


def test_a_parent_object_sent_back_is_not_released_before_its_answer_is_read(mod) -> None:
    """The child's only stand-in of a parent object dies once the answer naming it is sent; its
    release goes on the channel, the answer on the caller's lane: the parent must not drop the
    object before it reads the answer (once in a few dozen calls, it did)."""
    lock = threading.Lock()
    for _ in range(300):
        assert mod.apply(spawnproxy.by_ref(lambda: lock)) is lock
    session = spawnproxy.daemon_of(mod)._session
    mod.apply(len, "")  # the caller's next request: the child lets go of the last one
    assert wait_until(lambda: lock not in [entry[0] for entry in list(session.exports.objects.values())])


def test_callback_of_a_call_that_timed_out_still_runs(mod) -> None:
    """The caller gave up (timeout): the child's callback is served anyway, and the child goes on."""
    seen: list[str] = []

    def slow_then_note() -> None:
        seen.append("called")

    script = spawnproxy.run_script("import time\ndef later(f):\n    time.sleep(0.5)\n    f()\n    return 'done'")
    try:
        with spawnproxy.call_timeout(0.1), pytest.raises(spawnproxy.CallTimeoutError):
            script.later(spawnproxy.by_ref(slow_then_note))
        assert wait_until(lambda: seen == ["called"])
        assert script.later(spawnproxy.by_ref(slow_then_note)) == "done"
    finally:
        script.terminate_daemon()


def test_an_argument_that_fails_to_serialize_leaves_no_reference(mod) -> None:
    """The request is not sent: the by_ref object counted for it is given back."""
    with pytest.raises(spawnproxy.SerializationError):
        mod.apply(spawnproxy.by_ref(print), (i for i in range(3)))
    assert exports(mod) == 0


def test_arguments_the_parent_cannot_load_fail_the_callback_in_the_child(mod) -> None:
    """The callback's arguments cannot be rebuilt in the parent: the child's call gets the error."""
    seen: list[object] = []
    assert "invalid literal" in mod.send_unloadable(spawnproxy.by_ref(seen.append))
    assert seen == []
    assert mod.apply(spawnproxy.by_ref(len), [1, 2]) == 2


def test_a_result_that_cannot_be_encoded_fails_the_callback_in_the_child(mod) -> None:
    """Encoding the callback's answer fails: the child's call gets the error (it is never left
    waiting), on the caller's thread and on the worker thread, which goes on serving."""

    class Unencodable:
        @property  # type: ignore[misc]
        def __class__(self) -> type:  # makes isinstance() raise
            raise RuntimeError("no class here")

    make = spawnproxy.by_ref(lambda: Unencodable())
    assert mod.catch(make) == ("RuntimeError", "no class here")
    assert mod.in_thread(mod.catch, make) == ("RuntimeError", "no class here")
    assert mod.in_thread(spawnproxy.by_ref(lambda: "still served")) == "still served"
    assert exports(mod) == 0


def test_concurrent_callbacks_from_child_threads(mod) -> None:
    """Several child threads call back at once: each call gets its own answer."""
    script = spawnproxy.run_script(
        "import threading\n"
        "def fan_out(f, n):\n"
        "    out = [None] * n\n"
        "    def work(i):\n"
        "        out[i] = [f(i, k) for k in range(20)]\n"
        "    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]\n"
        "    [t.start() for t in ts]\n"
        "    [t.join() for t in ts]\n"
        "    return out\n"
    )
    try:
        assert script.fan_out(spawnproxy.by_ref(lambda i, k: i * 100 + k), 4) == [
            [i * 100 + k for k in range(20)] for i in range(4)
        ]
    finally:
        script.terminate_daemon()


def test_callbacks_with_blocking_calls_from_other_threads(mod) -> None:
    """Parent threads call the child while it calls back into the parent: every answer is right."""
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(30):
                assert mod.apply(spawnproxy.by_ref(lambda x: x + k), i) == i + k
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:2]
    assert exports(mod) == 0


def test_callback_into_a_child_of_each_version(child_python: str) -> None:
    """Callbacks, re-entrancy and exceptions work with every child interpreter."""
    mod = spawnproxy.run_script(SCRIPT, python_exe=child_python)
    try:
        seen: list[int] = []
        mod.each(spawnproxy.by_ref(seen.append), 3)
        assert seen == [0, 1, 2]

        def down(n: int) -> int:
            return mod.bounce(spawnproxy.by_ref(down), n)

        assert down(10) == 10
        assert mod.catch(spawnproxy.by_ref(lambda: {}["x"])) == ("KeyError", "'x'")
        assert mod.in_thread(spawnproxy.by_ref(lambda: "from a thread")) == "from a thread"
        assert exports(mod) == 0
    finally:
        mod.terminate_daemon()


def test_two_way_over_a_network_connection() -> None:
    """Callbacks (also from the daemon's threads), streaming and aio work for a client of serve()."""
    import asyncio

    server = spawnproxy.serve(spawnproxy.ScriptDefinition(SCRIPT))
    try:
        remote = server.connect()
        seen: list[int] = []
        remote.each(spawnproxy.by_ref(seen.append), 3)
        assert seen == [0, 1, 2]

        def down(n: int) -> int:
            return remote.bounce(spawnproxy.by_ref(down), n)

        assert down(10) == 10
        assert remote.in_thread(spawnproxy.by_ref(lambda x: x * 2), 21) == 42
        ticks: list[int] = []
        remote.ticker(spawnproxy.by_ref(ticks.append), 3, 0.01)
        assert wait_until(lambda: ticks == [0, 1, 2])
        assert sum(remote.apply(lambda n: (i for i in range(n)), 10_000)) == sum(range(10_000))

        async def awaited() -> int:
            return await spawnproxy.aio(remote).apply(spawnproxy.by_ref(lambda x: x + 1), 1)  # type: ignore[no-any-return]

        assert asyncio.run(awaited()) == 2
    finally:
        server.terminate()
