"""Whole frames over one file descriptor: the framing `protocol` describes.

Shipped to the child as source (standard library only, CPython 3.8 syntax).
Uses `protocol`, `buffers` and `fdpassing`.  A `Channel` sends and receives
frames over a socket; a frame of at least `protocol.BIG_FRAME` travels in a
memfd, mapped by the receiver (see `fdpassing`).  Transports that are not a
plain socket (TLS, a pair of pipes: see `transports`) swap its I/O primitives.
"""

import os
import select
import socket
import struct
import time

from .buffers import SIZE, buffer_parts
from .fdpassing import SEND_FLAGS, FdPassing, advance
from .protocol import BIG_FRAME, TAG_BUFFERS, TAG_MEMFD

_HEADER = struct.Struct("!i")
_HEADER_TAG = struct.Struct("!ic")  # a frame's length and tag: one pack, one concatenation less
_SMALL_FRAME = 64 * 1024
_LONG_HEADER = struct.Struct("!iQ")
# Small enough that the buffer is reused, never an mmap per read.
_READ_CHUNK = 64 * 1024
_ANCILLARY = socket.CMSG_SPACE(16 * 4)
_DONTWAIT = socket.MSG_DONTWAIT
# Every send: never block, and never SIGPIPE (a reader that has gone is an EPIPE, not the
# end of a process that restored SIGPIPE's default action).  No extra cost: the same call.
_SEND = SEND_FLAGS
# How long a wait for input watches for it on the CPU before it sleeps (see Channel._spin),
# how many waits go by between two looks at how many CPUs this thread may use, and one wait
# in how many watches while spinning seems not to pay.
_SPIN = 50e-6
_CPU_RECHECK = 64
_PROBE = 16
# Between two looks, a spin lets whatever else could run on this CPU go first: a third
# thread (another caller, a worker) must not wait for a spin to end.
_yield = getattr(os, "sched_yield", lambda: None)


class ChannelClosed(EOFError):
    """The other end of the channel has gone."""


class LaneClosed(Exception):
    """The thread a lane belonged to has given up on it: what was sent there is lost."""


class SendTimeout(Exception):
    """A frame could not be written before its deadline; nothing of it was written."""


class Channel(FdPassing):
    """Send and receive whole frames over one file descriptor (a socket).

    Receiving reads ahead in large chunks, so a small message costs a single
    system call; a large one is read straight into its own buffer.
    """

    def __init__(
        self, sock: "socket.socket | None", watch_fds: "tuple[int, ...]" = (), pipes: "tuple[int, int] | None" = None
    ) -> None:
        """A channel over `sock`; with `sock` None, over `pipes` (the fd to read, the fd to write).

        The I/O primitives are attributes with the signatures of socket.send,
        socket.sendmsg, os.readv and socket.recvmsg_into: a transport that is
        not a plain socket (TLS, a pair of pipes: see `transports`) sets its
        own in its constructor, and the local socket pair pays no extra branch
        or call for that.  Sends are non-blocking where the transport allows
        (BlockingIOError or a short count when full).
        """
        # (None only in a channel over pipes: the socket-level methods are never called there.)
        self.sock: "socket.socket" = sock
        fd, write_fd = pipes if sock is None else (sock.fileno(), sock.fileno())
        self.fd = fd
        self.watch_fds = watch_fds
        # Where input comes from that a blocked send must read ahead: this channel's own
        # fd, but for a lane (which the child only writes to), the channel's.
        self.input_fd = fd
        self._wfd = write_fd
        self._readv = os.readv
        self._memfd = False
        self._fds = []  # file descriptors received with frames, in order
        self._buf = bytearray()
        self._chunk = bytearray(_READ_CHUNK)
        self._chunk_view = memoryview(self._chunk)
        self._chunks = [self._chunk]  # what every read reads into: no list to make per read
        self._pending = []  # the unwritten rest of an interrupted frame
        # A memfd received with a large frame, whose pages are already allocated: once its
        # mapping is gone it carries the next large frame sent, in either direction, so
        # that a steady exchange of large data allocates no new shared memory.
        self._spare = []
        self._owns_spare = True
        self._out_poller = None
        self._spins = False
        self._hot = False  # the last wait ended soon enough that the next one spins
        self._cold = 0  # waits that slept without a spin since the last probe (see _spin)
        self._cpus = 1
        self._cpu_countdown = 0
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        for extra in watch_fds:
            self._poller.register(extra, select.POLLIN)
        if sock is not None:
            local = sock.family == socket.AF_UNIX
            self._memfd = local and hasattr(os, "memfd_create")
            # Across a network, an answer takes longer than a spin: only a local socket spins.
            self._spins = local
            self._recvmsg_into = sock.recvmsg_into
            self._send = sock.send
            self._sendmsg = sock.sendmsg

    def fileno(self) -> int:
        return self.fd

    @property
    def pending(self) -> bool:
        """Whether part of a frame is still to be written (its send was interrupted)."""
        return bool(self._pending)

    def send(
        self,
        tag: bytes,
        payload: "bytes | memoryview",
        deadline: "float | None" = None,
        on_blocked=None,
        buffers=None,
    ) -> None:
        """Send one frame, whole, before `deadline` (a time.monotonic() value; None waits for ever).

        Writes never block in the kernel: when the other end is not reading,
        this waits in poll, so the deadline holds and a Ctrl-C gets through.
        While it waits, `on_blocked` is called whenever data comes in; it
        should read some of it (the other end may itself be blocked writing
        to us) and return whether it could.  On SendTimeout nothing of this
        frame was written; if it is interrupted (timeout or exception) once
        part of it is written, the rest is kept and goes first with the next
        frame, so that the stream stays whole.
        """
        if self._pending:
            self._flush(deadline, on_blocked, False)
        if buffers:
            parts = buffer_parts(tag, payload, buffers)
            if self._memfd:
                self._send_memfd(TAG_BUFFERS, parts, deadline, on_blocked)
                return
            # No memfd over this transport: the same layout travels in the stream.
            size = 1 + sum(len(part) for part in parts)
            self._pending = [_LONG_HEADER.pack(-1, size) + TAG_BUFFERS] + parts
            self._flush(deadline, on_blocked, True)
            return
        size = len(payload) + 1
        if size < _SMALL_FRAME:
            # One buffer, one system call: cheaper than scatter-gather when small.
            data = _HEADER_TAG.pack(size, tag) + payload
            try:
                written = self._send(data, _SEND)
            except BlockingIOError:
                written = 0
            if written != len(data):
                self._pending = [memoryview(data)[written:]]
                self._flush(deadline, on_blocked, not written)
            return
        if size >= BIG_FRAME and self._memfd:
            self._send_memfd(tag, [memoryview(payload).cast("B")], deadline, on_blocked)
            return
        if size < 0x7FFFFFFF:
            header = _HEADER.pack(size) + tag
        else:
            header = _LONG_HEADER.pack(-1, size) + tag
        self._pending = [header, memoryview(payload).cast("B")]
        self._flush(deadline, on_blocked, True)

    def _flush(self, deadline, on_blocked, fresh):
        """Write the pending parts; `fresh` says none of them has been written yet."""
        parts = self._pending
        try:
            while parts:
                try:
                    written = self._sendmsg(parts, (), _SEND)
                except BlockingIOError:
                    written = 0
                if written:
                    fresh = False
                    advance(parts, written)
                else:
                    self._wait_room(deadline, on_blocked)
        except BaseException:
            if fresh:
                del parts[:]  # nothing of it went out: the frame is simply not sent
            raise

    def _wait_room(self, deadline, on_blocked):
        if deadline is None:
            ms = -1
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SendTimeout("the other end did not take the frame in time")
            ms = int(remaining * 1000 + 0.999)
        if self._out_poller is None:
            self._out_poller = select.poll()
        poller = self._out_poller
        # Only sockets get here (other transports' sends block).
        fd, input_fd = self.fd, self.input_fd
        reads = on_blocked is not None
        if input_fd == fd:
            poller.register(fd, select.POLLOUT | (select.POLLIN if reads else 0))
        else:
            poller.register(fd, select.POLLOUT)
            if reads:
                poller.register(input_fd, select.POLLIN)
            else:
                try:
                    poller.unregister(input_fd)
                except KeyError:
                    pass
        for ready, events in poller.poll(ms):
            if ready == fd and events & select.POLLOUT:
                return
            if ready == input_fd and events & select.POLLIN and reads and not on_blocked():
                # Another thread reads: give it time rather than wake again at once on
                # the input it has yet to take.
                waiter = select.poll()
                waiter.register(fd, select.POLLOUT)
                waiter.poll(10)
            # POLLHUP or POLLERR: the next write says what went wrong.

    def _recv_memfd(self, size_field: "memoryview") -> "tuple[bytes, memoryview]":
        (size,) = SIZE.unpack(size_field)
        if not self._fds:
            raise ChannelClosed("a large frame arrived without its memfd")
        return self._map_memfd(self._fds.pop(0), size)

    def take_fd(self) -> int:
        """The descriptor sent with the frame just received (a lane's socket)."""
        if not self._fds:
            raise ChannelClosed("a lane opened without its socket")
        return self._fds.pop(0)

    def has_frame(self) -> bool:
        """True when a whole frame is already buffered."""
        buf = self._buf
        if len(buf) < 4:
            return False
        (size,) = _HEADER.unpack_from(buf)
        if size == -1:
            if len(buf) < 12:
                return False
            size = _LONG_HEADER.unpack_from(buf)[1] + 8
        return len(buf) >= 4 + size

    def wait(self, timeout: "float | None" = None) -> "list[int] | None":
        """Wait until a frame may be read or a watched fd is ready.

        `timeout` is in seconds (None waits for ever).  Returns None on
        timeout, else the list of ready fds (the channel's own fd first when
        data is there to read).
        """
        if self.has_frame():
            return [self.fd]
        started = None
        if self._spins and (timeout is None or timeout > _SPIN):
            self._cpu_countdown -= 1  # as in recv
            if self._cpus > 1 or self._cpu_countdown < 0:
                started = self._spin()
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        events = self._poller.poll(ms)
        if not events:
            return None
        if started is not None:
            self._woken(started)
        if len(events) == 1:
            return [events[0][0]]
        return sorted((fd for fd, _ in events), key=lambda fd: fd != self.fd)

    def recv(self) -> "tuple[bytes, memoryview]":
        """Return (tag, payload) of the next frame; raise ChannelClosed at end of stream."""
        buf = self._buf
        if not buf:
            # The common case: one small frame arrives alone and is taken from
            # the read buffer without going through the reassembly buffer.
            started = None
            if self._spins:
                # The waits are counted here, not in _spin, so that on one CPU the
                # waits between two looks at the CPUs (see _spin) cost no call.
                self._cpu_countdown -= 1
                if self._cpus > 1 or self._cpu_countdown < 0:
                    started = self._spin()
            n, ancillary, _, _ = self._recvmsg_into(self._chunks, _ANCILLARY)
            if started is not None:
                self._woken(started)
            if ancillary:
                self._take_fds(ancillary)
            if not n:
                raise ChannelClosed("the other end closed the channel")
            chunk = self._chunk_view
            # Read whatever n is: n == 4 + size > 4 holds only once the whole header is fresh.
            size, tag = _HEADER_TAG.unpack_from(chunk)
            if n == 4 + size and size > 0 and tag != TAG_MEMFD:
                return tag, memoryview(bytes(chunk[5:n]))
            buf += chunk[:n]
        while len(buf) < 4:
            self._fill()
        (size,) = _HEADER.unpack_from(buf)
        start = 4
        if size == -1:
            while len(buf) < 12:
                self._fill()
            size = _LONG_HEADER.unpack_from(buf)[1]
            start = 12
        end = start + size
        if len(buf) >= end:
            frame = bytes(buf[start:end])
            del buf[:end]
        else:
            frame = bytearray(size)
            have = len(buf) - start
            frame[:have] = buf[start:]
            head = bytes(buf[:start])
            del buf[:]
            view = memoryview(frame)
            try:
                while have < size:
                    n = self._readv(self.fd, [view[have:]])
                    if n == 0:
                        raise ChannelClosed("the other end closed the channel mid-frame")
                    have += n
            except BaseException:
                # Interrupted (a Ctrl-C, a read that timed out): keep what was read, so
                # that the next recv goes on with this frame.
                view.release()
                buf += head
                buf += frame[:have]
                raise
            view.release()
        tag = bytes(frame[:1])
        if tag == TAG_MEMFD:
            return self._recv_memfd(memoryview(frame)[1:])
        return tag, memoryview(frame)[1:]

    def _spin(self) -> "float | None":
        """Before a wait for input that would sleep: watch for the input on the CPU a moment.

        Falling asleep and being woken again costs more than a whole round
        trip (a wake-up on another CPU that idles, dearer still on a virtual
        machine), and in a run of calls the other end answers within
        microseconds.  So a wait first polls for up to _SPIN seconds, as long
        as the waits before it ended that soon (and one wait in _PROBE when
        they did not), and never on one CPU (the other end could not run
        meanwhile).  Returns the time a wait that will
        sleep starts, for `_woken` to judge; None when input came during the
        spin or spinning does not pay.
        """
        if self._cpu_countdown < 0:  # its callers count the waits down
            # Looked at again now and then: a process may be pinned to one CPU while it runs.
            self._cpu_countdown = _CPU_RECHECK
            self._cpus = _usable_cpus()
        if self._cpus < 2:
            return None
        now = time.monotonic()
        if not self._hot:
            # Cold, one wait in _PROBE watches anyway: when both ends sleep, each is woken
            # from sleep, every wait outlasts _SPIN and none would ever judge a spin worth it.
            self._cold += 1
            if self._cold < _PROBE:
                return now
            self._cold = 0
        poll, end = self._poller.poll, now + _SPIN
        while not poll(0):
            _yield()
            if time.monotonic() > end:
                self._hot = False  # the other end is busy or idle: sleep from now on
                return None
        self._hot = True
        return None

    def _woken(self, started: float) -> None:
        """A wait that slept is over: had it spun, would the input have come in time?"""
        if time.monotonic() - started < _SPIN:
            self._hot = True

    def _fill(self) -> None:
        self._take(*self._recvmsg_into(self._chunks, _ANCILLARY)[:2])

    def _take(self, n, ancillary):
        """Buffer `n` bytes just read into the chunk, and the descriptors that came with them."""
        if ancillary:
            self._take_fds(ancillary)
        if not n:
            raise ChannelClosed("the other end closed the channel")
        self._buf += self._chunk_view[:n]

    def read_ahead(self) -> None:
        """Take what has arrived into the buffer, without blocking (for a sender that waits)."""
        try:
            received = self.sock.recvmsg_into([self._chunk], _ANCILLARY, _DONTWAIT)
        except BlockingIOError:
            return
        self._take(*received[:2])

    def lane(self, sock: socket.socket) -> "Channel":
        """A lane of this channel over `sock` (see LANE_BITS): it watches the same exit
        handles, a send blocked on it reads ahead on this channel, and it shares this
        channel's spare memfd, so that a large answer's memory carries the next large
        request."""
        lane = Channel(sock, self.watch_fds)
        lane.input_fd = self.fd
        lane._spare = self._spare
        lane._owns_spare = False
        return lane

    def close(self) -> None:
        del self._pending[:]
        self.fd = -1
        while self._owns_spare and self._spare:
            os.close(self._spare.pop()[0])
        self.sock.close()
        for fd in self._fds:
            os.close(fd)
        del self._fds[:]


def _usable_cpus() -> int:
    """How many CPUs this thread may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
