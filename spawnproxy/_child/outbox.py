"""Where the child's frames go: the channel, or the lane of the request they belong to.

Shipped to the child as source (see `_bootstrap`): standard library only,
CPython 3.8 syntax.  Uses `protocol` and `channel`; knows nothing of what it
sends beyond the releases of parent objects, which go before every frame.

- `Outbox`: one child's sending end (its channel, its lanes, the releases
  of the parent's objects it has let go of).
- `start_releaser`: the thread that sends the releases no message carries.
- `after_fork`: what a process forked from a child must let go of (the
  lanes, the releaser); `lifetime` registers it when a child starts.
"""

import collections
import errno
import threading
import time
from _weakrefset import WeakSet  # what threading uses: weakref itself costs the start-up 0.4 ms

from . import protocol
from .channel import ChannelClosed, LaneClosed

# How often (s) the releases of parent objects that no message has carried are sent.
# What a send to the main channel fails with once the parent has gone.
_PARENT_GONE = (errno.EBADF, errno.EPIPE, errno.ECONNRESET)
RELEASE_PERIOD = 0.25
_LANE_MASK = protocol.LANE_MASK
# The outboxes of the children that serve in this process (one, or one per client of a
# served daemon): the releaser and `after_fork` go through them.
_outboxes = WeakSet()
_releaser = []  # the thread that sends the releases, once the first parent object has come


class Outbox:
    """The sending end of one child: every frame goes through `send`, releases first.

    A lane (see `protocol.LANE_BITS`) is the socket of one thread of the
    parent: the answer to a request of that thread, the requests nested in it
    and the releases before them go there.  `dumps(message)` encodes the
    releases; `read_ahead()` reads what the parent sends while a send waits
    for room (see `channel.Channel.send`).
    """

    def __init__(self, channel, dumps, read_ahead):
        self.channel = channel
        self.releases = collections.deque()  # ids of parent objects the child no longer references
        self.lock = threading.Lock()  # one frame at a time; lanes change under it too
        self._dumps = dumps
        self._read_ahead = read_ahead
        self._lanes = {}  # lane number -> channel to the parent thread it belongs to
        # Lane number -> (request id, the last answer sent on it that names parent objects).
        # Released as soon as it was sent, such an answer's objects would be released on the
        # channel, and that release could be read (and the objects dropped) before the caller
        # reads its answer on its lane: they are kept until the parent says it has read the
        # answer (`answers_read`), the caller's next request, or the lane's end.
        self.held = {}
        _outboxes.add(self)

    def send(self, tag, data, buffers=None, rid=None):
        """Send a frame (None: only the pending releases), releases first.

        `rid` is the parent's request the frame answers or is nested in: it goes
        on that request's lane, and raises LaneClosed if the lane is gone.
        """
        channel = main = self.channel
        lane = 0
        if rid is not None and rid > 0:
            lane = rid & _LANE_MASK
        lock = self.lock
        lock.acquire()  # (not `with`: every frame comes here)
        try:
            if lane:
                channel = self._lanes.get(lane)
                if channel is None:
                    raise LaneClosed("lane %d is closed" % lane)
            batch = None
            try:
                if self.releases:
                    batch = []
                    releases = self.releases
                    while releases:
                        batch.append(releases.popleft())
                    channel.send(*self._dumps((protocol.RELEASE, batch)), None, self._read_ahead)
                    batch = None
                if tag is not None:
                    channel.send(tag, data, None, self._read_ahead, buffers)
                return
            except ChannelClosed:
                if channel is main:
                    raise
            except OSError as err:
                if channel is main:
                    if err.errno in _PARENT_GONE:
                        raise ChannelClosed("the parent has gone") from None
                    raise
            # Only a lane gets here: its thread closed it.  The releases go with a later frame.
            if batch:
                self.releases.extendleft(reversed(batch))
            if self._lanes.get(lane) is channel:
                del self._lanes[lane]
            channel.close()
        finally:
            lock.release()
        raise LaneClosed("lane %d is closed" % lane)

    def try_send(self, tag, data, wait, deadline):
        """Send a frame on the channel if the lock comes within `wait` s and the frame goes
        before `deadline` (a time.monotonic() value); best effort, never raises."""
        if not self.lock.acquire(timeout=wait):
            return
        try:
            self.channel.send(tag, data, deadline=deadline)
        except Exception:
            pass  # that end is gone, or stuck
        finally:
            self.lock.release()

    def set_lane(self, lane, channel):
        """Open lane `lane` over `channel`, or close it (channel None); the old one is closed."""
        with self.lock:  # never closed under a sender, nor its number reused
            old = self._lanes.pop(lane, None)
            if old is not None:
                old.close()
            if channel is not None:
                self._lanes[lane] = channel
        self.held.pop(lane, None)  # the lane's thread has ended (or given it up)

    def answers_read(self, ids):
        """Let go of what was held for the answers the parent says it has read: the negative
        ids -r among the ids of its releases (see Router._decode in the parent's _router)."""
        held = self.held
        for rid in ids:
            if rid < 0:
                lane = -rid & protocol.LANE_MASK
                entry = held.get(lane)
                if entry is not None and entry[0] == -rid:
                    del held[lane]

    def drop_lanes(self):
        """In a process forked from the child: let go of the lanes, or the parent's threads
        would wait on them for as long as that process lives."""
        for channel in self._lanes.values():
            channel.close()
        self._lanes = {}


def start_releaser():
    """Start the releaser thread (see `_release_loop`) unless it runs already."""
    if _releaser:
        return
    thread = threading.Thread(target=_release_loop, name="spawnproxy-releases", daemon=True)
    _releaser.append(thread)
    thread.start()


def _release_loop():
    """A ParentRef dropped while no call runs (by a thread of the child's, or once the parent
    has read the answer that named it) is released within RELEASE_PERIOD, not at some later
    message: the parent may be idle for ever.  While messages flow, they carry the releases."""
    while True:
        time.sleep(RELEASE_PERIOD)
        for outbox in list(_outboxes):
            if outbox.releases:
                try:
                    outbox.send(None, None)
                except Exception:  # that connection has ended; this thread serves the others still
                    pass
        outbox = None


def after_fork():
    """In the child of a fork: no releaser runs there, and no lane of the parent's stays open."""
    del _releaser[:]
    for outbox in list(_outboxes):
        outbox.drop_lanes()
