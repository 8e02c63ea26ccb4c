"""Releases reach the child within a bound, also when no call follows the drop.

A proxy dropped in the parent queues its object's release on its session
(`_requests.Reference`); the next frame sent carries the batch, so while calls flow
releases cost no frame of their own.  When no call follows, one thread per
process (not per proxy, not per session) looks every `PERIOD` seconds at the
release queues of the sessions it watches and sends what is still queued, if
the channel is free: a busy channel is about to carry the batch anyway.  The
thread is a daemon, holds no session alive (a weak reference each), ends when
no session is left open, and its look is a few instructions: a call pays nothing
for it.

Session layer: the standard library only at run time (`Session` is named for annotations).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._session import Session

# How often (s) pending releases are looked at: a dropped proxy is released within about this.
PERIOD = 0.25

# (a session's queue of releases, the session): the queue alone keeps no session alive.
_watched: list[tuple[collections.deque[int], weakref.ref[Session]]] = []
_lock = threading.Lock()
_thread: threading.Thread | None = None
_fork_hook = False  # registered with the first session


def watch(session: Session) -> None:
    """Flush `session`'s pending releases every PERIOD seconds while it lives."""
    global _thread, _fork_hook
    with _lock:
        if not _fork_hook and hasattr(os, "register_at_fork"):
            # At the first session, not at import: importing spawnproxy has no side effects.
            os.register_at_fork(after_in_child=_forget_after_fork)
            _fork_hook = True
        _watched.append((session.releases, weakref.ref(session)))
        if _thread is None:
            _thread = threading.Thread(target=_run, name="spawnproxy-releases", daemon=True)
            _thread.start()


def _run() -> None:
    global _thread
    while True:
        time.sleep(PERIOD)
        for releases, ref in _watched:
            if releases:
                _flush(ref)
        if any(_gone(ref) for _, ref in _watched):
            with _lock:
                _watched[:] = [(releases, ref) for releases, ref in _watched if not _gone(ref)]
                if not _watched:
                    _thread = None
                    return


def _gone(ref: weakref.ref[Session]) -> bool:
    session = ref()
    return session is None or session.closed  # an ended child takes no more releases


def _flush(ref: weakref.ref[Session]) -> None:
    session = ref()
    if session is not None:
        session.flush_releases_nowait(PERIOD)


def _forget_after_fork() -> None:
    # A forked process shares the sockets of the sessions it inherits: it must not send on them.
    global _lock, _thread
    _watched.clear()
    _thread = None
    _lock = threading.Lock()  # another thread may have held it at the fork
