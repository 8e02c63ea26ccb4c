"""`Pool`: many children running one definition, as a `concurrent.futures.Executor`.

The public side: checking what is asked, the tasks put on the queue, `map`'s
chunks and its bounded read-ahead.  The worker threads that run the tasks,
and why they are threads, are `_workers`'.

Interface layer: uses `_workers`, `_daemon`, `_definitions`, `_options` and `_ssh`
(the options are checked once, before any child starts).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._daemon import DaemonProxy
from ._definitions import ModuleDefinition
from ._options import Options, check_launcher, check_logger
from ._ssh import is_ssh_url
from ._workers import AHEAD, Task, Workers, watch

__all__ = ["Pool"]


class Pool(concurrent.futures.Executor):
    """Many children running one definition: a `concurrent.futures.Executor`.

    `definition` is what each child runs (as for `DaemonProxy`; default: the
    `builtins` module).  `max_workers` children (default: one per CPU this
    process may use) start together; `python_exe`, `logger` and the options
    are those of `run_script`, given to each.  `launcher`, a command prefix or
    a callable of the worker's index (0 to max_workers - 1) that returns one
    (None: that child runs here), is passed to each child.  The children are
    warm (`warm=True`, forked from a zygote of their interpreter: see the guide
    "Warm start") unless a launcher or ssh runs them, or `warm=False` is given.

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
        if launcher is not None and not callable(launcher):
            check_launcher(launcher)
        remote = launcher is not None or is_ssh_url(python_exe)
        if options.get("warm") is None:
            # Many children, often short-lived: a zygote pays for itself from the second one.
            options["warm"] = not remote
        elif options["warm"] and remote:
            what = "launcher" if launcher is not None else f"python_exe={python_exe!r}"
            raise ValueError(f"warm=True cannot be combined with {what}: a zygote runs only on this machine")
        check_logger(logger)
        if definition is None:
            definition = ModuleDefinition("builtins")

        def start(index: int) -> DaemonProxy:
            kwargs = dict(options)
            chosen = launcher(index) if callable(launcher) else launcher
            if chosen is not None:
                kwargs["launcher"] = chosen
            return DaemonProxy(definition, python_exe, logger, **kwargs)

        self._workers = workers = Workers(start, max_workers)
        self._max_workers = max_workers
        # The children start together: each worker thread starts its own.
        for thread in workers.threads:
            thread.start()
        try:
            with workers.lock:
                # The first child's start says whether the definition loads; the others go on
                # starting meanwhile (a task runs as soon as one child is up, `proxies` waits for all).
                workers.started_cond.wait_for(lambda: len(workers.started) > 0)
                failed = workers.started[0]
        except BaseException:  # a Ctrl-C while the children start: none is left running
            workers.close()
            raise
        if failed is not None:
            workers.close()
            for thread in workers.threads:
                thread.join()
            raise failed
        watch(workers)
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
        for _ in range(AHEAD * self._max_workers):
            if not refill():
                break
        return _results(pending, refill, end_time)

    def _put(
        self, fn: Any, items: list[Any], spread: bool, kwargs: dict[str, Any], single: bool
    ) -> concurrent.futures.Future[Any]:
        task = Task(fn, items, spread, kwargs, single)
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
        with workers.lock:  # never waits for a child still starting
            running = sum(daemon is not None for daemon in workers.daemons)
        state = "shut down" if workers.closing else f"{running} children"
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
