"""Pin a process tree to one CPU for the cases made of single small round trips.

On a small virtual machine, a ping-pong between two processes costs two or three times more when
the scheduler places them on different CPUs (a cross-CPU wake-up) than on one, and the scheduler
flips between the two mid-run: unpinned medians then swing with placement, not with the code.
Pinning the client, the server and all their threads to one CPU measures each call's own cost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

PINNED_CASES = frozenset({"noop", "add", "get_value", "set_value", "echo_1KiB", "refs"})


def available() -> bool:
    """Whether this platform lets a process set the CPUs of its threads and its children's."""
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


def _tree() -> list[int]:
    """This process and every process it started, directly or not."""
    pids = [os.getpid()]
    try:
        import psutil

        pids += [child.pid for child in psutil.Process().children(recursive=True)]
    except ImportError:
        pass
    return pids


def _set(cpus: set[int]) -> None:
    for pid in _tree():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def one_cpu(enabled: bool) -> Iterator[int | None]:
    """Pin the whole tree to the first CPU this process may use; give back all of them after."""
    if not (enabled and available()):
        yield None
        return
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    _set({cpu})
    try:
        yield cpu
    finally:
        _set(allowed)
