"""The physical limit: a spawned child that echoes each pickled message back on a Pipe.

Each operation sends the message a call would carry, ``(name, args)``, and receives it back:
one round trip of the same arguments, with no dispatch and no remote state. The answers the
handle returns (``add``'s sum, the value read) are made locally from the echoed message so the
cases can check them. Releasing a remote reference is free here (the ideal batches it away).
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.peers.base import EchoHandle

DIST = None
NOTES = [
    "multiprocessing.get_context('spawn').Process echoing `conn.send(conn.recv())` on a duplex Pipe",
    "threads share the Pipe under a lock (one message in flight)",
]


def _echo(conn: Connection) -> None:
    """The child: send back every message received, until the parent closes the Pipe."""
    try:
        while True:
            conn.send(conn.recv())
    except (EOFError, OSError):
        pass


class RawHandle(EchoHandle):
    """The parent's end of the echo Pipe."""

    start_method = "spawn"  # the child is a fresh interpreter, as spawnproxy's is

    def __init__(self) -> None:
        ctx = multiprocessing.get_context(self.start_method)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_echo, args=(child,), daemon=True)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self._value = 0

    def _round_trip(self, msg: Any) -> Any:
        with self._lock:
            self._conn.send(msg)
            return self._conn.recv()

    def close(self) -> None:
        self._conn.close()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def start() -> RawHandle:
    """Spawn the echo child."""
    return RawHandle()
