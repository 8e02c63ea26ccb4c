"""Frames that carry a file descriptor (SCM_RIGHTS): a large frame's memfd, a lane's socket.

Shipped to the child as source (standard library only, CPython 3.8 syntax).
Uses `buffers` (SIZE) and `protocol`.  `FdPassing` is mixed into
`channel.Channel` and works on its state: `sock`, `_fds` (descriptors
received, in order), `_spare` (a memfd kept for the next large frame),
`fd`, and its send machinery (`_pending`, `_flush`, `_wait_room`).  A frame
of at least `protocol.BIG_FRAME` travels in a memfd, mapped by the receiver
(pages and all reused for the next large frame, in either direction).
"""

import os
import socket
import struct

from .buffers import SIZE
from .protocol import TAG_MEMFD

_HEADER = struct.Struct("!i")
_MADV_POPULATE_READ = 22  # Linux 5.14; older kernels refuse it, and the pages fault in one by one
_SPARE_MAX = 256 << 20
# As every send of a channel: never block, never SIGPIPE.
SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)


class FdPassing:
    """The part of a `channel.Channel` that sends and receives file descriptors."""

    def _send_memfd(self, tag, parts, deadline, on_blocked):
        parts = [tag] + parts
        try:
            memfd = self._spare.pop()[0]
        except IndexError:
            memfd = os.memfd_create("spawnproxy-frame", os.MFD_CLOEXEC)
        try:
            # No ftruncate: writing extends the file as needed, and the receiver maps only the
            # frame's size, not a longer tail left by an earlier frame (the size a receiver
            # notes of a spare is its last frame's, so a resize here cost a call per frame).
            done = 0
            while parts:
                written = os.pwritev(memfd, parts[:512], done)
                done += written
                advance(parts, written)
            self._send_with_fd(TAG_MEMFD + SIZE.pack(done), memfd, deadline, on_blocked)
        finally:
            os.close(memfd)

    def send_fd(self, tag: bytes, payload: bytes, fd: int, deadline: "float | None" = None, on_blocked=None) -> None:
        """Send a small frame with a file descriptor attached (SCM_RIGHTS); see `send`."""
        if self._pending:
            self._flush(deadline, on_blocked, False)
        self._send_with_fd(tag + payload, fd, deadline, on_blocked)

    def _send_with_fd(self, body, fd, deadline, on_blocked):
        import array

        frame = _HEADER.pack(len(body)) + body
        fds = array.array("i", [fd])
        while True:
            try:
                written = self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], SEND_FLAGS)
                break
            except BlockingIOError:
                self._wait_room(deadline, on_blocked)
        if written != len(frame):
            # The descriptor went with the first byte; the rest of the frame follows.
            self._pending = [memoryview(frame)[written:]]
            self._flush(deadline, on_blocked, False)

    def _map_memfd(self, memfd: int, size: int) -> "tuple[bytes, memoryview]":
        """(tag, payload) of the frame in a received memfd, mapped; the memfd is kept for
        the next large frame once the mapping is gone (see `_unmapped`)."""
        import mmap

        try:
            # Private and writable: an array built on the mapping (see TAG_BUFFERS) is as
            # writable as the one that was sent, and writing to it copies only that page.
            mapped = mmap.mmap(memfd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(memfd)
            raise
        try:
            mapped.madvise(_MADV_POPULATE_READ)  # one call maps every page, not a fault each
        except (AttributeError, OSError, ValueError):
            pass
        if size <= _SPARE_MAX:
            import weakref

            weakref.finalize(mapped, self._unmapped, memfd, size).atexit = False
        else:
            os.close(memfd)
        view = memoryview(mapped)
        return bytes(view[:1]), view[1:]

    def _unmapped(self, memfd, size):
        """The mapping of a received memfd is gone: keep the memfd for the next large frame."""
        if self.fd != -1 and not self._spare:
            self._spare.append((memfd, size))
        else:
            os.close(memfd)

    def _take_fds(self, ancillary):
        import array

        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                self._fds.extend(fds)


def advance(parts, written):
    """Drop from `parts` the `written` bytes the kernel took (it may take part of one)."""
    while parts and written >= len(parts[0]):
        written -= len(parts[0])
        del parts[0]
    if written:
        parts[0] = parts[0][written:]
