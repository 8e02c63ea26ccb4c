"""Lanes: a socket per calling thread, on which the child sends that thread's answers.

With one channel, the thread that reads an answer meant for another thread
must wake it, and the woken thread must then win the GIL back: two hand-offs
per call as soon as two threads call at once.  A thread that reads its own
lane is woken by the kernel, by the very answer it waits for.  Requests still
all go out on the channel (the child reads one stream, in order); only the
child's answers, and what it sends while answering (callbacks, releases), come
back on the lane of the request (see `_child.protocol`).

Values layer: uses `_child.protocol` and `_child.channel`.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import weakref
from typing import Any

from ._child import protocol
from ._child.channel import Channel

# How often (s) a thread blocked reading its lane looks whether the child is still there.
LANE_CHECK = 0.25


class Lane:
    """One thread's lane: its number (the low bits of its request ids) and its channel."""

    __slots__ = ("__weakref__", "channel", "close", "number")

    def __init__(self, number: int, channel: Channel) -> None:
        self.number = number
        self.channel = channel
        # Closes the lane; runs by itself when the thread that holds the lane ends.
        self.close: weakref.finalize[Any, Any] | None = None


class Lanes:
    """The lanes of one session: numbers, sockets, and the closes the child has yet to hear of."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._count = 0
        self._open: dict[int, Channel] = {}
        # Numbers of closed lanes, to be told to the child before any later frame: a
        # number is reused only after its close, so the child never mixes two lanes up.
        self.closing: collections.deque[int] = collections.deque()

    def make(self) -> tuple[Lane, socket.socket] | None:
        """A new lane and the socket to send the child (the caller closes it); None if none is left."""
        with self._lock:
            if self._free:
                number = self._free.pop()
            elif self._count < protocol.LANE_MASK:
                self._count += 1
                number = self._count
            else:
                return None
        made: list[socket.socket] = []
        try:
            made += socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            mine, theirs = made
            # A blocking read of the lane returns (BlockingIOError) after LANE_CHECK at most.
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, int(LANE_CHECK * 1e6)))
            channel = self._channel.lane(mine)
        except BaseException:  # out of descriptors, say: nothing is kept, the number is free again
            for sock in made:
                sock.close()
            with self._lock:
                self._free.append(number)
            raise
        lane = Lane(number, channel)
        self._open[number] = channel
        lane.close = weakref.finalize(lane, self._closed, number, channel)
        lane.close.atexit = False
        return lane, theirs

    def _closed(self, number: int, channel: Channel) -> None:
        # May run in any thread (a finalizer): takes no lock of the session's.
        channel.close()
        if self._open.get(number) is channel:
            del self._open[number]
        self.closing.append(number)
        with self._lock:
            self._free.append(number)

    def close_all(self) -> None:
        """The child has ended: close every lane's socket now (threads may keep their Lane)."""
        for channel in list(self._open.values()):
            try:
                # Wakes a thread blocked reading it, even if some process still holds the other end.
                channel.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            channel.close()
        self._open.clear()
