"""The threads behind a `Pool`: one per child, taking tasks from one queue and running them there.

Each worker is an ordinary child (a `DaemonProxy`) and a thread of the
parent's that takes tasks from one shared queue and runs them there with
blocking requests, one chunk of calls per request (the child's "tasks"
operation, `_child/ops.py`).  Why a thread per worker rather than the
session's asynchronous `submit`/`collect` and one dispatcher:

- the child runs one request at a time (its main thread), so one request in
  flight per child is all it can use, and a blocked thread costs nothing
  (two in flight, tried, measured no faster on tiny tasks);
- least-loaded dispatch falls out of it: only an idle worker takes the next
  task from the queue, so a task never waits behind another while a child is
  free (the issue's complaint: five threads on one child ran one by one);
- each thread has its own lane to its child (see `_session`): the replies of
  one child are never routed through another's reader;
- a dead child is that thread's business alone: it fails the chunk it was
  running with the child's `DaemonDiedError`, starts a replacement and goes on,
  while the other workers never notice.

Interface layer (below `_pool`): uses `_daemon` (the children, their sessions),
`_serialize` (a task's exception is rebuilt there) and the wire's names.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._child import protocol
from ._daemon import DaemonProxy, root_id_of, session_of
from ._errors import CallTimeoutError, DaemonDiedError, DaemonTerminatedError
from ._serialize_errors import rebuild_exception

__all__ = ["AHEAD", "Task", "Workers", "watch"]

# Chunks in flight per worker during `map`: one running, one waiting for the child to be free.
AHEAD = 2
# How often (seconds) an idle worker looks whether its child still runs.
_IDLE_CHECK = 0.5

Outcome = tuple[list[Any], "BaseException | None"]


class Task:
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


class Workers:
    """What the pool's threads share (never the pool itself: dropping it ends them)."""

    def __init__(self, start: Callable[[int], DaemonProxy], count: int) -> None:
        self.start = start
        self.queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
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

    def replace(self, index: int, old: DaemonProxy, error: object) -> DaemonProxy | None:
        """A new child in place of worker `index`'s dead or stuck one, or None if it did not start.

        The old child is ended first, whoever still holds its proxies: its descriptors and
        threads go now, and a child still running an abandoned task stops.
        """
        old.terminate(_END_OLD)
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
        _log.info("spawnproxy pool: worker %d replaced its child (%s)", index, error)
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
_END_OLD = 1.0  # how long a replaced child may take to end before it is killed
_pools: weakref.WeakSet[Workers] = weakref.WeakSet()
_exiting = False
_hooked = False


def watch(workers: Workers) -> None:
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


def _work(workers: Workers, index: int) -> None:
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
                daemon = workers.replace(index, daemon, f"exit code {daemon.exitcode} while idle")
                if daemon is None:
                    if task is not _IDLE and task.future.set_running_or_notify_cancel():
                        task.future.set_exception(workers.lost or RuntimeError("the pool is shutting down"))
                    break
            if task is _IDLE or not task.future.set_running_or_notify_cancel():
                continue
            try:
                outcome = _run(daemon, task, index)
            except (DaemonDiedError, DaemonTerminatedError, CallTimeoutError) as exc:
                # The child is gone (died, or someone terminated it through a proxy), or it still
                # runs a chunk given up on, and it runs one request at a time: the next tasks would
                # wait behind it.  Either way a new child takes its place.
                task.future.set_exception(exc)
                del task
                daemon = None if _exiting else workers.replace(index, daemon, exc)
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


def _run(daemon: DaemonProxy, task: Task, index: int) -> Outcome:
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
