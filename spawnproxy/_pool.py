"""`Pool`: many children running one definition, as a `concurrent.futures.Executor`.

Each worker is an ordinary child (a `DaemonProxy`) and a thread of the
parent's that takes tasks from one shared queue and runs them there with
blocking requests, one chunk of calls per request (the child's "tasks"
operation, `_child/ops.py`).  Why a thread per worker rather than the
session's asynchronous `submit`/`collect` and one dispatcher:

- the child runs one request at a time (its main thread), so one request in
  flight per child is all it can use, and a blocked thread costs nothing;
- least-loaded dispatch falls out of it: only an idle worker takes the next
  task from the queue, so a task never waits behind another while a child is
  free (the issue's complaint: five threads on one child ran one by one);
- each thread has its own lane to its child (see `_session`): the replies of
  one child are never routed through another's reader;
- a dead child is that thread's business alone: it fails the chunk it was
  running with the child's `DaemonDiedError`, starts a replacement and goes on,
  while the other workers never notice.

Interface layer: uses `_daemon` (the children, their sessions), `_definitions`,
`_options` (the options are checked once, before any child starts),
`_serialize` (a task's exception is rebuilt there) and the wire's names.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._child import protocol
from ._daemon import DaemonProxy, root_id_of, session_of
from ._definitions import ModuleDefinition
from ._errors import DaemonDiedError, DaemonTerminatedError
from ._options import Options, check_logger
from ._serialize import rebuild_exception

__all__ = ["Pool"]

# Chunks in flight per worker during `map`: one running, one waiting for the child to be free.
_AHEAD = 2
# How often (seconds) an idle worker looks whether its child still runs.
_IDLE_CHECK = 0.5

Outcome = tuple[list[Any], "BaseException | None"]


class _Task:
    """One request: `fn` on each item of a chunk (a submit is a chunk of one, `single`)."""

    __slots__ = ("fn", "future", "items", "kwargs", "single", "spread")

    def __init__(self, fn: Any, items: list[Any], spread: bool, kwargs: dict[str, Any], single: bool) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.fn = fn  # a callable, or the dotted name split: ("a", "b")
        self.items = items
        self.spread = spread
        self.kwargs = kwargs
        self.single = single

    def deliver(self, outcome: Outcome) -> None:
        if not self.single:
            self.future.set_result(outcome)  # map reads (results, error) itself
            return
        values, error = outcome
        if error is None:
            self.future.set_result(values[0])
        else:
            self.future.set_exception(error)

    def describe(self) -> list[tuple[str, Any]]:
        """The operands, named for an error that says which cannot be sent."""
        named = [] if isinstance(self.fn, tuple) else [("the function", self.fn)]
        what = "the arguments" if self.spread else "the item"
        named += [(f"{what} of task {i + 1} of the chunk", item) for i, item in enumerate(self.items)]
        named += [(f"keyword argument {key!r}", value) for key, value in self.kwargs.items()]
        return named


class _Workers:
    """What the pool's threads share (never the pool itself: dropping it ends them)."""

    def __init__(self, start: Callable[[int], DaemonProxy], count: int) -> None:
        self.start = start
        self.queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.daemons: list[DaemonProxy | None] = [None] * count
        self.started: list[BaseException | None] = []  # each worker's start: None, or its error
        self.started_cond = threading.Condition(self.lock)
        self.closing = False
        self.lost: BaseException | None = None  # the error that took the last worker
        self.alive = count
        self.threads = [
            threading.Thread(target=_work, args=(self, i), name=f"spawnproxy-pool-{i}", daemon=True)
            for i in range(count)
        ]

    def close(self, cancel: bool = False) -> None:
        """No more tasks; with `cancel`, the queued ones are cancelled.  Each thread ends its child."""
        with self.lock:
            if not self.closing:
                self.closing = True
                for _ in self.threads:
                    self.queue.put(None)
        if cancel:
            self._drain(None)

    def _drain(self, error: BaseException | None) -> None:
        """Take the queued tasks off: cancelled, or failed with `error`."""
        keep = 0
        while True:
            try:
                task = self.queue.get_nowait()
            except queue.Empty:
                break
            if task is None:
                keep += 1
            elif error is None or not task.future.set_running_or_notify_cancel():
                task.future.cancel()
            else:
                task.future.set_exception(error)
        for _ in range(keep):
            self.queue.put(None)

    def replace(self, index: int, error: object) -> DaemonProxy | None:
        """A new child in place of worker `index`'s dead one, or None if it did not start."""
        with self.lock:
            self.daemons[index] = None  # (also while closing: the queued tasks still run)
        try:
            daemon = self.start(index)
        except Exception as exc:
            _log.warning("spawnproxy pool: worker %d lost its child and could not start another: %s", index, exc)
            self.lost = exc
            return None
        with self.lock:
            self.daemons[index] = daemon
        _log.info("spawnproxy pool: worker %d replaced its dead child (%s)", index, error)
        return daemon

    def ended(self) -> None:
        """A worker thread ends: the last one fails what is still queued (no one would run it)."""
        with self.lock:
            self.alive -= 1
            last = self.alive == 0 and not self.closing
            if last:
                self.closing = True
        if last:
            self._drain(self.lost or RuntimeError("the pool has no children left"))


_log = logging.getLogger("spawnproxy")
_IDLE: Any = object()  # no task came within _IDLE_CHECK
_pools: weakref.WeakSet[_Workers] = weakref.WeakSet()
_exiting = False
_hooked = False


def _watch(workers: _Workers) -> None:
    """End `workers` at exit, before the process registry ends the children: its hook, registered
    when the first child started, runs after this one."""
    global _hooked
    if not _hooked:
        atexit.register(_at_exit)
        _hooked = True
    _pools.add(workers)


def _at_exit() -> None:
    # Runs before the process registry ends the children (registered after it): a worker
    # that sees its child end now does not start another.
    global _exiting
    _exiting = True
    for workers in list(_pools):
        workers.close(cancel=True)


def _work(workers: _Workers, index: int) -> None:
    """A worker thread: start the child, then run tasks from the queue in it until told to stop."""
    daemon: DaemonProxy | None = None
    try:
        try:
            daemon = workers.start(index)
        except BaseException as exc:
            with workers.lock:
                if workers.started:  # the pool is up: it goes on without this worker
                    _log.warning("spawnproxy pool: worker %d could not start its child: %s", index, exc)
                workers.lost = exc
                workers.started.append(exc)
                workers.started_cond.notify_all()
            return
        with workers.lock:
            workers.daemons[index] = daemon
            workers.started.append(None)
            workers.started_cond.notify_all()
        take = workers.queue.get
        while True:
            try:
                task = take(timeout=_IDLE_CHECK)
            except queue.Empty:
                task = _IDLE
            if task is None:
                break
            if not daemon.is_alive() and not _exiting:
                # The child died while idle: a new one takes its place before any task is lost to it.
                daemon = workers.replace(index, f"exit code {daemon.exitcode} while idle")
                if daemon is None:
                    if task is not _IDLE and task.future.set_running_or_notify_cancel():
                        task.future.set_exception(workers.lost or RuntimeError("the pool is shutting down"))
                    break
            if task is _IDLE or not task.future.set_running_or_notify_cancel():
                continue
            try:
                outcome = _run(daemon, task, index)
            except (DaemonDiedError, DaemonTerminatedError) as exc:
                # The child is gone (died, or someone terminated it through a proxy).
                task.future.set_exception(exc)
                del task
                daemon = None if _exiting else workers.replace(index, exc)
                if daemon is None:
                    break
                continue
            except BaseException as exc:
                task.future.set_exception(exc)
                continue
            task.deliver(outcome)
            del task, outcome
    finally:
        if daemon is not None:
            daemon.terminate()
        workers.ended()


def _run(daemon: DaemonProxy, task: _Task, index: int) -> Outcome:
    """Run a task's chunk in `daemon`: (results, the exception of the task after them, or None).

    What it raises is the request's own failure (the child died, an operand cannot be sent).
    """
    fn = task.fn
    if isinstance(fn, tuple):
        fn, name = (root_id_of(daemon), *fn), ".".join(fn)
    else:
        name = getattr(fn, "__qualname__", "a function")
    what = f"{name}() in pool worker {index}"
    _, _, how, payload = session_of(daemon).request(
        "tasks", (fn, task.items, task.spread, task.kwargs), what, task.describe
    )
    if how == protocol.ERROR:
        return [], rebuild_exception(payload)  # before any task ran: the name, or the function, is wrong
    values, end, _ = payload
    return values, None if end is None else rebuild_exception(end)


class Pool(concurrent.futures.Executor):
    """Many children running one definition: a `concurrent.futures.Executor`.

    `definition` is what each child runs (as for `DaemonProxy`; default: the
    `builtins` module).  `max_workers` children (default: one per CPU this
    process may use) start together; `python_exe`, `logger` and the options
    are those of `run_script`, given to each.  `launcher`, a command prefix or
    a callable of the worker's index (0 to max_workers - 1) that returns one
    (None: that child runs here), is passed to each child.

    `submit(fn, *args, **kwargs)` takes a callable (sent as arguments are) or
    the dotted name of one in each child's root; a task runs in whichever
    child is free.  `map` sends `chunksize` items per request and keeps only a
    few chunks per worker in flight.  A child that dies fails the tasks it was
    running with `DaemonDiedError` and is replaced; a definition that cannot
    load is `DaemonStartError` from the constructor.  `proxies` holds each
    child's root proxy.  See the guide "Pools and clusters".

    Example:
        >>> import spawnproxy
        >>> with spawnproxy.Pool(spawnproxy.ScriptDefinition("def square(x):\\n    return x * x"), 2) as pool:
        ...     print(pool.submit("square", 7).result())
        ...     print(list(pool.map("square", range(5), chunksize=2)))
        49
        [0, 1, 4, 9, 16]
    """

    def __init__(
        self,
        definition: Any = None,
        max_workers: int | None = None,
        *,
        python_exe: str | os.PathLike[str] | None = None,
        launcher: Any = None,
        logger: logging.Logger | None = None,
        **options: Any,
    ) -> None:
        if max_workers is None:
            max_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        elif not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        elif max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        Options.from_kwargs(dict(options))  # a bad option fails here, before any child starts
        check_logger(logger)
        if definition is None:
            definition = ModuleDefinition("builtins")

        def start(index: int) -> DaemonProxy:
            kwargs = dict(options)
            chosen = launcher(index) if callable(launcher) else launcher
            if chosen is not None:
                kwargs["launcher"] = chosen
            return DaemonProxy(definition, python_exe, logger, **kwargs)

        self._workers = workers = _Workers(start, max_workers)
        self._max_workers = max_workers
        # The children start together: each worker thread starts its own.
        for thread in workers.threads:
            thread.start()
        with workers.lock:
            # The first child's start says whether the definition loads; the others go on starting
            # meanwhile (a task runs as soon as one child is up, `proxies` waits for them all).
            workers.started_cond.wait_for(lambda: len(workers.started) > 0)
            failed = workers.started[0]
        if failed is not None:
            workers.close()
            for thread in workers.threads:
                thread.join()
            raise failed
        _watch(workers)
        weakref.finalize(self, workers.close)  # a dropped pool ends its children as a dropped proxy does

    @property
    def proxies(self) -> list[Any]:
        """The root proxy of each child, in worker order (a replaced child's successor in its place).

        Waits for the children still starting.
        """
        workers = self._workers
        with workers.lock:
            workers.started_cond.wait_for(lambda: len(workers.started) == len(workers.threads))
            daemons = list(workers.daemons)
        return [daemon.proxy for daemon in daemons if daemon is not None]

    def submit(self, fn: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run `fn(*args, **kwargs)` in a free child; return its Future.

        `fn` is a callable, or the dotted name of one in each child's root.
        """
        return self._put(_checked_fn(fn), [args], True, kwargs, single=True)

    def map(
        self,
        fn: str | Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """`fn` over the items of `iterables` (zipped), `chunksize` per request; results in order.

        As `Executor.map`: `timeout` counts from this call, and a task's
        exception is raised where its result would be.  Unlike it, the
        input is read only a few chunks per worker ahead of the results taken.
        """
        target = _checked_fn(fn)
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError(f"chunksize must be an int of at least 1, not {chunksize!r}")
        end_time = None if timeout is None else time.monotonic() + timeout
        spread = len(iterables) != 1
        items: Iterator[Any] = iter(iterables[0]) if not spread else zip(*iterables, strict=False)
        pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()

        def refill() -> bool:
            chunk = list(itertools.islice(items, chunksize))
            if chunk:
                pending.append(self._put(target, chunk, spread, {}, single=False))
            return bool(chunk)

        # The first chunks go now, as Executor.map's tasks do: the work starts before it is asked for.
        for _ in range(_AHEAD * self._max_workers):
            if not refill():
                break
        return _results(pending, refill, end_time)

    def _put(
        self, fn: Any, items: list[Any], spread: bool, kwargs: dict[str, Any], single: bool
    ) -> concurrent.futures.Future[Any]:
        task = _Task(fn, items, spread, kwargs, single)
        workers = self._workers
        with workers.lock:
            if workers.lost is not None and workers.alive == 0:
                raise RuntimeError(f"the pool has no children left: {workers.lost}")
            if workers.closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            workers.queue.put(task)
        return task.future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more tasks; with `cancel_futures`, cancel those not started; with `wait`, wait
        until the running ones are done and the children have ended."""
        workers = self._workers
        workers.close(cancel_futures)
        if wait:
            for thread in workers.threads:
                thread.join()

    def __repr__(self) -> str:
        workers = self._workers
        state = "shut down" if workers.closing else f"{len(self.proxies)} children"
        return f"<spawnproxy.Pool max_workers={self._max_workers} {state}>"


def _checked_fn(fn: Any) -> Any:
    """What a task sends: a callable as it is, a dotted name as its parts."""
    if isinstance(fn, str):
        parts = tuple(fn.split("."))
        if not all(part.isidentifier() for part in parts):
            raise ValueError(f"{fn!r} is not a dotted name of an attribute of the children's root")
        return parts
    if not callable(fn):
        raise TypeError(
            f"a pool runs a callable or the dotted name (str) of one in each child's root, not {type(fn).__name__}"
        )
    return fn


def _results(
    pending: collections.deque[concurrent.futures.Future[Any]], refill: Callable[[], bool], end_time: float | None
) -> Iterator[Any]:
    """The results of `map`, chunk by chunk; one more chunk goes out as each is taken."""
    try:
        more = True
        while pending:
            future = pending.popleft()
            if more:
                more = refill()
            values, error = future.result(None if end_time is None else end_time - time.monotonic())
            del future
            yield from values
            if error is not None:
                raise error
    finally:
        for future in pending:
            future.cancel()
