"""Frames and message kinds shared by both sides of a spawnproxy connection.

This module is shipped to the child interpreter as source and must keep to the
standard library and to syntax that CPython 3.8 accepts.

Framing is the one `multiprocessing.connection.Connection` uses, so either end
could be a plain `Connection`: a 4-byte signed big-endian length, then that
many payload bytes; a length of -1 announces an 8-byte unsigned length.

The first payload byte says how the rest was encoded:

    b"P"  a pickle (protocol 5) that the standard library can load;
    b"R"  a pickle with persistent ids for objects the receiver holds;
    b"D"  a pickle made by dill: the receiver needs dill to load it;
    b"M"  a large frame passed out of band: an 8-byte size follows, and the
          frame itself (tag and payload) is in a memfd sent along with this
          one (SCM_RIGHTS); the receiver maps it instead of reading it through
          the socket in small chunks.

Every message is a tuple whose first item is its kind.  The protocol is
symmetric: either side may send a REQUEST while it waits for a REPLY, so the
receive loop of each side also serves requests (callbacks, streaming and the
child asking its parent for module sources all ride on this).

    (REQUEST, request_id, op, *operands)
    (REPLY, request_id, how, payload)     how: VALUE, REF, PATH, SAME, BASE, ERROR
    (RELEASE, [object ids])              one-way, never answered
"""

import os
import select
import socket
import struct

REQUEST = 0
REPLY = 1
RELEASE = 2

# How a reply carries its result.
VALUE = 0  # payload is the value itself
REF = 1  # payload is a reference: (object id, type key, type info or None)
PATH = 2  # payload is (callable,): the result is the target itself, to be reached by path
SAME = 3  # the result is the very object the request targeted
BASE = 4  # the result is the object the request's path starts from (a method returned self)
ERROR = 5  # payload is an encoded exception

TAG_PICKLE = b"P"
TAG_DILL = b"D"

TAG_MEMFD = b"M"

_HEADER = struct.Struct("!i")
_SIZE = struct.Struct("!Q")
# Frames at least this large travel in a memfd rather than through the socket.
BIG_FRAME = 1 << 20
_SMALL_FRAME = 64 * 1024
_LONG_HEADER = struct.Struct("!iQ")
# Small enough that the buffer is reused, never an mmap per read.
_READ_CHUNK = 64 * 1024
_ANCILLARY = socket.CMSG_SPACE(16 * 4)


class ChannelClosed(EOFError):
    """The other end of the channel has gone."""


class Channel:
    """Send and receive whole frames over one file descriptor (a socket).

    Receiving reads ahead in large chunks, so a small message costs a single
    system call; a large one is read straight into its own buffer.
    """

    def __init__(self, sock: socket.socket, watch_fds: "tuple[int, ...]" = ()) -> None:
        self.sock = sock
        self._setup(sock.fileno(), sock.fileno(), watch_fds)
        self._memfd = hasattr(os, "memfd_create") and sock.family == socket.AF_UNIX
        self._recvmsg_into = sock.recvmsg_into

    def _setup(self, fd: int, write_fd: int, watch_fds: "tuple[int, ...]") -> None:
        # The I/O primitives are attributes with the signatures of os.write,
        # os.writev, os.readv and socket.recvmsg_into: a transport that is not
        # a plain socket (TLS, a pair of pipes) swaps them, and the local
        # socket pair pays no extra branch or call for that.
        self.fd = fd
        self._wfd = write_fd
        self._write = os.write
        self._writev = os.writev
        self._readv = os.readv
        self._memfd = False
        self._fds = []  # file descriptors received with frames, in order
        self._buf = bytearray()
        self._chunk = bytearray(_READ_CHUNK)
        self._chunk_view = memoryview(self._chunk)
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        for extra in watch_fds:
            self._poller.register(extra, select.POLLIN)

    def fileno(self) -> int:
        return self.fd

    def send(self, tag: bytes, payload: "bytes | memoryview") -> None:
        size = len(payload) + 1
        if size < _SMALL_FRAME:
            # One buffer, one system call: cheaper than scatter-gather when small.
            data = _HEADER.pack(size) + tag + payload
            written = self._write(self._wfd, data)
            if written != len(data):
                self._send_rest([memoryview(data)[written:]])
            return
        if size >= BIG_FRAME and self._memfd:
            self._send_memfd(tag, payload)
            return
        if size < 0x7FFFFFFF:
            header = _HEADER.pack(size) + tag
        else:
            header = _LONG_HEADER.pack(-1, size) + tag
        self._send_rest([header, memoryview(payload).cast("B")])

    def _send_rest(self, parts):
        while parts:
            written = self._writev(self._wfd, parts)
            # The kernel may take only part of a large frame: resume after it.
            while parts and written >= len(parts[0]):
                written -= len(parts[0])
                del parts[0]
            if written:
                parts[0] = parts[0][written:]

    def _send_memfd(self, tag: bytes, payload: "bytes | memoryview") -> None:
        import array

        memfd = os.memfd_create("spawnproxy-frame", os.MFD_CLOEXEC)
        try:
            view = memoryview(payload).cast("B")
            os.write(memfd, tag)
            done = 0
            while done < len(view):
                done += os.write(memfd, view[done:])
            header = _HEADER.pack(1 + _SIZE.size) + TAG_MEMFD + _SIZE.pack(len(view) + 1)
            fds = array.array("i", [memfd])
            self.sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        finally:
            os.close(memfd)

    def _recv_memfd(self, size_field: "memoryview") -> "tuple[bytes, memoryview]":
        import mmap

        (size,) = _SIZE.unpack(size_field)
        if not self._fds:
            raise ChannelClosed("a large frame arrived without its memfd")
        memfd = self._fds.pop(0)
        try:
            mapped = mmap.mmap(memfd, size, prot=mmap.PROT_READ)
        finally:
            os.close(memfd)
        view = memoryview(mapped)
        return bytes(view[:1]), view[1:]

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
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        events = self._poller.poll(ms)
        if not events:
            return None
        if len(events) == 1:
            return [events[0][0]]
        return sorted((fd for fd, _ in events), key=lambda fd: fd != self.fd)

    def recv(self) -> "tuple[bytes, memoryview]":
        """Return (tag, payload) of the next frame; raise ChannelClosed at end of stream."""
        buf = self._buf
        if not buf:
            # The common case: one small frame arrives alone and is taken from
            # the read buffer without going through the reassembly buffer.
            n, ancillary, _, _ = self._recvmsg_into([self._chunk], _ANCILLARY)
            if ancillary:
                self._take_fds(ancillary)
            if not n:
                raise ChannelClosed("the other end closed the channel")
            chunk = self._chunk_view
            if n >= 5:
                (size,) = _HEADER.unpack_from(chunk)
                if size > 0 and n == 4 + size:
                    tag = bytes(chunk[4:5])
                    if tag != TAG_MEMFD:
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
            del buf[:]
            view = memoryview(frame)
            while have < size:
                n = self._readv(self.fd, [view[have:]])
                if n == 0:
                    raise ChannelClosed("the other end closed the channel mid-frame")
                have += n
            view.release()
        tag = bytes(frame[:1])
        if tag == TAG_MEMFD:
            return self._recv_memfd(memoryview(frame)[1:])
        return tag, memoryview(frame)[1:]

    def _fill(self) -> None:
        n, ancillary, _, _ = self._recvmsg_into([self._chunk], _ANCILLARY)
        if ancillary:
            self._take_fds(ancillary)
        if not n:
            raise ChannelClosed("the other end closed the channel")
        self._buf += self._chunk_view[:n]

    def _take_fds(self, ancillary):
        import array

        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                self._fds.extend(fds)

    def close(self) -> None:
        self.fd = -1
        self.sock.close()
        for fd in self._fds:
            os.close(fd)
        del self._fds[:]
