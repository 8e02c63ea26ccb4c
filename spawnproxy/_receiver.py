"""The parent's receive side of the conversation with one child: who reads, and who gets what.

Any number of threads may call at once.  Each request gets its own id, and
every message that comes back passes through one router, `Receiver.route`:
given a message and the id its reader waits for, it returns the message to
that reader (its reply, or a request of the child's nested in it) or sends
it where it belongs:

- a REPLY to the thread that waits for it (`collect`), to its asyncio
  callback, or nowhere (a call that timed out: `drop` gives back what the
  child counted for it);
- a NESTED request (a callback made by the child while it runs one of our
  requests) to the thread that waits for that request, which runs it, never
  while it holds the receive lock: a callback may call the child again, to
  any depth; a plain REQUEST (a callback from a thread the child started),
  and a nested one whose caller no longer waits (timed out, abandoned,
  awaited by asyncio), to the worker thread (`_callbacks`);
- RELEASE gives back the parent's objects the child held (`by_ref`);
  STOPPING says a served daemon stops on purpose.

Three readers, layered over that router:

- the lane wait: a local child answers a blocking call on the calling
  thread's own lane (see `_lanes`), which that thread alone reads: no
  hand-off, and the kernel wakes the right thread;
- leader/follower, on the channel (lane 0): the thread that finds the receive
  lock free reads for everyone, answers for other threads are handed over
  through a condition; the leader watches the child's exit handle, so a child
  that dies becomes an error at once instead of a hang;
- the reader thread: when nobody else reads but someone must (the child holds
  the parent's objects and may call them at any time, asyncio waiters expect
  answers, a lane given up still has to be read), it leads; it lingers a
  little after it is last needed, then ends.

Layers: `_router.Router` routes and holds the waits of calling threads;
`Receiver` (here) adds the reader thread and the lanes given up, which it
drains; `Session` (the calling side) is a Receiver: the lane wait is on every
call's path, where a second object would cost a lookup per call.  This module
may use `_router` and what it uses.
"""

from __future__ import annotations

import logging
import select
import threading
import time

from ._child.protocol import KIND, REPLY
from ._errors import SpawnProxyError
from ._lanes import Lane
from ._peer import Peer
from ._router import Router

log = logging.getLogger("spawnproxy")

# How long (s) the reader stays after its last use, and how often it looks up.
LINGER = 1.0
POLL = 0.2


class Receiver(Router):
    """The router, with a reader thread for when the child may speak while no caller reads."""

    def __init__(self, process: Peer) -> None:
        super().__init__(process)
        self._reader: threading.Thread | None = None
        self._dill_calls = 0  # lane calls whose request the child may ask about as it loads it
        self._retired: dict[int, tuple[Lane, int]] = {}  # fd -> lane of a call given up, and the call
        self._drain_lock = threading.Lock()

    # -- lanes given up: read by the reader until their call's answer comes ----------------

    def _retire_lane(self, lane: Lane, rid: int) -> None:
        """Give up the lane of a call that was given up (a timeout, a second Ctrl-C).

        The call goes on in the child, and may still call back: the reader reads
        the lane until the call's answer comes (and drops it), then closes it.
        This thread gets a new lane for its next call.
        """
        if self.local.reading is lane:
            # A call made by a callback whose own call waits on this lane: this thread reads
            # it again as soon as the callback returns, and until then, in the calls it makes.
            # It keeps the lane: retired, it would close under the call that waits on it.
            return
        if self.local.lane is lane:
            self.local.lane = None
        if self.failure is not None:
            assert lane.close is not None
            lane.close()
            return
        with self._lock:
            self._retired[lane.channel.fd] = (lane, rid)
        self._ensure_reader()

    def _drain_retired(self, fd: int) -> None:
        """Read what has come on a retired lane: answers are dropped, callbacks served.

        The reader does it as the lane becomes readable; a caller whose own
        answer came does it too (`_lane_exchange`), since what the child sent
        before that answer is there already: the late answers of this thread's
        calls are then dropped, and their references released, before its next
        call, as they were when every answer came on the channel.
        """
        with self._drain_lock:  # the reader and a caller may both try
            found = self._retired.get(fd)
            if found is None:
                return  # done already, or the child ended
            lane, rid = found
            channel = lane.channel
            done = False
            try:
                channel.read_ahead()
                while channel.has_frame():
                    message = self._receive("a call given up", channel)
                    if self.route(message, rid) is not None:
                        if message[KIND] == REPLY:
                            self.drop(message)
                            done = True
                        else:
                            self.callbacks.to_worker(message)  # the child waits for its answer
                    del message
            except EOFError:
                done = True  # the child is gone: reading lane 0 says so
            if done:
                with self._lock:
                    self._retired.pop(fd, None)
                assert lane.close is not None
                lane.close()

    # -- the reader: for when the child may speak while no caller reads -------------------

    def _needs_reader(self) -> bool:
        return bool(self._async or self.exports.objects or self._dill_calls or self._retired)

    def _ensure_reader(self) -> None:
        with self._lock:
            if self.failure is not None:
                return
            if self._reader is None:
                self._reader = threading.Thread(
                    target=self._read_loop, name=f"spawnproxy-reader-{self.pid}", daemon=True
                )
                self._reader.start()
            elif self._followers:
                self._cond.notify_all()  # a lingering reader: needed again

    def _read_loop(self) -> None:
        idle_since: float | None = None
        while True:
            with self._lock:
                while True:
                    if self.failure is not None:
                        self._reader = None
                        return
                    if self._needs_reader():
                        idle_since = None
                        if self._recv_lock.acquire(False):
                            break
                        wait: float | None = None
                    else:
                        now = time.monotonic()
                        if idle_since is None:
                            idle_since = now
                        wait = LINGER - (now - idle_since)
                        if wait <= 0:
                            # Decided under the lock that ensure_reader takes: no request is left unread.
                            self._reader = None
                            return
                        # A call that leaves the child an object of ours wakes no lingering reader
                        # (it only starts a missing one): look again soon, for what the child sends.
                        wait = min(wait, POLL)
                    self._followers += 1
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._followers -= 1
            try:
                self._pump()
            except SpawnProxyError:
                pass  # the child ended: every waiter has been told
            except BaseException:  # a SystemExit too, which would end this thread silently
                # Never a reader that is gone but still registered: asyncio waiters would hang.
                log.exception("spawnproxy: the reader of child %d failed", self.pid)
                self._fail("reading the child's messages")
            finally:
                self._release_recv_lock()

    def _pump(self) -> None:
        """Read and route messages while someone needs it, letting callers lead otherwise."""
        channel = self.channel
        while self._needs_reader():
            if self.releases:
                self.push_releases("sending releases")
            if self.failure is not None:
                return
            if self._retired and not channel.has_frame():
                ready = self._wait_retired()
                if ready is None:
                    continue
            else:
                ready = channel.wait(POLL)
            if ready is None:
                continue
            if ready[0] != channel.fd:
                raise self._fail("reading the child's messages")
            self.route(self._receive("reading the child's messages"))

    def _wait_retired(self) -> list[int] | None:
        """Wait for the channel or a retired lane; drain the lanes that are ready.

        Returns what `Channel.wait` would for the channel, or None when it has nothing.
        """
        channel = self.channel
        own = (channel.fd, *channel.watch_fds)
        poller = select.poll()
        for fd in (*own, *self._retired):
            poller.register(fd, select.POLLIN)
        ready = []
        for fd, _ in poller.poll(POLL * 1000):
            if fd in own:
                ready.append(fd)
            elif fd in self._retired:
                self._drain_retired(fd)
            # else: a caller drained and closed that lane meanwhile (see Session._lane_exchange)
        if not ready:
            return None
        return sorted(ready, key=lambda fd: fd != channel.fd)
