"""The transport's floor: a fresh interpreter that sends each frame straight back on a socket pair.

The child is started as spawnproxy's is (``python -c`` with one end of a `socket.socketpair`
passed to it) and does the least a framed echo can: it reads a frame (the 4-byte length prefix
of `multiprocessing.connection`, then the bytes) into a buffer it reuses and writes it back
unchanged with one ``sendall``, without unpickling it (the buffer grows to the largest frame
and stays). The parent pickles each message as the
raw Pipe echo does (``(name, args)``), writes it with one ``sendall`` (two for a large frame:
the header, then the pickle, so that it is not copied once more), and reads the answer with
``recv_into``. What remains is two processes taking turns on one socket pair: what no library
over that transport can beat.
"""

from __future__ import annotations

import pickle
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

from benchmarks.peers.base import EchoHandle

DIST = None
NOTES = [
    "a fresh interpreter (`python -c`, as spawnproxy's child) echoing each length-prefixed frame on a "
    "socket pair, unchanged and unpickled, from a buffer it reuses",
    "the parent pickles `(name, args)` with protocol 5, one `sendall` per frame (header and pickle "
    "apart from 64 KiB up), and reads with `recv_into`",
    "threads share the socket under a lock (one message in flight)",
]

_HEADER = struct.Struct("!i")
_SMALL = 64 * 1024

# The child: standard library only, no framing beyond the length prefix, no pickle.
_ECHO = """
import socket, struct, sys
sock = socket.socket(fileno=int(sys.argv[1]))
header = struct.Struct("!i")
buf = bytearray(1 << 16)
view = memoryview(buf)
have = 0
while True:
    if have < 4:
        n = sock.recv_into(view[have:])
        if not n:
            break
        have += n
        continue
    (size,) = header.unpack_from(buf)
    end = 4 + size
    if end > len(buf):
        view.release()
        buf.extend(bytes(end - len(buf)))
        view = memoryview(buf)
    while have < end:
        n = sock.recv_into(view[have:end])
        if not n:
            sys.exit(0)
        have += n
    sock.sendall(view[:end])
    have = 0
"""


class SocketpairHandle(EchoHandle):
    """The parent's end of the socket pair."""

    def __init__(self) -> None:
        self._sock, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _ECHO, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
            )
        finally:
            theirs.close()
        self._buf = bytearray(_SMALL)
        self._lock = threading.Lock()
        self._value = 0

    def _round_trip(self, msg: Any) -> Any:
        data = pickle.dumps(msg, 5)
        with self._lock:
            sock = self._sock
            if len(data) < _SMALL:
                sock.sendall(_HEADER.pack(len(data)) + data)
            else:
                sock.sendall(_HEADER.pack(len(data)))
                sock.sendall(data)
            buf = self._buf
            view = memoryview(buf)
            have = 0
            while have < 4:
                n = sock.recv_into(view[have:])
                if not n:
                    raise EOFError("the echo child has gone")
                have += n
            (size,) = _HEADER.unpack_from(buf)
            if 4 + size <= len(buf):
                while have < 4 + size:
                    n = sock.recv_into(view[have : 4 + size])
                    if not n:
                        raise EOFError("the echo child has gone")
                    have += n
                return pickle.loads(view[4 : 4 + size])
            frame = memoryview(bytearray(size))
            frame[: have - 4] = view[4:have]
            got = have - 4
            while got < size:
                n = sock.recv_into(frame[got:])
                if not n:
                    raise EOFError("the echo child has gone")
                got += n
            return pickle.loads(frame)

    def close(self) -> None:
        self._sock.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


def start() -> SocketpairHandle:
    """Start the echo child."""
    return SocketpairHandle()
