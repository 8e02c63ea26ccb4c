"""spawnproxy.Pool: a concurrent.futures.Executor of children (issue 17, section 1)."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import select
import signal
import sys
import time
import traceback

import psutil
import pytest

import spawnproxy
from spawnproxy import DaemonDiedError, DaemonStartError, ModuleDefinition, Pool, ScriptDefinition
from tests.conftest import run_python, wait_until
from tests.targets import pool_tasks
from tests.targets.parents import gone

TASKS = ModuleDefinition("tests.targets.pool_tasks")


@pytest.fixture
def pool():
    """A pool of two children running tests.targets.pool_tasks, shut down after the test."""
    with Pool(TASKS, max_workers=2) as pool:
        yield pool


# -- Executor conformance ----------------------------------------------------------------


def test_submit_a_dotted_name_of_the_root(pool: Pool) -> None:
    """submit("name", ...) calls that attribute of each child's root, with args and kwargs."""
    assert pool.submit("square", 7).result(30) == 49
    assert pool.submit("add", 1, b=2).result(30) == 3
    # Warm by default: the children are the zygote's (see test_warm.py), so grandchildren of this process.
    assert pool.submit("os.getpid").result(30) in {p.pid for p in psutil.Process().children(recursive=True)}


def test_submit_a_callable(pool: Pool) -> None:
    """A module-level function and a closure are sent as arguments are, and run in a child."""
    assert pool.submit(pool_tasks.square, 5).result(30) == 25
    assert pool.submit(pool_tasks.pid).result(30) != os.getpid()
    offset = 10
    assert pool.submit(lambda x: x + offset, 1).result(30) == 11


def test_map_returns_results_in_order(pool: Pool) -> None:
    """map gives the results in the order of its input, whatever the chunksize."""
    for chunksize in (1, 3, 100):
        assert list(pool.map("square", range(20), chunksize=chunksize)) == [x * x for x in range(20)]
    assert list(pool.map("add", [1, 2], [10, 20])) == [11, 22]
    assert list(pool.map(pool_tasks.square, [])) == []


def test_an_exception_arrives_with_its_type_and_remote_traceback(pool: Pool) -> None:
    """A task's exception is raised with its own type and the child's frames."""
    future = pool.submit("fail", 3)
    with pytest.raises(ValueError, match="bad item 3") as info:
        future.result(30)
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert "pool_tasks.py" in text and "in fail" in text


def test_an_exception_in_map_arrives_at_its_place(pool: Pool) -> None:
    """map yields the results before a failing task, then raises that task's exception."""
    results = pool.map("fail_at", range(10), [6] * 10, chunksize=4)
    got = []
    with pytest.raises(KeyError):
        for value in results:
            got.append(value)
    assert got == [0, 1, 2, 3, 4, 5]


def test_a_bad_name_fails_its_tasks_only(pool: Pool) -> None:
    """A name the root lacks is an AttributeError on that task; the pool goes on."""
    with pytest.raises(AttributeError):
        pool.submit("no_such_function").result(30)
    assert pool.submit("square", 2).result(30) == 4


def test_an_argument_that_cannot_be_sent_fails_its_task_only(pool: Pool) -> None:
    """An argument nothing can serialize: SerializationError naming it, on that future alone."""
    with pytest.raises(spawnproxy.SerializationError, match="arguments of task 1"):
        pool.submit("add", (x for x in [])).result(30)
    assert pool.submit("square", 5).result(30) == 25


def test_map_timeout(pool: Pool) -> None:
    """map's timeout counts from the call, as Executor.map's does."""
    results = pool.map("nap", [1.0] * 4, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)
    assert time.monotonic() - started < 0.9


def test_pending_futures_can_be_cancelled() -> None:
    """A task waiting for a free child can be cancelled; a running one cannot."""
    with Pool(TASKS, max_workers=1) as pool:
        running = pool.submit("nap", 0.5)
        waiting = pool.submit("square", 3)
        assert wait_until(running.running, 5)
        assert waiting.cancel()
        assert not running.cancel()
        assert running.result(30) > 0
        assert waiting.cancelled()
        assert pool.submit("square", 4).result(30) == 16


def test_shutdown_cancel_futures() -> None:
    """shutdown(cancel_futures=True) cancels what has not started; what runs finishes."""
    pool = Pool(TASKS, max_workers=1)
    running = pool.submit("nap", 0.3)
    assert wait_until(running.running, 5)
    queued = [pool.submit("square", i) for i in range(5)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) > 0
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit("square", 1)


def test_shutdown_without_wait_finishes_the_queue() -> None:
    """shutdown(wait=False) returns at once; queued tasks still run, then the children end."""
    pool = Pool(TASKS, max_workers=1)
    pids = [proxy.os.getpid() for proxy in pool.proxies]
    futures = [pool.submit("nap", 0.1) for _ in range(3)]
    started = time.monotonic()
    pool.shutdown(wait=False)
    assert time.monotonic() - started < 0.1
    assert [f.result(30) for f in futures] == pids * 3
    assert all(gone(pid, 5) for pid in pids)


def test_context_manager_ends_the_children() -> None:
    """Leaving the with block waits for the tasks and ends every child."""
    with Pool(TASKS, max_workers=2) as pool:
        pids = [proxy.os.getpid() for proxy in pool.proxies]
        future = pool.submit("nap", 0.1)
    assert future.done()
    assert all(gone(pid, 5) for pid in pids)


def test_as_completed_and_wait(pool: Pool) -> None:
    """Pool futures work with concurrent.futures.as_completed and wait."""
    futures = [pool.submit("square", i) for i in range(6)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=30)) == [i * i for i in range(6)]
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 6


def test_proxies_reach_each_child(pool: Pool) -> None:
    """pool.proxies holds each child's root proxy, one per worker."""
    proxies = pool.proxies
    assert len(proxies) == 2
    assert all(spawnproxy.is_proxy(p) for p in proxies)
    assert len({p.pid() for p in proxies}) == 2


def test_max_workers_defaults_to_the_available_cpus() -> None:
    """Without max_workers, the pool has one child per CPU this process may use."""
    with Pool() as pool:
        assert len(pool.proxies) == len(os.sched_getaffinity(0))
        assert pool.submit("abs", -3).result(30) == 3  # the default definition: builtins


def test_bad_arguments_are_one_line_errors(pool: Pool) -> None:
    """max_workers=0, a function that is neither a name nor callable, chunksize=0: one-line errors."""
    with pytest.raises(ValueError, match="max_workers") as err:
        Pool(TASKS, max_workers=0)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="max_workers"):
        Pool(TASKS, max_workers="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int") as err:
        pool.submit(42)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="chunksize") as err:
        pool.map("square", [1], chunksize=0)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="name"):
        pool.submit("not a name")
    with pytest.raises(TypeError, match="no_such_option"):
        Pool(TASKS, max_workers=1, no_such_option=1)


def test_options_reach_each_child() -> None:
    """Options (here env) are those of run_script, passed to every child."""
    with Pool(ScriptDefinition("import os"), max_workers=2, env={**os.environ, "POOL_MARK": "yes"}) as pool:
        assert [p.os.environ["POOL_MARK"] for p in pool.proxies] == ["yes", "yes"]


def test_a_callable_launcher_is_called_with_each_index() -> None:
    """A callable launcher is called with each worker's index, and again for a replacement (None: runs here)."""
    seen: list[int] = []

    def launcher(index: int) -> None:
        seen.append(index)

    with Pool(TASKS, max_workers=3, launcher=launcher) as pool:
        assert pool.submit("square", 2).result(30) == 4
        assert sorted(seen) == [0, 1, 2]
        pids = [spawnproxy.daemon_of(p).pid for p in pool.proxies]
        os.kill(pids[1], signal.SIGKILL)
        assert wait_until(lambda: len(seen) == 4, 10)
    assert seen[3] == 1  # the replacement stands in for worker 1


# -- dispatch and start ------------------------------------------------------------------


@pytest.mark.slow
def test_children_start_in_parallel() -> None:
    """Eight children whose definition sleeps 0.5 s start in far less than 8 x 0.5 s."""
    started = time.monotonic()
    with Pool(ScriptDefinition("import time\ntime.sleep(0.5)"), max_workers=8) as pool:
        assert len(pool.proxies) == 8  # waits for every child
        elapsed = time.monotonic() - started
    assert elapsed < 3.0


def test_tasks_go_to_free_children() -> None:
    """Five 0.2 s tasks on five children take about 0.2 s, not 1 s (the issue's complaint)."""
    with Pool(TASKS, max_workers=5) as pool:
        list(pool.map("square", range(10)))  # warm
        started = time.monotonic()
        pids = [f.result(30) for f in [pool.submit("nap", 0.2) for _ in range(5)]]
        elapsed = time.monotonic() - started
    assert len(set(pids)) == 5
    assert elapsed < 0.6


# -- a dead child ------------------------------------------------------------------------


def test_a_child_that_exits_fails_only_its_tasks(pool: Pool) -> None:
    """os._exit(3) in a task: DaemonDiedError with the code on that task; the child is replaced."""
    before = {p.pid() for p in pool.proxies}
    others = [pool.submit("nap", 0.3) for _ in range(1)]
    dead = pool.submit("die", 3)
    with pytest.raises(DaemonDiedError, match="exit code 3") as info:
        dead.result(30)
    assert info.value.exitcode == 3
    assert all(f.result(30) in before for f in others)
    assert wait_until(lambda: len({p.pid() for p in pool.proxies} - before) == 1, 10)
    assert list(pool.map("square", range(10), chunksize=2)) == [x * x for x in range(10)]


def test_a_child_killed_from_outside_fails_only_its_tasks() -> None:
    """SIGKILL of a busy child: its task gets DaemonDiedError, the pool replaces it and goes on."""
    with Pool(TASKS, max_workers=2) as pool:
        busy = pool.submit("nap", 30)
        assert wait_until(busy.running, 5)
        pids = {spawnproxy.daemon_of(p).pid for p in pool.proxies}
        idle = pool.submit("pid").result(30)
        (target,) = pids - {idle}  # the busy one (a proxy call would wait for its task)
        os.kill(target, signal.SIGKILL)
        with pytest.raises(DaemonDiedError, match="SIGKILL"):
            busy.result(10)
        assert [pool.submit("square", i).result(30) for i in range(4)] == [0, 1, 4, 9]

        def replaced() -> bool:
            now = {spawnproxy.daemon_of(p).pid for p in pool.proxies}
            return target not in now and len(now) == 2

        assert wait_until(replaced, 10)
        assert len({f.result(30) for f in [pool.submit("nap", 0.3) for _ in range(2)]}) == 2


def test_an_idle_child_that_dies_is_replaced_before_a_task_reaches_it() -> None:
    """A child killed while idle is replaced (within a second); no task fails for it."""
    with Pool(TASKS, max_workers=1) as pool:
        old = spawnproxy.daemon_of(pool.proxies[0]).pid
        ended = os.pidfd_open(old)
        try:
            os.kill(old, signal.SIGKILL)
            # Readable once the whole process has exited: a zombie leader whose threads are
            # still ending is a child dying, not dead, and a task may still race it.
            assert select.select([ended], [], [], 5)[0]
        finally:
            os.close(ended)
        assert pool.submit("pid").result(30) != old
        assert wait_until(lambda: spawnproxy.daemon_of(pool.proxies[0]).pid != old, 5)


def test_a_definition_that_cannot_load_fails_the_constructor() -> None:
    """A definition that fails is DaemonStartError from Pool(), and no child is left."""
    with pytest.raises(DaemonStartError, match="ZeroDivisionError"):
        Pool(ScriptDefinition("1 / 0"), max_workers=3)


# -- backpressure --------------------------------------------------------------------------


def test_map_keeps_in_flight_chunks_bounded() -> None:
    """map over 10^6 items does not drain its input ahead, and memory stays flat."""
    consumed = 0

    def items():
        nonlocal consumed
        for i in range(10**6):
            consumed = i + 1
            yield i

    me = psutil.Process()
    with Pool(max_workers=2) as pool:
        results = pool.map("abs", items(), chunksize=1000)
        first = next(results)
        at_first = consumed
        assert first == 0
        assert at_first <= 10 * 1000
        rss_before = me.memory_info().rss
        total = 1
        for i, _ in enumerate(results):
            total += 1
            if i == 200_000:
                rss_before = me.memory_info().rss  # steady state
        rss_after = me.memory_info().rss
    assert total == 10**6
    assert rss_after - rss_before < 20 * 2**20


# -- lifetime ----------------------------------------------------------------------------


def test_children_end_when_the_pool_is_collected() -> None:
    """A pool dropped without shutdown ends its children, as other children end by GC."""
    pool = Pool(TASKS, max_workers=2)
    pids = [p.pid() for p in pool.proxies]
    del pool
    gc.collect()
    assert all(gone(pid, 5) for pid in pids)


@pytest.mark.slow
def test_children_end_with_the_parent() -> None:
    """A parent that exits, or is killed, without shutdown leaves no child behind (within 2 s)."""
    for ending in ("pass", "os.kill(os.getpid(), signal.SIGKILL)"):
        code = (
            "import os, signal, spawnproxy\n"
            "pool = spawnproxy.Pool(spawnproxy.ModuleDefinition('tests.targets.pool_tasks'), max_workers=2)\n"
            "f = pool.submit('nap', 30)\n"
            "print(*[spawnproxy.daemon_of(p).pid for p in pool.proxies], flush=True)\n"
            f"{ending}\n"
        )
        out = run_python(code, timeout=60)
        pids = [int(x) for x in out.stdout.split()]
        assert len(pids) == 2, out.stderr
        assert all(gone(pid, 3) for pid in pids)


def test_a_child_terminated_through_its_proxy_is_replaced() -> None:
    """terminate_daemon() on one of pool.proxies: the next task runs in a new child, not into the old one."""
    with Pool(TASKS, max_workers=1) as pool:
        (proxy,) = pool.proxies
        old = spawnproxy.daemon_of(proxy).pid
        proxy.terminate_daemon()
        assert pool.submit("square", 3).result(30) == 9
        assert spawnproxy.daemon_of(pool.proxies[0]).pid != old


def test_a_replacement_that_cannot_start_fails_what_is_queued(tmp_path) -> None:
    """When the last child dies and its replacement fails to load, queued tasks fail, never hang."""
    flag = tmp_path / "broken"
    script = f"import os\nif os.path.exists({str(flag)!r}):\n    raise RuntimeError('broken now')\n"
    with Pool(ScriptDefinition(script), max_workers=1) as pool:
        flag.touch()
        dying = pool.submit("os._exit", 5)
        queued = pool.submit("os.getpid")
        with pytest.raises(DaemonDiedError):
            dying.result(30)
        with pytest.raises(DaemonStartError, match="broken now"):
            queued.result(30)
        with pytest.raises(RuntimeError, match="no children left"):
            pool.submit("os.getpid")


def test_a_task_that_times_out_leaves_no_busy_child_behind() -> None:
    """A task past call_timeout fails with CallTimeoutError; the next one runs at once, in a new child."""
    with Pool(TASKS, max_workers=1, call_timeout=0.5) as pool:
        old = spawnproxy.daemon_of(pool.proxies[0]).pid
        with pytest.raises(spawnproxy.CallTimeoutError):
            pool.submit("nap", 30).result(10)
        started = time.monotonic()
        assert pool.submit("pid").result(10) != old
        assert time.monotonic() - started < 5, "the next task waited behind the abandoned one"


def test_a_bad_launcher_fails_the_constructor_before_any_child_starts() -> None:
    """A launcher that is no command prefix is a TypeError from Pool(), naming launcher."""
    with pytest.raises(TypeError, match="launcher"):
        Pool(TASKS, max_workers=2, launcher="srun")


def test_repr_does_not_wait_for_children_to_start() -> None:
    """repr() of a pool whose second child is still starting answers at once."""
    slow_start = ["sh", "-c", 'sleep 3; exec "$@"', "sh"]
    definition = ScriptDefinition("import os")
    with Pool(
        definition, max_workers=2, launcher=lambda i: slow_start if i else None, python_exe=sys.executable
    ) as pool:
        shown = time.monotonic()
        assert "max_workers=2" in repr(pool)
        assert time.monotonic() - shown < 1
